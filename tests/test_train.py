import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import subprocess_env
from flax import linen as nn

from mixjax.data.domain import DomainSpec, examples_hash, load_domains
from mixjax.data.pipeline import select_mixture
from mixjax.data.tokenizer import ByteTokenizer
from mixjax.model.llama import PRESETS, ModelConfig
from mixjax.data.pipeline import multi_domain_eval_batches, optimizer_step_batches
from mixjax.train.checkpoint import RunCheckpoints
from mixjax.train.errors import DataExhaustedError, NonFiniteLossError
from mixjax.train.hooks import Hook
from mixjax.train.loop import TrainConfig, Trainer, planned_steps, train
from mixjax.train.optimizer import (
    OptimizerConfig,
    learning_rate,
    learning_rate_schedule,
    steps_for_budget,
)
from mixjax.train.step import token_losses

# Tolerances below assume full float32 matmuls (not TF32 on a GPU): tests/conftest.py.
pytestmark = pytest.mark.usefixtures("full_f32_matmuls")

TINY = ModelConfig(vocab_size=263, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, dtype="float32", rope_theta=10_000.0, tie_embeddings=True)


def _fixed_batch(seed=0, batch=4, length=32):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(8, 263, (batch, length + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((batch, length), np.float32),
        "segment_ids": np.ones((batch, length), np.int32), "positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
    }


def _leaves(params):
    return [np.asarray(a) for a in jax.tree.leaves(nn.unbox(params))]


FIXED_OPT = OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.1)


@pytest.fixture(scope="module")
def fixed_trainer():
    return Trainer(TINY, TrainConfig(optimizer=FIXED_OPT))


def test_loss_decreases_on_a_fixed_batch(fixed_trainer):
    state, batch = fixed_trainer.init(jax.random.key(0), total_steps=30), _fixed_batch()
    losses = []
    for _ in range(30):
        state, metrics = fixed_trainer.step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(np.log(263), rel=0.05)  # untrained: ~uniform over the vocabulary
    assert losses[-1] < 0.5 * losses[0]
    assert fixed_trainer.traces["train"] == 1


def test_prompt_tokens_do_not_count(fixed_trainer):
    state, batch = fixed_trainer.init(jax.random.key(0), 10), _fixed_batch()
    masked = dict(batch, weights=np.zeros_like(batch["weights"]))
    _, metrics = fixed_trainer.step(state, masked)
    assert float(metrics["tokens"]) == 0.0 and float(metrics["grad_norm"]) == 0.0


def test_sharded_step_matches_single_device():
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    script = Path(__file__).with_name("sharding_check.py")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    np.testing.assert_allclose(result["loss_mesh"], result["loss_one"], rtol=1e-5)
    assert result["loss_one"][1] < result["loss_one"][0]  # the first step really moved the params
    assert result["max_param_diff"] < 1e-5
    assert "fsdp" in result["q_spec"] and "tensor" in result["q_spec"]  # really sharded
    # The blocks' activation constraint reaches the FSDP step (it was a no-op under the
    # Trainer's mesh context): measured 2 constraints, 2 all-to-alls and 3 all-reduces,
    # against 0, 5 and 12 without it.
    assert result["fsdp_constraints"] >= 1
    assert result["fsdp_collectives"]["all-to-all"] + result["fsdp_collectives"]["all-reduce"] <= 6, result["fsdp_collectives"]


def test_warmup_cosine_schedule_values():
    cfg = OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.1, min_lr_ratio=0.1)
    lr = learning_rate_schedule(cfg, 100)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    # Cosine from step 10 to 100: halfway (55) is the mean of peak and floor.
    assert float(lr(55)) == pytest.approx(0.5 * (1e-3 + 1e-4), rel=1e-5)
    assert float(lr(100)) == pytest.approx(1e-4)
    no_warmup = learning_rate_schedule(OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0, min_lr_ratio=0.1), 100)
    assert float(no_warmup(0)) == pytest.approx(1e-3) and float(no_warmup(100)) == pytest.approx(1e-4)
    # The length is a traced input: one compiled function, any schedule length.
    traced = jax.jit(lambda s, n: learning_rate(cfg, s, n))
    assert float(traced(55, 100)) == pytest.approx(5.5e-4, rel=1e-5)
    assert float(traced(110, 200)) == pytest.approx(5.5e-4, rel=1e-5)


