import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env

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
    ref = _pipeline(reference)
    proc = _pipeline(killed)
    deadline = time.time() + 300
    while len(_finished(killed / "tiny")) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # let the next run get under way, so it is interrupted mid-training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _finished(killed / "tiny")
    assert 3 <= len(before) < 9, before

    rerun = _pipeline(killed)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()[-3000:]
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]
    after = _finished(killed / "tiny")
    assert len(after) == 9
    assert all(after[name] == mtime for name, mtime in before.items())  # finished runs not retrained
    log = (killed / "tiny" / "log.txt").read_text()
    assert f"{len(before)} already finished" in log

    weights = [json.loads((d / "tiny" / "solution.json").read_text())["weights"]["4000"] for d in (killed, reference)]
    np.testing.assert_allclose(weights[0], weights[1], atol=1e-9)
    table = [(d / "tiny" / "runs.csv").read_text() for d in (killed, reference)]
    assert table[0] == table[1]
