import json
from pathlib import Path

import numpy as np
import pytest
from helpers import PUBLISHED_WEIGHTS

from mixjax.fit import main

EXAMPLE = Path(__file__).parents[1] / "examples" / "paper_worked_example.csv"


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    """The CLI turns the compilation cache on; keep the test process off the user's cache."""
    monkeypatch.setenv("MIXJAX_CACHE_DIR", "")


def test_cli_json_on_worked_example(capsys):
    assert main(["--runs", str(EXAMPLE), "--budget", "5", "20", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["domains"] == ["if", "math", "code"]
    assert set(out["params"]["if"]) == {"beta", "c", "gamma", "alpha", "e"}
    assert set(out["weights"]) == {"5", "20", "200"}
    for w in out["weights"].values():
        assert sum(w) == pytest.approx(1.0) and min(w) >= 0
    assert set(out["diagnostics"]["domains"]) == {"if", "math", "code"}
    assert out["baselines"]["20"]["uniform"]["objective"] >= out["diagnostics"]["budgets"]["20"]["objective"]


def test_cli_human_table(capsys):
    assert main(["--runs", str(EXAMPLE), "--budget", "20"]) == 0
    out = capsys.readouterr().out
    assert "Budget N = 20" in out and "recommended" in out and "law optimum" in out and "uniform" in out


def _write(tmp_path, text, name="runs.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BASE = "tokens.a,tokens.b,loss.a,loss.b\n1,1,2.0,2.0\n0.5,1,2.1,\n2,1,1.9,\n1,0.5,,2.1\n1,2,,1.9\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (BASE.replace("loss.b\n", "loss.b,loss.c\n"), "target loss.c (no tokens.c column) is empty in every run"),
        (BASE.replace("loss.b\n1,1,2.0,2.0\n", "loss.b,loss.c\n1,1,2.0,2.0,3\n"), "target c has 1 runs with a measured loss"),
        (BASE.replace("0.5,1,2.1", "-0.5,1,2.1"), "runs.csv:3: tokens.a must be a finite number >= 0"),
        (BASE.replace("0.5,1,2.1", "0,0,2.1"), "runs.csv:3: the run trains no tokens"),
        (BASE.replace("2,1,1.9", "2,1,nan"), "runs.csv:4: loss.a is NaN"),
        (BASE.replace("2,1,1.9,\n", ""), "domain a has 2 runs with a measured loss; the fit needs >= 3"),
        ("tokens.a,tokens.b,loss.a,loss.b\n1,0.5,,2.1\n1,2,,1.9\n0.5,1,2.1,\n2,1,1.9,\n", "domain a has 2 runs with a measured loss"),
        ("loss.a\n1\n", "no tokens.<domain> columns"),
        (BASE.replace("2,1,1.9", "2,1,abc"), "loss.a is not a number"),
        ("tokens.a,loss.a\n1,2.0\n0.5,2.1\n2,1.9\n", "runs.csv: 1 domain (a): a mixture needs at least 2"),
    ],
)
def test_cli_bad_tables_exit_2_with_one_line(tmp_path, capsys, text, message):
    assert main(["--runs", _write(tmp_path, text), "--budget", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_bad_jsonl_line(tmp_path, capsys):
    path = _write(tmp_path, '{"tokens.a": 1, "loss.a": 2}\n{oops\n', "runs.jsonl")
    assert main(["--runs", path, "--budget", "5"]) == 2
    assert "runs.jsonl:2: invalid JSON" in capsys.readouterr().err


def test_cli_jsonl_equals_csv(tmp_path, capsys):
    import csv

    rows = list(csv.DictReader(EXAMPLE.read_text().splitlines()))
    jsonl = "\n".join(json.dumps({k: (float(v) if v else None) for k, v in r.items()}) for r in rows)
    assert main(["--runs", _write(tmp_path, jsonl, "runs.jsonl"), "--budget", "20", "--json", "--grid-step", "0"]) == 0
    from_jsonl = json.loads(capsys.readouterr().out)["weights"]["20"]
    assert main(["--runs", str(EXAMPLE), "--budget", "20", "--json", "--grid-step", "0"]) == 0
    np.testing.assert_allclose(from_jsonl, json.loads(capsys.readouterr().out)["weights"]["20"], atol=1e-9)


def test_cli_availability_error(capsys):
    assert main(["--runs", str(EXAMPLE), "--budget", "200", "--available", "if=10", "math=10", "code=10"]) == 2
    assert "exceeds what the domains can supply" in capsys.readouterr().err


def test_published_weights_constant_is_consistent():
    assert all(abs(sum(w) - 1) < 1e-3 for w in PUBLISHED_WEIGHTS.values())


def test_cli_export_and_poorly_determined_message(capsys):
    import yaml

    assert main(["--runs", str(EXAMPLE), "--budget", "20", "--export", "levanter"]) == 0
    weights = yaml.safe_load(capsys.readouterr().out)["data"]["train_weights"]
    assert set(weights) == {"if", "math", "code"} and sum(weights.values()) == pytest.approx(1.0, abs=1e-9)
    assert main(["--runs", str(EXAMPLE), "--budget", "5", "20", "200", "--family", "two-stage", "--bootstrap", "8"]) == 0
    out = capsys.readouterr().out
    # The worked example's optimum is flat: bootstrap intervals far wider than 0.1.
    assert "POORLY DETERMINED OPTIMUM" in out and "gain of the optimum over uniform" in out
    assert "out-of-fold" in out and "Spearman" in out


def test_cli_infeasible_uniform_is_not_compared(capsys):
    assert main(["--runs", str(EXAMPLE), "--budget", "20", "--available", "if=4", "math=100", "code=100",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "uniform" not in out["baselines"]["20"] and "uniform" in out["infeasible_baselines"]["20"]
    assert out["grid_skipped"]["20"] > 0


def test_compilation_cache_dir(tmp_path, monkeypatch):
    from mixjax.cache import cache_dir

    monkeypatch.setenv("MIXJAX_CACHE_DIR", "")
    assert cache_dir() is None
    monkeypatch.setenv("MIXJAX_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MIXJAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "mixjax" / "jax"