def test_steps_for_budget_floor_never_exceeds_the_data(small_data):
    assert steps_for_budget(1_000_000, 3, 16, 256) == 732  # floor(3e6 / 4096) = 732 (ceil was 733)
    assert steps_for_budget(10, 1, 16, 256) == 1
    examples, _ = small_data
    assert max(e.num_tokens for e in examples) > 33  # seq_len 32: longer examples are cut to a row
    for epochs, accum, seq_len in ((1, 1, 64), (2, 1, 64), (2, 3, 64), (1, 1, 32)):
        cfg = TrainConfig(seq_len=seq_len, batch_size=8, epochs=epochs, optimizer=OptimizerConfig(grad_accum=accum))
        supplied = sum(1 for _ in optimizer_step_batches(examples, seq_len=seq_len, batch_size=8, grad_accum=accum, epochs=epochs, seed=0))
        assert 0 < planned_steps(cfg, examples) <= supplied


def test_grad_accumulation_with_unequal_micro_batches_equals_big_batch():
    big = _fixed_batch(batch=8)
    # Micro-batch 1 trains all 4 x 32 tokens, micro-batch 2 only 4 tokens: a mean of the two
    # micro-batch means (optax.MultiSteps) weights micro-batch 2's tokens 32x too much.
    big["weights"][4:, 1:] = 0.0
    halves = {k: np.stack([v[:4], v[4:]]) for k, v in big.items()}
    # eps=1e-3 keeps Adam's first update smooth in g (see tests/sharding_check.py).
    opt = lambda accum: OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, eps=1e-3, grad_accum=accum)
    one = Trainer(TINY, TrainConfig(batch_size=8, optimizer=opt(1)))
    s1, m1 = one.step(one.init(jax.random.key(0), 5), big)
    two = Trainer(TINY, TrainConfig(batch_size=4, optimizer=opt(2)))
    s2, m2 = two.step(two.init(jax.random.key(0), 5), halves)
    assert float(m2["tokens"]) == 132.0
    assert float(m2["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)
    assert float(m2["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-5)
    initial = _leaves(one.init(jax.random.key(0)).params)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(_leaves(s1.params), initial)) > 1e-3  # really moved
    for a, b in zip(_leaves(s1.params), _leaves(s2.params)):
        np.testing.assert_allclose(a, b, atol=2e-6)


def test_chunked_cross_entropy_equals_full(fixed_trainer):
    """24 positions in chunks of 10 (the last one padded): only (B, 10, V) logits at a time."""
    rng = np.random.default_rng(0)
    # Through the model (tied and untied heads): same loss and gradients as the full logits.
    batch = {k: jax.numpy.asarray(v) for k, v in _fixed_batch(length=24).items()}
    tied = nn.unbox(fixed_trainer.init(jax.random.key(1)).params)
    untied = dataclasses.replace(TINY, tie_embeddings=False)  # the lm_head kernel path: losses
    with_head = dict(tied, lm_head={"kernel": jax.numpy.asarray(rng.normal(0, 0.02, (TINY.dim, TINY.vocab_size)), jax.numpy.float32)})
    loss = jax.jit(lambda p, chunk: token_losses(untied, p, batch, chunk)[0], static_argnums=1)
    np.testing.assert_allclose(float(loss(with_head, 10)), float(loss(with_head, 0)), rtol=1e-6)
    # Tied embeddings: losses and gradients.
    grad = jax.jit(jax.value_and_grad(lambda p, chunk: token_losses(TINY, p, batch, chunk)[0]), static_argnums=1)
    (lc, gc), (lf, gf) = grad(tied, 10), grad(tied, 0)
    np.testing.assert_allclose(float(lc), float(lf), rtol=1e-6)
    for a, b in zip(_leaves(gc), _leaves(gf)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # float32 summation order


def test_weight_decay_masked_off_norms_and_embeddings(fixed_trainer):
    trainer = fixed_trainer  # lr 1e-2 from step 0, weight_decay 0.1
    state = trainer.init(jax.random.key(0), 10)
    batch = _fixed_batch()
    before = nn.unbox(state.params)
    before = jax.tree.map(np.asarray, before)
    # Zero loss weights: zero gradients, so the Adam direction is 0 and only decay moves params.
    state, _ = trainer.step(state, dict(batch, weights=np.zeros_like(batch["weights"])))
    after = jax.tree.map(np.asarray, nn.unbox(state.params))
    np.testing.assert_array_equal(after["norm"]["scale"], before["norm"]["scale"])
    np.testing.assert_array_equal(after["layers"]["input_layernorm"]["scale"], before["layers"]["input_layernorm"]["scale"])
    np.testing.assert_array_equal(after["embed_tokens"]["embedding"], before["embed_tokens"]["embedding"])
    q_before, q_after = before["layers"]["self_attn"]["q_proj"]["kernel"], after["layers"]["self_attn"]["q_proj"]["kernel"]
    np.testing.assert_allclose(q_after, q_before * (1 - 1e-2 * 0.1), rtol=1e-6)  # decoupled decay: p - lr * wd * p


def test_bf16_compute_keeps_float32_master_weights(fixed_trainer):
    model = dataclasses.replace(TINY, dtype="bfloat16")
    trainer = Trainer(model, TrainConfig(optimizer=FIXED_OPT))
    state, m = trainer.step(trainer.init(jax.random.key(0), 5), _fixed_batch())
    _, m32 = fixed_trainer.step(fixed_trainer.init(jax.random.key(0), 5), _fixed_batch())
    assert {a.dtype for a in _leaves(state.params)} == {np.dtype("float32")}
    assert float(m["loss"]) == pytest.approx(float(m32["loss"]), rel=1e-2)


@pytest.fixture(scope="module")
def small_data():
    domains = load_domains([DomainSpec(n, (f"synthetic:{n}:400",), 16) for n in ("instruct", "math")], ByteTokenizer(), 65)
    examples = select_mixture(domains, {"instruct": 4000, "math": 4000}, seed=0)
    return examples, {n: d.val for n, d in domains.items()}


def _run_cfg(**kw):
    return TrainConfig(**{**dict(seq_len=64, batch_size=8, epochs=1, eval_every=3, checkpoint_every=2, optimizer=OptimizerConfig(learning_rate=3e-3)), **kw})


@pytest.fixture(scope="module")
def run_trainer():
    """One Trainer (one compile) for every run test below."""
    return Trainer(TINY, _run_cfg())


def _quiet(**kw):
    return dict(progress=False, log=lambda s: None, **kw)


def _interrupt(info):
    raise KeyboardInterrupt(f"stopped at step {info.step}")  # as a crash would


def test_one_trainer_compiles_once_for_runs_of_any_length(tmp_path, small_data, run_trainer):
    examples, val = small_data
    shared = Trainer(TINY, _run_cfg())
    results = {n: train(shared, _run_cfg(max_steps=n), examples, val, tmp_path / f"shared{n}", **_quiet()) for n in (7, 12)}
    assert shared.traces == {"train": 1, "eval": 1}
    for n in (7, 12):
        alone = train(run_trainer, _run_cfg(max_steps=n), examples, val, tmp_path / f"alone{n}", **_quiet())  # another Trainer
        assert results[n].final_step == n
        assert results[n].history == alone.history
        rows = [json.loads(line) for line in (tmp_path / f"shared{n}" / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["learning_rate"] == pytest.approx(learning_rate(_run_cfg().optimizer, n - 1, n))


def test_eval_all_domains_in_one_call_matches_per_domain(small_data, run_trainer):
    _, val = small_data
    params = run_trainer.init(jax.random.key(3)).params
    batches = multi_domain_eval_batches(val, seq_len=64, batch_size=8)
    together = run_trainer.evaluate(params, batches, list(val))
    for name, examples in val.items():
        alone = run_trainer.evaluate(params, multi_domain_eval_batches({name: examples}, seq_len=64, batch_size=8), [name])
        assert together[name] == pytest.approx(alone[name], rel=1e-6)
    assert len(batches) < sum(len(multi_domain_eval_batches({n: e}, seq_len=64, batch_size=8)) for n, e in val.items()) + 1


def test_resume_after_interruption_matches_uninterrupted(tmp_path, small_data, run_trainer):
    examples, val = small_data
    full = train(run_trainer, _run_cfg(), examples, val, tmp_path / "full", **_quiet())
    with pytest.raises(KeyboardInterrupt):
        train(run_trainer, _run_cfg(), examples, val, tmp_path / "crash", **_quiet(hooks=[Hook(_interrupt, every=5)]))
    resumed = train(run_trainer, _run_cfg(), examples, val, tmp_path / "crash", **_quiet())
    assert resumed.final_step == full.final_step
    params = [RunCheckpoints(tmp_path / run / "checkpoints").restore_latest(run_trainer.abstract_state)[0].params for run in ("full", "crash")]
    for a, b in zip(_leaves(params[0]), _leaves(params[1])):
        np.testing.assert_array_equal(a, b)
    assert resumed.best_losses == pytest.approx(full.best_losses)
    assert resumed.trained_tokens == full.trained_tokens and resumed.trained_examples_hash == full.trained_examples_hash
    rows = [json.loads(line)["step"] for line in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, full.final_step + 1))  # one row per step, no duplicates after the resume


@pytest.mark.parametrize("kill_step", [2, 6])
def test_kill_right_after_a_checkpoint_write_resumes(tmp_path, small_data, run_trainer, monkeypatch, kill_step):
    """eval_every=2, checkpoint_every=3: step 2's best is written as a params-only step
    (just before the full save of step 3, the first write of the run), step 6 is a full
    step that is also the best. A kill right after either write must resume and finish
    exactly as the uninterrupted run (the old best/ + latest/ managers died here with
    StepAlreadyExists on the rerun of the step). Before issue 27 the best of step 4 was
    written at step 4 itself; now bests are written only before a full save or at the end."""
    import orbax.checkpoint as ocp

    examples, val = small_data
    cfg = _run_cfg(eval_every=2, checkpoint_every=3)
    full = train(run_trainer, cfg, examples, val, tmp_path / "full", **_quiet())
    assert {h["step"] for h in full.history} >= {2, 4, 6} and full.history[1]["total"] < full.history[0]["total"]
    save = ocp.CheckpointManager.save

    def save_then_die(self, step, *args, **kwargs):
        out = save(self, step, *args, **kwargs)
        if step == kill_step:
            self.wait_until_finished()
            raise KeyboardInterrupt("killed")
        return out

    monkeypatch.setattr(ocp.CheckpointManager, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(run_trainer, cfg, examples, val, tmp_path / "crash", **_quiet())
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    resumed = train(run_trainer, cfg, examples, val, tmp_path / "crash", **_quiet())
    assert resumed.history == full.history and resumed.best_step == full.best_step
    params = [RunCheckpoints(tmp_path / run / "checkpoints").restore_latest(run_trainer.abstract_state)[0].params for run in ("full", "crash")]
    for a, b in zip(_leaves(params[0]), _leaves(params[1])):
        np.testing.assert_array_equal(a, b)


def test_preemption_signal_saves_and_the_rerun_resumes(tmp_path, small_data, run_trainer):
    """No step cadence, the default 30-min timer: nothing but the best params would be
    written. SIGUSR1 (SLURM's warning), sent after step 5 (by a hook that runs after the
    checkpoint hook), makes the run save its full state after step 6 and stop (Preempted,
    a SystemExit); the rerun resumes there and ends exactly as the uninterrupted run."""
    import os
    import signal

    from mixjax.train.errors import Preempted

    examples, val = small_data
    cfg = _run_cfg(checkpoint_every=None, max_steps=9)
    full = train(run_trainer, cfg, examples, val, tmp_path / "full", **_quiet())
    assert RunCheckpoints(tmp_path / "full" / "checkpoints").restore_latest(run_trainer.abstract_state) is None  # no full save
    send = Hook(lambda info: os.kill(os.getpid(), signal.SIGUSR1) if info.step == 5 else None)
    with pytest.raises(Preempted, match="SIGUSR1 received; full state saved at step 6"):
        train(run_trainer, cfg, examples, val, tmp_path / "crash", **_quiet(hooks=[send]))
    lines = []
    resumed = train(run_trainer, cfg, examples, val, tmp_path / "crash", progress=False, log=lines.append)
    assert lines[0] == "resumed crash at step 6"
    assert resumed.history == full.history and resumed.best_step == full.best_step
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is gone after the run


def test_best_checkpoint_is_lowest_validation_loss(tmp_path, small_data, run_trainer):
    examples, val = small_data
    cfg = _run_cfg(eval_every=2, checkpoint_every=5)
    result = train(run_trainer, cfg, examples, val, tmp_path / "run", **_quiet())
    totals = {h["step"]: h["total"] for h in result.history}
    assert result.best_step == min(totals, key=totals.get)
    assert result.best_total == pytest.approx(min(totals.values()))
    checkpoints = RunCheckpoints(tmp_path / "run" / "checkpoints")
    best_params, meta = checkpoints.restore_best(run_trainer.abstract_state.params)
    assert meta["best"]["step"] == result.best_step and meta["best"]["losses"] == pytest.approx(result.best_losses)
    # Kept: the best step and the newest full step only (every 5 steps; none at the end).
    assert set(checkpoints.manager.all_steps()) == {result.best_step, (result.final_step - 1) // 5 * 5}
    # Re-evaluating the restored best params reproduces the recorded losses.
    again = run_trainer.evaluate(best_params, multi_domain_eval_batches(val, seq_len=64, batch_size=8), list(val))
    assert again == pytest.approx(result.best_losses, rel=1e-5)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["best_step"] == result.best_step
    assert result.trained_examples_hash == examples_hash(examples)  # the run fingerprint's hash


def test_preservation_policy_keeps_the_best_and_the_newest_full_step():
    """The one orbax extension point mixjax uses (public checkpoint_managers API, pinned in
    pyproject): the lowest total and the newest full step survive; unscored steps do not."""
    import datetime
    from types import SimpleNamespace

    from mixjax.train.checkpoint import _BestAndLatestFull

    now = datetime.datetime.now()
    steps = [(2, {"full": 0.0, "total": 3.0}), (4, {"full": 1.0, "total": 2.0}), (6, {"full": 0.0, "total": 2.5}),
             (8, {"full": 1.0}), (10, {"full": 0.0, "total": 2.2}), (12, {"full": 1.0})]
    infos = [SimpleNamespace(step=s, metrics=m, time=now) for s, m in steps]
    keep = _BestAndLatestFull().should_preserve(infos, context=None)
    assert [s for (s, _), k in zip(steps, keep) if k] == [4, 12]


def _nan_params(trainer):
    params = jax.tree.map(np.array, nn.unbox(trainer.init(jax.random.key(0)).params))
    params["norm"]["scale"][0] = np.nan
    return params


def test_non_finite_train_loss_stops_the_run(tmp_path, small_data, run_trainer):
    examples, val = small_data
    with pytest.raises(NonFiniteLossError) as err:
        train(run_trainer, _run_cfg(), examples, val, tmp_path / "nan", **_quiet(init_params=_nan_params(run_trainer)))
    assert (err.value.run, err.value.step, err.value.what) == ("nan", 1, "train")
    assert isinstance(err.value, RuntimeError) and "'nan'" in str(err.value) and "step 1" in str(err.value)
    assert not (tmp_path / "nan" / "result.json").exists()


def test_non_finite_eval_loss_stops_the_run(tmp_path, small_data, run_trainer):
    examples, val = small_data
    bad = dataclasses.replace(val["math"][0], tokens=np.full_like(val["math"][0].tokens, 10_000))  # beyond the embedding: NaN
    with pytest.raises(NonFiniteLossError) as err:
        train(run_trainer, _run_cfg(), examples, {"instruct": val["instruct"], "math": (bad,)}, tmp_path / "evalnan", **_quiet())
    assert (err.value.step, err.value.what) == (3, "eval")  # the first evaluation (eval_every=3)
    assert not (tmp_path / "evalnan" / "result.json").exists()


def test_data_exhausted_before_the_schedule_ends_is_an_error(tmp_path, small_data, run_trainer):
    examples, val = small_data
    supplied = sum(1 for _ in optimizer_step_batches(examples, seq_len=64, batch_size=8, grad_accum=1, epochs=1, seed=0))
    with pytest.raises(DataExhaustedError) as err:
        train(run_trainer, _run_cfg(epochs=1, max_steps=supplied + 5), examples, val, tmp_path / "short", **_quiet())
    assert (err.value.run, err.value.step, err.value.total_steps) == ("short", supplied, supplied + 5)
    assert not (tmp_path / "short" / "result.json").exists()


def _tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Read TensorBoard event files (TFRecord framing + Event protos) without TensorFlow."""
    import struct

    from tensorboardX.proto import event_pb2

    series: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                series.setdefault(value.tag, []).append((event.step, value.simple_value))
    return series


def test_metrics_jsonl_tensorboard_and_profile(tmp_path, small_data, run_trainer):
    examples, val = small_data
    result = train(run_trainer, _run_cfg(max_steps=8, profile=True), examples, val, tmp_path / "obs", **_quiet())
    rows = [json.loads(line) for line in (tmp_path / "obs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert set(rows[0]) == {"step", "loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu"}
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 and r["mfu"] is None for r in rows)  # CPU: no datasheet peak
    series = _tensorboard_scalars(tmp_path / "obs" / "tensorboard")
    assert [s for s, _ in series["train/loss"]] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in series["train/loss"]], [r["loss"] for r in rows], rtol=1e-6)
    assert [s for s, _ in series["val/total"]] == [h["step"] for h in result.history]
    assert list((tmp_path / "obs" / "profile").rglob("*.xplane.pb"))  # the jax.profiler trace


def test_presets_have_published_sizes():
    assert PRESETS["llama3.1-8b"].num_params() == 8_030_261_248
    assert PRESETS["llama3.2-1b"].num_params() == 1_235_814_400
    assert PRESETS["qwen2.5-0.5b"].num_params() == 494_032_768


EXIT_SCRIPT = """
import sys
from mixjax.data.domain import DomainSpec, examples_hash, load_domains
from mixjax.data.pipeline import select_mixture
from mixjax.data.tokenizer import ByteTokenizer
from mixjax.model.llama import ModelConfig
from mixjax.train.hooks import Hook
from mixjax.train.loop import TrainConfig, Trainer, train

def fail(info):
    raise RuntimeError(f"a hook failed at step {info.step}")

model = ModelConfig(vocab_size=263, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32, dtype="float32", rope_theta=10_000.0, tie_embeddings=True)
domains = load_domains([DomainSpec(n, (f"synthetic:{n}:40",), 4) for n in ("instruct", "math")], ByteTokenizer(), 65)
examples = select_mixture(domains, {"instruct": 1000, "math": 1000}, seed=0)
cfg = TrainConfig(seq_len=64, batch_size=4, epochs=1, max_steps=6, eval_every=3, checkpoint_every=6)
trainer, val = Trainer(model, cfg), {n: d.val for n, d in domains.items()}
print(train(trainer, cfg, examples, val, sys.argv[1] + "/ok", progress=True).final_step)
try:
    train(trainer, cfg, examples, val, sys.argv[1] + "/failed", progress=True, hooks=[Hook(fail, every=2)])
except RuntimeError as err:
    KEPT = err  # a caller keeping the error keeps the failed run's frame alive until exit
    print(err)
"""


def test_a_run_leaves_no_tracebacks_or_bars_on_a_non_terminal(tmp_path):
    """A finished and a failed run in a child process whose stderr is a pipe (as in CI,
    SLURM, 2> log): no grain "Exception ignored in DatasetIterator.__del__" tracebacks
    at exit (the failed run's frame lives on in KEPT), no tqdm carriage returns."""
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", EXIT_SCRIPT, str(tmp_path)], env=subprocess_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-2:] == ["6", "a hook failed at step 2"]
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "\r" not in out.stderr and len(out.stderr.splitlines()) <= 2, out.stderr[-3000:]
