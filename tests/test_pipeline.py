import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import subprocess_env, use_train

from mixjax.pipeline.config import ConfigError, apply_overrides, load_config
from mixjax.run import main

TINY = Path(__file__).parent / "fixtures" / "tiny_config.py"


def _run(args, workdir):
    return main(["--config", str(TINY), "--no-progress", "--set", f"workdir='{workdir}'", *args])


def test_overrides_reach_nested_fields():
    cfg = apply_overrides(load_config(TINY), ["train.max_steps=3", "train.optimizer.learning_rate=0.5", "name=x"])
    assert cfg.train.max_steps == 3 and cfg.train.optimizer.learning_rate == 0.5 and cfg.name == "x"
    with pytest.raises(ConfigError, match="unknown config key 'max_stepz'"):
        apply_overrides(cfg, ["train.max_stepz=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("importance={'poetry': 2.0}", "importance: unknown domain 'poetry'"),
        ("target_budgets=(10_000_000,)", "target budget 10,000,000 exceeds the"),
        ("base_tokens=1_000_000", "domain instruct: the perturbation runs need 3,000,000 tokens"),
        ("checkpoint='/nonexistent/llama'", "checkpoint: /nonexistent/llama is not a local Hugging Face model directory"),
        ("model='gpt-17'", "model: unknown preset 'gpt-17'"),
    ],
)
def test_bad_configs_stop_before_training(tmp_path, capsys, override, message):
    assert _run(["--set", override], tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "tiny" / "runs").exists()  # nothing trained


def test_unknown_stage(tmp_path, capsys):
    assert _run(["--stages", "plan,trian"], tmp_path) == 2
    assert "unknown ['trian']" in capsys.readouterr().err


def _pipeline(workdir: Path, stages: str = "plan,perturb,fit,solve") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mixjax.run", "--config", str(TINY), "--no-progress", "--stages", stages, "--set", f"workdir='{workdir}'"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env())


def _finished(exp: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in exp.glob("runs/*/result.json")}


def test_sigkill_midway_then_rerun_loses_nothing(tmp_path):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    ref = _pipeline(reference, "plan,perturb")
    proc = _pipeline(killed)
    deadline = time.time() + 300
    while len(_finished(killed / "tiny")) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # let the next run get under way, so it is interrupted mid-training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _finished(killed / "tiny")
    assert 3 <= len(before) < 9, before

    rerun = _pipeline(killed)  # through fit and solve: the one real fit of the pipeline tests
    assert rerun.wait(timeout=900) == 0, rerun.stderr.read()[-3000:]
    assert ref.wait(timeout=900) == 0, ref.stderr.read()[-3000:]
    after = _finished(killed / "tiny")
    assert len(after) == 9
    assert all(after[name] == mtime for name, mtime in before.items())  # finished runs not retrained
    log = (killed / "tiny" / "log.txt").read_text()
    assert f"{len(before)} already finished" in log

    # The interrupted run resumed to the same losses as an uninterrupted one (same fit inputs).
    table = [(d / "tiny" / "runs.csv").read_text() for d in (killed, reference)]
    assert table[0] == table[1]
    weights = json.loads((killed / "tiny" / "solution.json").read_text())["weights"]["4000"]
    assert sum(weights) == pytest.approx(1.0) and min(weights) >= 0


# ---------------------------------------------------------------------- fakes and helpers

import dataclasses  # noqa: E402

from mixjax.io import write_json_atomic  # noqa: E402
from mixjax.mixing.baselines import feasible_mask  # noqa: E402
from mixjax.pipeline.training import run_train_config, steps_for_run  # noqa: E402
from mixjax.pipeline.report import grid_metrics  # noqa: E402
from mixjax.pipeline.stages import validation_plan  # noqa: E402
from mixjax.pipeline.store import RunSpec, RunStore  # noqa: E402
from mixjax.mixing.solve import Constraints  # noqa: E402


