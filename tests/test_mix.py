import json
from pathlib import Path

import numpy as np

from mixjax.mix import main
from mixjax.mixing.fit import FitResult
from mixjax.mixing.law import LawParams

CONFIG = str(Path(__file__).parent / "fixtures" / "tiny_config.py")


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _counts(rows):
    out = {}
    for r in rows:
        out[r["domain"]] = out.get(r["domain"], 0) + len(r["input_ids"])
    return out


def test_mix_exact_budget_seeded_and_deterministic(tmp_path, capsys):
    out = tmp_path / "mixed.jsonl"
    args = ["--config", CONFIG, "--budget", "3000", "--out", str(out), "--weights", "instruct=0.7", "math=0.3"]
    assert main(args) == 0
    rows = _read(out)
    longest = max(len(r["input_ids"]) for r in rows)
    counts = _counts(rows)
    assert abs(counts["instruct"] - 2100) <= longest and abs(counts["math"] - 900) <= longest
    assert all(len(r["input_ids"]) == len(r["loss_mask"]) and r["text"] for r in rows)
    first = out.read_bytes()
    assert main(args) == 0 and out.read_bytes() == first  # deterministic
    assert main([*args[:-3], "--weights", "instruct=0.7", "math=0.3", "--seed", "1"]) == 0
    assert out.read_bytes() != first  # seeded


def test_mix_from_fit_json_solves_at_the_budget(tmp_path, capsys):
    params = LawParams(*(np.array(v, np.float64) for v in ([0.3, 0.3], [1.0, 1.0], [0.1, 0.1], [0.5, 0.5], [1.0, 1.0])))
    fit = FitResult(domains=("instruct", "math"), params=params, diagnostics=())
    (tmp_path / "fit.json").write_text(json.dumps(fit.to_dict()))
    out = tmp_path / "mixed.jsonl"
    assert main(["--config", CONFIG, "--budget", "2000", "--out", str(out), "--fit", str(tmp_path / "fit.json")]) == 0
    counts = _counts(_read(out))  # symmetric law: half and half
    assert abs(counts["instruct"] - 1000) <= 80 and abs(counts["math"] - 1000) <= 80


def test_mix_bad_weights_exit_2(tmp_path, capsys):
    assert main(["--config", CONFIG, "--budget", "100", "--out", str(tmp_path / "x.jsonl"), "--weights", "nope=1"]) == 2
    assert "unknown domain" in capsys.readouterr().err
