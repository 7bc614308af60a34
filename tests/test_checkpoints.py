"""A finished run's checkpoints are released (issue 19 item 6): the full training state
(params + Adam moments) goes once result.json is written; the best params stay only when
asked; a run in progress keeps its full saves to resume from."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import linen as nn
from helpers import use_train

from mixjax.io import write_json_atomic
from mixjax.model.llama import ModelConfig
from mixjax.run import main
from mixjax.train.checkpoint import RunCheckpoints, checkpoint_bytes, release_finished
from mixjax.train.loop import TrainConfig, Trainer

TINY_CONFIG = Path(__file__).parent / "fixtures" / "tiny_config.py"
MODEL = ModelConfig(vocab_size=263, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, dtype="float32", rope_theta=10_000.0, tie_embeddings=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run's checkpoints as the trainer leaves them (orbax, real state of a small model):
    a params-only best at step 2, full steps 3 and 4, step 4 the best. Returns the run
    directory, trainer, best step and the params' bytes."""
    trainer = Trainer(MODEL, TrainConfig(seq_len=64, batch_size=8))
    state = trainer.init(jax.random.key(0))
    noise = lambda a: a + jax.random.normal(jax.random.key(1), a.shape, a.dtype) if jax.numpy.issubdtype(a.dtype, jax.numpy.floating) else a
    state = state.replace(opt_state=jax.tree.map(noise, state.opt_state))  # Adam moments as after training (zeros compress away)
    workdir = tmp_path_factory.mktemp("ckpt") / "run"
    checkpoints = RunCheckpoints(workdir / "checkpoints", async_save=False)
    for step, total, full in ((2, 2.0, False), (3, None, True), (4, 1.5, True)):
        meta = {"best": {"step": step if total == 1.5 else 2, "total": total}}
        checkpoints.save(step, state.replace(step=jax.numpy.asarray(step)), meta, total=total, full=full)
    checkpoints.close()
    param_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(nn.unbox(trainer.abstract_state.params)))
    return workdir, trainer, 4, param_bytes


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_release_keeps_only_the_best_params(finished_run, tmp_path):
    workdir, trainer, best_step, param_bytes = finished_run
    directory = _copy(workdir / "checkpoints", tmp_path / "checkpoints")
    before = checkpoint_bytes(directory)
    assert before > 2.5 * param_bytes  # params + Adam mu and nu (one full step; orbax compresses a little)
    best_before, _ = RunCheckpoints(directory).restore_best(trainer.abstract_state.params)
    freed = release_finished(directory, best_step=best_step, keep_best_params=True)
    after = checkpoint_bytes(directory)
    assert freed == before - after
    assert after < 1.1 * param_bytes + 64_000  # one float32 params copy (+ metadata), no optimizer state
    assert [p.name for p in directory.iterdir()] == [str(best_step)]
    assert not (directory / str(best_step) / "train").exists()
    checkpoints = RunCheckpoints(directory)
    assert checkpoints.best_step() == best_step
    best_after, meta = checkpoints.restore_best(trainer.abstract_state.params)
    assert meta["best"]["step"] == best_step
    for a, b in zip(jax.tree.leaves(nn.unbox(best_after)), jax.tree.leaves(nn.unbox(best_before))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert checkpoints.restore_latest(trainer.abstract_state) is None  # nothing to resume: the run is finished


def test_release_without_keep_deletes_everything(finished_run, tmp_path):
    workdir, _, best_step, _ = finished_run
    directory = _copy(workdir / "checkpoints", tmp_path / "checkpoints")
    before = checkpoint_bytes(directory)
    assert release_finished(directory, best_step=best_step, keep_best_params=False) == before
    assert not directory.exists() and checkpoint_bytes(directory) == 0


class CheckpointingFakeTrain:
    """Writes a run's result.json, and before it checkpoint files as the trainer lays them
    out (a full step with params and optimizer state); the runs named in ``fail`` stop
    after checkpointing, without a result (a run in progress)."""

    def __init__(self, fail=()):
        self.fail = set(fail)

    def __call__(self, trainer, cfg, examples, val_sets, workdir, **_):
        workdir, steps = Path(workdir), cfg.max_steps
        for item, size in (("params", 1000), ("train", 2000), ("meta", 10)):
            (workdir / "checkpoints" / str(steps) / item).mkdir(parents=True, exist_ok=True)
            (workdir / "checkpoints" / str(steps) / item / "data").write_bytes(b"x" * size)
        if workdir.name in self.fail:
            raise RuntimeError("non-finite train loss")
        x = json.loads((workdir / "spec.json").read_text())["selected_tokens"]
        losses = {n: 1.0 + 30.0 * (x[n] + 1.0) ** -0.3 for n in x}
        history = [{"step": steps, "total": sum(losses.values()), "losses": losses}]
        write_json_atomic(workdir / "result.json", {"best_step": steps, "best_losses": losses, "final_step": steps, "history": history})


@pytest.mark.parametrize("keep", [False, True])
def test_pipeline_releases_finished_runs_and_keeps_runs_in_progress(tmp_path, keep, monkeypatch):
    use_train(monkeypatch, CheckpointingFakeTrain(fail=["base"]))
    rc = main(["--config", str(TINY_CONFIG), "--no-progress", "--stages", "plan,perturb", "--set", f"workdir='{tmp_path}'",
               f"keep_best_params={keep}"])
    assert rc == 3  # the failed run is reported
    runs = {p.name: p for p in next(tmp_path.iterdir()).joinpath("runs").iterdir()}
    assert len(runs) == 9 and (runs["base"] / "failed.json").exists()
    assert checkpoint_bytes(runs["base"] / "checkpoints") == 3010  # in progress: the full state stays
    for name, run in runs.items():
        if name == "base":
            continue
        assert (run / "result.json").exists()
        assert checkpoint_bytes(run / "checkpoints") == (1010 if keep else 0)  # params + meta, or nothing
        assert not list((run / "checkpoints").rglob("train"))
