"""Issue 25 item 8: an error from a dependency ends in one line that names the path or field
and the way out (a full disk during an orbax checkpoint, a Llama-3 rope_scaling without
original_max_position_embeddings); the traceback only with --debug or in the log."""

import errno
import logging
import sys
import threading
from pathlib import Path

import pytest

from mixjax.model.hf import UnsupportedCheckpoint, config_from_hf
from mixjax.pipeline import stages
from mixjax.run import main

TINY = Path(__file__).parent / "fixtures" / "tiny_config.py"
CKPT = "/data/exp/tiny/runs/base/checkpoints"
# What orbax raises from wait_until_finished when the disk filled during an async save.
ORBAX_FULL = (
    f'RESOURCE_EXHAUSTED: Error writing local file "{CKPT}/6.orbax-checkpoint-tmp/params.orbax-checkpoint-tmp/_sharding":'
    f' Failed writing: "{CKPT}/6.orbax-checkpoint-tmp/params.orbax-checkpoint-tmp/_sharding" [OS error 28: No space left on device]'
)
WAY_OUT = "free space there or give the experiment another disk (--set workdir=<dir>)"


def test_a_full_disk_names_the_directory_and_the_way_out():
    from mixjax.cli import dependency_error

    assert dependency_error(ValueError(ORBAX_FULL)).startswith(f"no space left on the device of {CKPT} (")
    assert WAY_OUT in dependency_error(OSError(errno.ENOSPC, "No space left on device", "/data/exp/x.json"))
    wrapped = OSError(errno.ENOSPC, "No space left on device")  # no path of its own: the chain's first one
    wrapped.__context__ = ValueError(ORBAX_FULL)
    assert dependency_error(wrapped).startswith(f"no space left on the device of {CKPT} (")


def test_out_of_memory_is_no_full_disk():
    from mixjax.cli import dependency_error

    assert dependency_error(ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB")) is None


def _fail_like_orbax(monkeypatch):
    def run(self, stages_):
        try:  # orbax logs each failed background write, with its traceback, through absl
            raise ValueError(ORBAX_FULL)
        except ValueError:
            logging.getLogger("absl").exception("_SignalingThread.run() raised an exception")
        raise ValueError(ORBAX_FULL)

    monkeypatch.setattr(stages.Pipeline, "run", run)


@pytest.fixture
def restore_logging():
    """After a failure main leaves the dependencies' reporting routed to the log (the CLI's
    process ends there): put it back for the other tests."""
    loggers = [logging.getLogger(n) for n in ("absl", "asyncio")]
    saved = [(list(g.handlers), g.propagate) for g in loggers]
    hooks = sys.excepthook, threading.excepthook, sys.unraisablehook, logging.raiseExceptions
    yield
    for g, (handlers, propagate) in zip(loggers, saved):
        g.handlers[:], g.propagate = handlers, propagate
    sys.excepthook, threading.excepthook, sys.unraisablehook, logging.raiseExceptions = hooks


def test_run_prints_one_line_and_keeps_the_traceback_in_the_log(tmp_path, monkeypatch, capsys, restore_logging):
    _fail_like_orbax(monkeypatch)
    assert main(["--config", str(TINY), "--no-progress", "--set", f"workdir='{tmp_path}'"]) == 2  # main: ~870 lines
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"mixjax.run: error: no space left on the device of {CKPT} (")
    log = next((tmp_path / "tiny" / "logs").glob("run-*.log"))
    assert f"traceback in {log}" in err
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "_SignalingThread.run() raised an exception" in text


def test_debug_prints_the_traceback(tmp_path, monkeypatch, capsys, restore_logging):
    _fail_like_orbax(monkeypatch)
    assert main(["--config", str(TINY), "--no-progress", "--debug", "--set", f"workdir='{tmp_path}'"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("mixjax.run: error: no space left")


def test_an_unknown_error_is_one_line_exit_1(tmp_path, monkeypatch, capsys, restore_logging):
    monkeypatch.setattr(stages.Pipeline, "run", lambda self, s: {}["nothing"])
    assert main(["--config", str(TINY), "--no-progress", "--set", f"workdir='{tmp_path}'"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mixjax.run: error: KeyError: missing key 'nothing' (traceback in ")


def test_llama3_rope_scaling_without_original_max_position_names_the_field():
    hf = {
        "model_type": "llama", "vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    }
    with pytest.raises(UnsupportedCheckpoint, match=r"^config.json: rope_scaling of rope_type llama3 lacks 'original_max_position_embeddings'; add it"):
        config_from_hf(hf)  # main: a bare KeyError


def test_bad_input_leaves_the_logging_as_it_was(tmp_path, monkeypatch, capsys):
    from mixjax.pipeline.config import ConfigError

    absl = logging.getLogger("absl")
    before = list(absl.handlers), absl.propagate, sys.excepthook, threading.excepthook
    monkeypatch.setattr(stages.Pipeline, "run", lambda self, s: (_ for _ in ()).throw(ConfigError("x: bad")))
    assert main(["--config", str(TINY), "--no-progress", "--set", f"workdir='{tmp_path}'"]) == 2
    assert capsys.readouterr().err.strip() == "mixjax.run: error: x: bad"
    assert (list(absl.handlers), absl.propagate, sys.excepthook, threading.excepthook) == before