class FakeTrain:
    """Stands in for mixjax.train.loop.train: writes result.json with losses from a
    law-like function of the run's selected tokens (read from its spec.json)."""

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, trainer, cfg, examples, val_sets, workdir, *, init_params=None, log=print, progress=True, hooks=(), selection=None):
        workdir = Path(workdir)
        self.calls.append((workdir.name, cfg))
        self.positions = getattr(self, "positions", {}) | {workdir.name: sum(e.num_tokens - 1 for e in examples)}
        self.inits = getattr(self, "inits", []) + [(trainer.model, init_params)]
        if workdir.name in self.fail:
            raise RuntimeError(f"non-finite train loss in run {workdir.name} at step 2")
        x = json.loads((workdir / "spec.json").read_text())["selected_tokens"]
        total = sum(x.values())
        losses = {n: 1.0 + 30.0 * (x[n] + 0.2 * (total - x[n]) + 1.0) ** -0.3 for n in x}
        steps = cfg.max_steps
        history = [{"step": s, "total": sum(losses.values()) + 0.1 * (steps - s), "losses": losses} for s in (max(1, steps // 2), steps)]
        write_json_atomic(workdir / "result.json", {"best_step": steps, "best_losses": losses, "final_step": steps, "history": history})


def _main(args, workdir, fake, config=TINY, progress=False):
    with pytest.MonkeyPatch.context() as mp:
        use_train(mp, fake)
        return main(["--config", str(config), *([] if progress else ["--no-progress"]), "--set", f"workdir='{workdir}'", *args])


@pytest.fixture
def file_config(tmp_path):
    """The tiny config with its two domains read from JSONL files (Alpaca format)."""
    from mixjax.data import synthetic

    data = tmp_path / "data"
    data.mkdir()
    for name in ("instruct", "math"):
        with open(data / f"{name}.jsonl", "w") as f:
            for conv in synthetic.generate(name, 300):
                f.write(json.dumps({"instruction": conv[0][1], "output": conv[1][1]}) + "\n")
    path = tmp_path / "file_config.py"
    path.write_text(
        "import dataclasses, importlib.util\n"
        "from mixjax.data.domain import DomainSpec\n"
        f"_s = importlib.util.spec_from_file_location('tiny', {str(TINY)!r})\n"
        "_m = importlib.util.module_from_spec(_s); _s.loader.exec_module(_m)\n"
        f"config = dataclasses.replace(_m.config, domains=tuple(DomainSpec(n, ({str(data)!r} + f'/{{n}}.jsonl',), val_examples=16) for n in ('instruct', 'math')))\n"
    )
    return path, data


# ---------------------------------------------------------------------- #8 item 1: fingerprints


@pytest.mark.parametrize(
    "change, named",
    [
        ("lr", "train.optimizer.learning_rate: 0.003 -> 0.01"),
        ("data", "data.instruct.sources[0]"),
        ("seed", "seed: 0 -> 1"),
    ],
)
def test_changed_setup_stops_before_training_then_retrain(tmp_path, capsys, file_config, change, named):
    config, data = file_config
    fake = FakeTrain()
    assert _main(["--stages", "plan,perturb"], tmp_path, fake, config) == 0
    assert len(fake.calls) == 9
    before = (tmp_path / "tiny" / "runs.csv").read_text()
    extra = []
    if change == "lr":
        extra = ["--set", "train.optimizer.learning_rate=0.01"]
    elif change == "seed":
        extra = ["--set", "seed=1"]
    else:
        with open(data / "instruct.jsonl", "a") as f:
            f.write(json.dumps({"instruction": "Reverse abc.", "output": "cba"}) + "\n")
    capsys.readouterr()
    fake.calls.clear()
    assert _main(["--stages", "plan,perturb", *extra], tmp_path, fake, config) == 2
    err = capsys.readouterr().err
    assert named in err and "--retrain" in err and "new experiment name" in err, err
    assert fake.calls == []  # nothing trained
    assert (tmp_path / "tiny" / "runs.csv").read_text() == before  # nothing overwritten

    assert _main(["--stages", "plan,perturb", "--retrain", *extra], tmp_path, fake, config) == 0
    assert len(fake.calls) == 9  # every run's fingerprint changed (examples, lr or seed)
    assert _main(["--stages", "plan,perturb", *extra], tmp_path, fake, config) == 0  # now fresh: reused
    assert len(fake.calls) == 9


def test_runs_csv_records_selected_not_planned_tokens(tmp_path):
    fake = FakeTrain()
    assert _main(["--stages", "plan,perturb"], tmp_path, fake) == 0
    exp = tmp_path / "tiny"
    spec = json.loads((exp / "runs" / "base" / "spec.json").read_text())
    assert spec["tokens"] == {"instruct": 2000, "math": 2000}
    selected = spec["selected_tokens"]
    assert selected != spec["tokens"] and all(abs(selected[n] - 2000) < 200 for n in selected)
    rows = (exp / "runs.csv").read_text().splitlines()
    assert rows[0] == "tokens.instruct,tokens.math,loss.instruct,loss.math"
    base_row = [r for r in rows[1:] if r.startswith(f"{float(selected['instruct'])!r},{float(selected['math'])!r},")]
    assert len(base_row) == 1


def test_progress_off_a_terminal_is_one_line_per_finished_run(tmp_path, capsys):
    """stderr is not a terminal under capsys (as in CI logs, SLURM, 2> log): no bars."""
    assert _main(["--stages", "plan,perturb"], tmp_path, FakeTrain(), progress=True) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line for line in err.splitlines() if "perturbation runs" in line] == [f"perturbation runs: {i}/9 done" for i in range(1, 10)]


def test_only_primary_process_writes(tmp_path):
    store = RunStore(tmp_path / "exp", log=lambda m: None, primary=False)
    spec = RunSpec("base", "perturb", {"a": 1})
    store.write_plan([spec])
    store.start(spec, {"seed": 0}, {"a": 1})
    store.write_json("fit.json", {})
    store.log("hello")
    assert not (tmp_path / "exp").exists()


# ---------------------------------------------------------------------- #8 item 10: typed overrides


def test_overrides_are_type_checked():
    cfg = apply_overrides(load_config(TINY), ["base_tokens=1e6", "train.epochs=3", "train.mesh_shape=(1,-1,1)", "importance={'math': 2}"])
    assert cfg.base_tokens == 1_000_000 and type(cfg.base_tokens) is int
    assert cfg.train.epochs == 3.0 and type(cfg.train.epochs) is float
    assert cfg.train.mesh_shape == (1, -1, 1) and cfg.importance == {"math": 2.0}
    for override, message in [
        ("train.seq_len=4O96", "override train.seq_len='4O96': expected int"),
        ("base_tokens=1.5", "override base_tokens=1.5: expected int"),
        ("train.max_steps=True", "override train.max_steps=True: expected int | None, got a bool"),
        ("name=3", "override name=3: expected str"),
        ("target_budgets=4000", "override target_budgets=4000: expected tuple"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            apply_overrides(cfg, [override])


def test_bad_override_exits_2_with_one_line(tmp_path, capsys):
    assert _main(["--set", "train.seq_len=4O96"], tmp_path, FakeTrain()) == 2
    err = capsys.readouterr().err.strip()
    assert "train.seq_len='4O96': expected int" in err and "\n" not in err


# ---------------------------------------------------------------------- #8 item 3: step budgets


def test_max_steps_is_a_cap():
    from mixjax.data.domain import Example
    from mixjax.train.loop import TrainConfig

    def examples(tokens: int) -> list[Example]:  # examples of 4,097 tokens train 4,096 positions each
        return [Example(np.zeros(4097, np.int32), np.ones(4097, np.int32))] * (tokens // 4096)

    paper = TrainConfig(seq_len=4096, batch_size=16, epochs=3, max_steps=200)
    # Paper, 5M-token budget: 3 epochs of 5M tokens in batches of 16 x 4,096 -> 228 steps, capped at 200.
    assert steps_for_run(examples(5_000_000), paper) == 200
    # A 0.66M-token perturbation run needs only 30 steps: the cap does not stretch it.
    assert steps_for_run(examples(660_000), paper) == 30
    assert steps_for_run(examples(660_000), dataclasses.replace(paper, max_steps=None)) == 30
    assert steps_for_run(examples(4096), dataclasses.replace(paper, epochs=1, max_steps=None)) == 1


def test_run_steps_follow_tokens_under_the_cap(tmp_path):
    fake = FakeTrain()
    assert _main(["--stages", "plan,perturb", "--set", "train.epochs=1", "train.max_steps=None"], tmp_path, fake) == 0
    for name, cfg in fake.calls:  # floor of the trained positions (tokens - 1 per example) over B x T
        assert cfg.max_steps == fake.positions[name] // (4 * 96)
    steps = sorted(cfg.max_steps for _, cfg in fake.calls)
    assert steps[0] == 6 and steps[-1] == 20  # instruct-x0.25 (~2,500 tokens) .. a x3 run (~8,000 tokens)
    fake2 = FakeTrain()
    assert _main(["--stages", "plan,perturb", "--set", "train.epochs=1", "train.max_steps=12", "name='capped'"], tmp_path, fake2) == 0
    assert sorted(cfg.max_steps for _, cfg in fake2.calls) == sorted(min(s, 12) for s in steps)


# ---------------------------------------------------------------------- #8 item 4: failed runs


def test_failed_run_is_listed_others_kept(tmp_path, capsys):
    fake = FakeTrain(fail={"math-x2"})
    assert _main([], tmp_path, fake) == 3
    err = capsys.readouterr().err
    assert "1 run(s) failed" in err and "math-x2: RuntimeError: non-finite train loss in run math-x2 at step 2" in err
    exp = tmp_path / "tiny"
    assert len(fake.calls) == 9 and len(list(exp.glob("runs/*/result.json"))) == 8
    assert (exp / "runs" / "math-x2" / "failed.json").exists() and not (exp / "fit.json").exists()
    assert len((exp / "runs.csv").read_text().splitlines()) == 1 + 8

    retry = FakeTrain()
    assert _main(["--stages", "plan,perturb"], tmp_path, retry) == 0
    assert [name for name, _ in retry.calls] == ["math-x2"]
    assert not (exp / "runs" / "math-x2" / "failed.json").exists()


# ---------------------------------------------------------------------- #8 item 8, #9 item 4, #11 item 4: validate and report


def test_validation_plan_skips_infeasible_mixtures():
    constraints = Constraints.create(2, lower=[0.0, 0.0], upper=[1.0, 0.8], available=[300.0, 2000.0])
    mixtures = {"optimal": np.array([0.25, 0.75]), "uniform": np.array([0.5, 0.5])}
    mixtures |= {f"grid-{w:.2f}": np.array([w, 1 - w]) for w in (0.0, 0.25, 0.5, 0.75, 1.0)}
    specs, skipped = validation_plan(("a", "b"), 1000, mixtures, constraints)
    assert [s.name.rsplit("-", 1)[0] for s in specs] == ["validate-optimal-seed0", "validate-grid-0.25-seed0"]
    assert [(s.label, s.seed) for s in specs] == [("optimal", 0), ("grid-0.25", 0)]
    assert skipped == {
        "uniform": "infeasible at N=1,000: domain a needs 500 tokens",
        "grid-0.00": "infeasible at N=1,000: outside the weight bounds",
        "grid-0.50": "infeasible at N=1,000: domain a needs 500 tokens",
        "grid-0.75": "infeasible at N=1,000: domain a needs 750 tokens",
        "grid-1.00": "infeasible at N=1,000: domain a needs 1,000 tokens",
    }
    assert feasible_mask(np.array([[0.3, 0.7], [0.31, 0.69]]), 1000, Constraints.create(2, available=[300, 2000])).tolist() == [True, False]


def test_grid_metrics():
    row = lambda m: {"measured": m, "measured_total": sum(m)}
    rows = {"optimal": row([1.0, 2.0]), "grid-a": row([0.9, 2.2]), "grid-b": row([1.1, 1.9]), "grid-c": row([1.2, 2.1]), "uniform": row([1.0, 1.95])}
    g = grid_metrics(rows, ["x", "y"])
    assert g["paper_metric"] == pytest.approx(((1 / 0.9 - 1) + (2 / 1.9 - 1)) / 2)
    assert g["total_regret"] == pytest.approx(0.0)  # grid-b ties the optimum at 3.0
    assert g["rank"] == 2 and g["size"] == 3  # only uniform (2.95) measured lower
    rows["optimal"] = row([1.0, 2.2])
    assert grid_metrics(rows, ["x", "y"])["total_regret"] == pytest.approx(0.2 / 3.0)


def test_full_pipeline_with_grid_report(tmp_path):
    """Every stage but fit (its compile takes a minute here; a fitted law of the fake
    losses comes from fixtures) with a fake trainer: infeasible grid points (upper bound
    on instruct) are skipped and listed; summary.json and report.md carry the grid metrics
    and the training curves."""
    fake = FakeTrain()
    args = ["--set", "validate.grid_step=0.25", "upper={'instruct': 0.6}", "validate.baselines=('uniform','proportional')", "validate.seeds=2"]
    assert _main(["--stages", "plan,perturb", *args], tmp_path, fake) == 0
    exp = tmp_path / "tiny"
    (exp / "fit.json").write_text((Path(__file__).parent / "fixtures" / "tiny_fit.json").read_text())
    assert _main(["--stages", "solve,validate,report", *args], tmp_path, fake) == 0
    summary = json.loads((exp / "summary.json").read_text())
    v = summary["validation"]
    assert summary["base_model"] is None
    assert set(v["skipped"]) == {"grid-0.75-0.25", "grid-1.00-0.00"}
    assert set(v["mixtures"]) == {"optimal", "uniform", "proportional", "grid-0.00-1.00", "grid-0.25-0.75", "grid-0.50-0.50"}
    for row in v["mixtures"].values():
        assert set(row) >= {"weights", "measured", "measured_sd", "predicted", "measured_total", "measured_total_sd", "predicted_total", "per_seed"}
        assert row["measured_total"] == pytest.approx(sum(row["measured"]))
    # Two seeds: mean and sd over seeds of the totals; each seed's grid metric; paired differences.
    for row in v["mixtures"].values():
        totals = [row["per_seed"][s]["total"] for s in ("0", "1")]
        assert row["seeds"] == [0, 1] and row["measured_total"] == pytest.approx(np.mean(totals))
        assert row["measured_total_sd"] == pytest.approx(np.std(totals, ddof=1)) and row["measured_total_sd"] > 0
    g = v["grid"]
    assert g["size"] == 3 and g["seeds"] == 2 and 1 <= g["rank"] <= 6 and len(g["rank_per_seed"]) == 2
    assert g["paper_metric"] == pytest.approx(np.mean([g["per_seed"][s]["paper_metric"] for s in ("0", "1")]))
    assert g["total_regret_sd"] == pytest.approx(np.std([g["per_seed"][s]["total_regret"] for s in ("0", "1")], ddof=1))
    opt, uni = v["mixtures"]["optimal"]["per_seed"], v["mixtures"]["uniform"]["per_seed"]
    d = v["optimal_vs"]["uniform"]
    assert d["n"] == 2 and d["mean"] == pytest.approx(np.mean([opt[s]["total"] - uni[s]["total"] for s in ("0", "1")]))
    assert set(v["optimal_vs"]) == {"uniform", "proportional"} and d["verdict"] in ("better", "indistinguishable", "worse")
    report = (exp / "report.md").read_text()
    assert f"**{g['paper_metric']:.2%} ± {g['paper_metric_sd']:.2%}**" in report and "grid-1.00-0.00: infeasible" in report
    assert f"| uniform | 2 | {d['mean']:+.4f} |" in report and f"**{d['verdict']}**" in report
    assert (exp / "training_curves.png").stat().st_size > 5000 and "training_curves.png" in report
    assert len(fake.calls) == 9 + 6 * 2
    validate_runs = [name for name, _ in fake.calls[9:]]
    assert [n.split("-seed")[1][0] for n in validate_runs] == ["0"] * 6 + ["1"] * 6  # seed-major

    # Job arrays: a task trains one validation run, by its index in the same (seed-major) plan.
    (exp / "runs" / validate_runs[7] / "result.json").unlink()
    fake.calls.clear()
    assert _main(["--run", "validate:7", *args], tmp_path, fake) == 0
    assert [name for name, _ in fake.calls] == [validate_runs[7]]
    assert _main(["--run", "validate:12", *args], tmp_path, fake) == 2  # 12 runs: 0..11


# ---------------------------------------------------------------------- #9 items 1, 2: pretrain stage


def test_pretrain_saves_a_hf_base_that_the_runs_fine_tune_from(tmp_path, monkeypatch):
    from mixjax.model.hf import load_hf_checkpoint
    from mixjax.pipeline.config import PretrainConfig
    from mixjax.pipeline.pretrain import base_fingerprint, base_model_dir, ensure_base_model
    from mixjax.pipeline.stages import Options, Pipeline
    from mixjax.train.loop import TrainConfig
    from mixjax.train.optimizer import OptimizerConfig

    pre = PretrainConfig(
        num_documents=240, val_documents=24, vocab_size=300,
        train=TrainConfig(seq_len=64, batch_size=4, epochs=1.0, max_steps=4, optimizer=OptimizerConfig(learning_rate=3e-3)),
    )
    config = dataclasses.replace(load_config(TINY), workdir=str(tmp_path), pretrain=pre)
    logs = []
    base = ensure_base_model(pre, config.model_config(), tmp_path, log=logs.append, progress=False)
    assert base.parent == tmp_path / "base-models"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "fingerprint.json"} <= {p.name for p in base.iterdir()}
    assert "chat_template" in json.loads((base / "tokenizer_config.json").read_text())
    model, params = load_hf_checkpoint(base)
    assert model.vocab_size == 300 and model.dim == 16
    record = json.loads((base / "fingerprint.json").read_text())
    assert record["steps"] == 4 and np.isfinite(record["best_losses"]["corpus"])

    # Reused while the fingerprint matches (no training: this train function would raise).
    def no_training(*args, **kwargs):
        raise AssertionError("retrained a cached base model")

    with monkeypatch.context() as mp:
        use_train(mp, no_training)
        assert ensure_base_model(pre, config.model_config(), tmp_path, log=logs.append) == base
    changed = dataclasses.replace(pre, seed=1)
    assert base_model_dir(tmp_path, base_fingerprint(changed, config.model_config(), 64)) != base

    # The SFT runs fine-tune from it through the checkpoint= path: its tokenizer, config, weights.
    fake = FakeTrain()
    use_train(monkeypatch, fake)
    pipeline = Pipeline(config, Options(progress=False), log=logs.append)
    pipeline.run(("pretrain", "plan", "perturb"))
    assert pipeline.inputs().config.checkpoint == str(base) and pipeline.inputs().config.tokenizer == str(base)
    assert len(fake.calls) == 9
    for run_model, init in fake.inits:
        assert run_model.vocab_size == 300 and init is not None
        np.testing.assert_array_equal(init["embed_tokens"]["embedding"], params["embed_tokens"]["embedding"])
    spec = json.loads((tmp_path / "tiny" / "runs" / "base" / "spec.json").read_text())
    assert spec["fingerprint"]["init_checkpoint"]["path"] == str(base.resolve())
    assert spec["fingerprint"]["tokenizer"] != "byte"

    # Validation seeds (#15): another seed selects other examples, and the run starts from the same base model.
    exp = tmp_path / "tiny"
    (exp / "fit.json").write_text((Path(__file__).parent / "fixtures" / "tiny_fit.json").read_text())
    seeded = dataclasses.replace(config, validate=dataclasses.replace(config.validate, seeds=3))
    fake.calls.clear()
    fake.inits.clear()
    Pipeline(seeded, Options(progress=False), log=logs.append).run(("solve", "validate"))
    runs = [name for name, _ in fake.calls]
    assert len(runs) == 2 * 3 and all(name.startswith("validate-") for name in runs)
    for label in ("optimal", "uniform"):
        specs = [json.loads((exp / "runs" / n / "spec.json").read_text()) for n in runs if n.startswith(f"validate-{label}-seed")]
        assert [s["seed"] for s in specs] == [0, 1, 2] and len({json.dumps(s["tokens"]) for s in specs}) == 1
        assert len({s["fingerprint"]["examples"] for s in specs}) == 3  # other examples at each seed
        assert len({json.dumps(s["fingerprint"]["init_checkpoint"], sort_keys=True) for s in specs}) == 1
    assert [cfg.seed for _, cfg in fake.calls] == [0, 0, 1, 1, 2, 2]  # data order follows the seed too
    for run_model, init in fake.inits:  # every validation run starts from the base model's weights
        assert run_model.vocab_size == 300
        jax.tree.map(np.testing.assert_array_equal, init, params)


def test_profile_flag_reaches_the_train_config():
    from mixjax.run import parse_args
    from mixjax.train.loop import TrainConfig

    assert parse_args(["--config", "c.py", "--profile", "--retrain"]).profile
    base = run_train_config(TrainConfig(), max_steps=7, eval_every=2, seed=3, profile=True)
    assert (base.max_steps, base.eval_every, base.seed, base.profile) == (7, 2, 3, True)
    # Full checkpoints keep the base config's cadence: a timer, not one per evaluation (issue 27).
    assert (base.checkpoint_every, base.checkpoint_interval_s) == (None, 1800.0)


def test_job_array_task_trains_one_run(tmp_path):
    fake = FakeTrain()
    assert _main(["--run", "3"], tmp_path, fake) == 0
    plan = json.loads((tmp_path / "tiny" / "plan.json").read_text())["runs"]
    assert [name for name, _ in fake.calls] == [plan[3]["name"]]
    failing = FakeTrain(fail={plan[4]["name"]})
    assert _main(["--run", "4"], tmp_path, failing) == 3


def test_simplex_plot_for_three_domains(tmp_path):
    from types import SimpleNamespace

    from helpers import PUBLISHED_PARAMS

    from mixjax.pipeline.report import plot_simplex

    fit = SimpleNamespace(params=PUBLISHED_PARAMS, domains=("if", "math", "code"))
    plot_simplex(fit, 5.0, [0.4116, 0.2684, 0.32], {"uniform": [1 / 3] * 3, "grid-0.20-0.40-0.40": [0.2, 0.4, 0.4]}, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 10_000


# ---------------------------------------------------------------------- #15: validation seeds; #14 item 4: probe runs


def test_probe_runs_are_validated_at_every_seed_then_settle_the_fit(tmp_path, monkeypatch):
    """The solve stage records the fit's probe mixtures; the validate stage trains them with
    the other mixtures at every seed and hands runs.csv + the probe rows to
    settle_with_probes; the refit, its solve and the choice reach fit_final.json,
    solution_final.json, selection.json and the report."""
    from mixjax.mixing import mixture
    from mixjax.mixing.fit import Fit
    from mixjax.pipeline import stages

    fixture = Fit.from_dict(json.loads((Path(__file__).parent / "fixtures" / "tiny_fit.json").read_text()))
    proposed, settled = [], []

    def disagreement(fit, budget, constraints, key):
        proposed.append((fit.domains, budget, constraints.available.tolist()))
        return {"disagree": True, "message": "", "probes": {"transfer-optimum": [0.3, 0.7]}} if budget == 4000.0 else None

    def settle(fit, train, probes, cfg, key):
        settled.append((fit, train, probes, cfg))
        refit = dataclasses.replace(fixture, params=fixture.params._replace(gamma=fixture.params.gamma * 0.5))
        return refit, {"scores": {"paper": 0.04, "transfer": 0.01}, "chosen": "transfer"}

    monkeypatch.setattr(mixture, "_disagreement", disagreement)
    monkeypatch.setattr(stages, "settle_with_probes", settle)
    fake = FakeTrain()
    args = ["--set", "validate.seeds=2"]
    assert _main(["--stages", "plan,perturb", *args], tmp_path, fake) == 0
    exp = tmp_path / "tiny"
    (exp / "fit.json").write_text((Path(__file__).parent / "fixtures" / "tiny_fit.json").read_text())
    assert _main(["--stages", "solve,validate,report", *args], tmp_path, fake) == 0

    assert [p[1] for p in proposed] == [4000.0, 4000.0]  # the solve of fit.json, then of the refit (one budget each)
    assert json.loads((exp / "solution.json").read_text())["probes"] == {"transfer-optimum": [0.3, 0.7]}
    probe_runs = [name for name, _ in fake.calls if name.startswith("validate-probe-transfer-optimum-")]
    assert len(probe_runs) == 2 and {n.split("-seed")[1][0] for n in probe_runs} == {"0", "1"}
    assert len(fake.calls) == 9 + 3 * 2  # optimal, uniform and the probe, at 2 seeds

    (recorded, train, probes, cfg), = settled
    np.testing.assert_allclose(recorded.params.gamma, fixture.params.gamma)  # settled from the recorded fit.json, not a refit
    assert train.tokens.shape == (9, 2) and probes.tokens.shape == (2, 2)  # the probe at both seeds, as repeats
    selected = [json.loads((exp / "runs" / n / "spec.json").read_text())["selected_tokens"] for n in probe_runs]
    assert sorted(probes.tokens[:, 0].tolist()) == sorted(float(s["instruct"]) for s in selected)
    assert cfg == load_config(TINY).fit
    final = json.loads((exp / "fit_final.json").read_text())
    assert final["params"]["gamma"] == pytest.approx((fixture.params.gamma * 0.5).tolist())
    assert json.loads((exp / "selection.json").read_text()) == {"scores": {"paper": 0.04, "transfer": 0.01}, "chosen": "transfer", "probe_runs": 2}
    before = json.loads((exp / "solution.json").read_text())["weights"]["4000"]
    after = json.loads((exp / "solution_final.json").read_text())["weights"]["4000"]
    assert sum(after) == pytest.approx(1.0) and after != before  # solved again with the refit

    summary = json.loads((exp / "summary.json").read_text())
    assert summary["validation"]["optimal_vs"]["probe-transfer-optimum"]["n"] == 2
    report = (exp / "report.md").read_text()
    assert "chosen: **transfer**" in report and "| paper | 0.04 | +300.0% |" in report
    assert "| refit with the probes | " + " | ".join(f"{x:.3f}" for x in after) + " |" in report


def test_no_probes_no_refit(tmp_path):
    """With the variants in agreement (no probes) nothing is refitted."""
    fake = FakeTrain()
    assert _main(["--stages", "plan,perturb"], tmp_path, fake) == 0
    exp = tmp_path / "tiny"
    (exp / "fit.json").write_text((Path(__file__).parent / "fixtures" / "tiny_fit.json").read_text())
    assert _main(["--stages", "solve,validate,report"], tmp_path, fake) == 0
    assert json.loads((exp / "solution.json").read_text())["probes"] == {}
    assert not (exp / "fit_final.json").exists() and "Probe runs" not in (exp / "report.md").read_text()


def test_plan_records_token_counts_that_solve_and_report_read(tmp_path, monkeypatch):
    """#17 item 3: the plan stage counts each domain's training tokens once (plan.json); solve,
    report and the validation plan read them and validation_plan.json, and never tokenize."""
    from mixjax.data.tokenizer import ByteTokenizer
    from mixjax.pipeline import stages

    calls = []
    encode = ByteTokenizer.encode_conversations
    monkeypatch.setattr(ByteTokenizer, "encode_conversations", lambda self, *a, **k: calls.append(1) or encode(self, *a, **k))
    fake = FakeTrain()
    assert _main(["--stages", "plan,perturb"], tmp_path, fake) == 0
    assert len(calls) == 2  # one batch per domain (all its records), once per process
    exp = tmp_path / "tiny"
    plan = json.loads((exp / "plan.json").read_text())
    assert set(plan["available"]) == {"instruct", "math"} and all(v > 6000 for v in plan["available"].values())
    (exp / "fit.json").write_text((Path(__file__).parent / "fixtures" / "tiny_fit.json").read_text())
    stale = ("fit_final.json", "solution_final.json", "selection.json")  # an earlier solve's probe outcome
    for name in stale:
        (exp / name).write_text("{}")

    calls.clear()
    assert _main(["--stages", "solve"], tmp_path, fake) == 0
    assert calls == []  # solve: constraints from plan.json, validation plan written once
    assert not any((exp / name).exists() for name in stale)  # a new solve is the answer until probes refit it
    recorded = json.loads((exp / "validation_plan.json").read_text())
    assert [r["label"] for r in recorded["runs"]] == ["optimal", "uniform"]
    assert _main(["--stages", "validate"], tmp_path, fake) == 0  # trains: tokenizes
    calls.clear()
    monkeypatch.setattr(stages, "validation_plan", lambda *a, **k: pytest.fail("the validation plan was made again"))
    assert _main(["--stages", "report"], tmp_path, fake) == 0
    assert calls == [] and "| optimal |" in (exp / "report.md").read_text()
    # The report reads what validation recorded (validation.csv), not a plan made anew from the config.
    monkeypatch.undo()
    monkeypatch.setattr(ByteTokenizer, "encode_conversations", lambda self, *a, **k: calls.append(1) or encode(self, *a, **k))
    assert _main(["--stages", "report", "--set", "validate.seeds=2"], tmp_path, fake) == 0
    assert calls == [] and len(json.loads((exp / "validation_plan.json").read_text())["runs"]) == 2
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["validation"]["seeds"] == [0] and set(summary["validation"]["mixtures"]) == {"optimal", "uniform"}


def test_stages_read_what_was_recorded(tmp_path, monkeypatch):
    """The validation plan is made once (by solve), not again after every run; runs.csv is
    written during perturb only; validation.csv records each run's label, seed and weights,
    and the report reads it (not every result.json)."""
    from mixjax.pipeline import stages

    fake = FakeTrain()
    args = ["--set", "validate.seeds=2"]
    assert _main(["--stages", "plan,perturb", *args], tmp_path, fake) == 0
    exp = tmp_path / "tiny"
    (exp / "fit.json").write_text((Path(__file__).parent / "fixtures" / "tiny_fit.json").read_text())
    made = []
    plan = stages.validation_plan
    monkeypatch.setattr(stages, "validation_plan", lambda *a, **k: made.append(1) or plan(*a, **k))
    runs_csv = (exp / "runs.csv").read_text()
    assert _main(["--stages", "solve,validate", *args], tmp_path, fake) == 0
    assert made == [1]  # once, at solve; the validate stage and its after-run tables read validation_plan.json
    assert (exp / "runs.csv").read_text() == runs_csv
    rows = (exp / "validation.csv").read_text().splitlines()
    assert rows[0].split(",")[:5] == ["run", "label", "seed", "weight.instruct", "weight.math"] and len(rows) == 1 + 2 * 2
    for name in json.loads((exp / "validation_plan.json").read_text())["runs"]:
        (exp / "runs" / name["name"] / "result.json").unlink()  # the report must not need them
    (exp / "runs").rename(exp / "runs-moved")
    assert _main(["--stages", "report", *args], tmp_path, fake) == 0
    summary = json.loads((exp / "summary.json").read_text())
    assert set(summary["validation"]["mixtures"]) == {"optimal", "uniform"} and summary["validation"]["seeds"] == [0, 1]
    assert summary["answer"] == "solution.json (the fit of the perturbation runs)"


def test_adaptive_rounds_train_proposed_runs_and_refit(tmp_path):
    """adaptive_rounds=1: after the 4k+1 runs the fit stage trains k proposed mixtures at the
    base run's budget (recorded in adaptive.json), adds them to runs.csv and refits."""
    fake = FakeTrain()
    args = ["--set", "adaptive_rounds=1", "fit.decision.samples=8"]
    assert _main(["--stages", "plan,perturb,fit", *args], tmp_path, fake) == 0
    exp = tmp_path / "tiny"
    adaptive = json.loads((exp / "adaptive.json").read_text())["runs"]
    assert [r["name"] for r in adaptive] == ["adapt0-0", "adapt0-1"]
    assert all(sum(r["tokens"].values()) == 2 * 2000 for r in adaptive)  # the base run's budget
    assert len((exp / "runs.csv").read_text().splitlines()) == 1 + 9 + 2
    assert len(fake.calls) == 9 + 2
    assert _main(["--stages", "fit", *args], tmp_path, fake) == 0  # a rerun trains nothing new
    assert len(fake.calls) == 11


# ---------------------------------------------------------------------- #26: a target that is not a training domain


class FakeTrainWithTarget(FakeTrain):
    """FakeTrain that also measures every validation set that is not a trained domain: a
    target that learns mostly from math."""

    def __call__(self, trainer, cfg, examples, val_sets, workdir, **kwargs):
        super().__call__(trainer, cfg, examples, val_sets, workdir, **kwargs)
        workdir = Path(workdir)
        x = json.loads((workdir / "spec.json").read_text())["selected_tokens"]
        result = json.loads((workdir / "result.json").read_text())
        for name in set(val_sets) - set(x):
            result["best_losses"][name] = 1.2 + 30.0 * (2.0 * x["math"] + 0.3 * x["instruct"] + 1.0) ** -0.3
        write_json_atomic(workdir / "result.json", result)
        self.val_sets = sorted(val_sets)


def test_a_target_that_is_not_a_training_domain_end_to_end(tmp_path):
    """targets=(TargetSpec('held', ...),), objective={'held': 1}: every run evaluates the
    target's validation set, runs.csv and validation.csv carry loss.held, the fit gives it a
    law, the solve minimises it (more math than the default objective gives) and the report
    says so."""
    config = tmp_path / "target_config.py"
    config.write_text(
        "import dataclasses, importlib.util\n"
        "from mixjax.data.domain import TargetSpec\n"
        f"_s = importlib.util.spec_from_file_location('tiny', {str(TINY)!r})\n"
        "_m = importlib.util.module_from_spec(_s); _s.loader.exec_module(_m)\n"
        "config = dataclasses.replace(_m.config, targets=(TargetSpec('held', ('synthetic:code:60',), val_examples=8),),"
        " objective={'held': 1.0})\n"
    )
    fake = FakeTrainWithTarget()
    assert _main(["--stages", "plan,perturb,fit,solve,validate,report"], tmp_path, fake, config=config) == 0
    exp = tmp_path / "tiny"
    assert fake.val_sets == ["held", "instruct", "math"]
    header = (exp / "runs.csv").read_text().splitlines()[0]
    assert header.endswith("loss.instruct,loss.math,loss.held") and "tokens.held" not in header
    fit = json.loads((exp / "fit.json").read_text())
    assert fit["targets"] == ["held"] and [d["name"] for d in fit["diagnostics"]] == ["instruct", "math", "held"]
    w = json.loads((exp / "solution.json").read_text())["weights"]["4000"]
    assert w[1] > 0.6  # the target learns 2/0.3 more from math than from instruct
    assert "loss.held" in (exp / "validation.csv").read_text().splitlines()[0]
    report = (exp / "report.md").read_text()
    assert "Objective (the total below): 1 x held; targets: held" in report and "held meas / pred" in report
    summary = json.loads((exp / "summary.json").read_text())
    optimal = summary["validation"]["mixtures"]["optimal"]
    assert optimal["measured_total"] == pytest.approx(optimal["measured"][2])  # the total is the objective: held's loss


def test_a_swarm_design_is_planned_recorded_and_trained(tmp_path):
    """plan.design='4k+1+swarm': the 4k+1 runs, then 4k+1 swarm runs at the base run's
    budget, recorded with the design in plan.json, the same draws from the same seed."""
    fake = FakeTrain()
    args = ["--set", "plan.design='4k+1+swarm'", "plan.swarm_runs=5"]
    assert _main(["--stages", "plan,perturb", *args], tmp_path, fake) == 0
    plan = json.loads((tmp_path / "tiny" / "plan.json").read_text())
    assert plan["design"]["design"] == "4k+1+swarm" and plan["design"]["runs"] == 9 + 5
    swarm = [r for r in plan["runs"] if r["name"].startswith("swarm-")]
    assert len(swarm) == 5 and all(abs(sum(r["tokens"].values()) - 4000) <= 1 for r in swarm)
    assert len((tmp_path / "tiny" / "runs.csv").read_text().splitlines()) == 1 + 14 and len(fake.calls) == 14
    again = tmp_path / "again"
    assert _main(["--stages", "plan", *args], again, FakeTrain()) == 0
    assert json.loads((again / "tiny" / "plan.json").read_text())["runs"] == plan["runs"]
    assert _main(["--stages", "plan", "--set", "plan.design='grid'"], tmp_path / "bad", FakeTrain()) == 2
