"""The tables and flags whose ``mixjax.fit`` answers are pinned (tests/fixtures/pinned_fits.json).

Synthetic tables are made here in plain numpy (no mixjax code), so the pinned numbers
depend only on the fit. ``python tests/pinned_fits.py`` records the answers again (only
when a change of the fit's numbers is intended).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).parent / "fixtures" / "pinned_fits.json"


def _law(beta, c, gamma, alpha, e, tokens):
    tokens = np.asarray(tokens, np.float64)
    other = tokens.sum(axis=1, keepdims=True) - tokens
    return c * (tokens + gamma * other**alpha) ** (-beta) + e


def _design(base):
    base = np.asarray(base, np.float64)
    rows = [base]
    for i in range(len(base)):
        for s in (0.25, 0.5, 2.0, 3.0):
            row = base.copy()
            row[i] = s * base[i]
            rows.append(row)
    return np.stack(rows)


def _write(path: Path, names, tokens, losses) -> None:
    lines = [",".join([f"tokens.{d}" for d in names] + [f"loss.{d}" for d in names if d != "web"])]
    for t, l in zip(tokens, losses):
        lines.append(",".join([repr(float(v)) for v in t] + [repr(float(v)) for d, v in zip(names, l) if d != "web"]))
    path.write_text("\n".join(lines) + "\n")


def tables(directory: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (CSV path, budgets); the synthetic ones written under ``directory``."""
    rng = np.random.default_rng(20261206)
    out = {"worked_example": (ROOT / "examples" / "paper_worked_example.csv", ["5", "20", "200"])}
    p3 = dict(beta=np.array([0.3, 0.25, 0.35]), c=np.array([1.0, 0.8, 1.2]), gamma=np.array([0.3, 0.2, 0.4]),
              alpha=np.array([0.5, 0.5, 0.5]), e=np.array([1.2, 1.0, 0.9]))
    t3 = _design([6000.0] * 3)
    l3 = _law(**p3, tokens=t3) * (1 + rng.normal(0, 3e-3, t3.shape))
    _write(directory / "k3.csv", "abc", t3, l3)
    out["k3_4k1"] = (directory / "k3.csv", ["18000", "60000"])
    p5 = dict(beta=rng.uniform(0.1, 0.6, 5), c=rng.uniform(0.5, 2.0, 5), gamma=rng.uniform(0.05, 0.5, 5),
              alpha=rng.uniform(0.3, 0.7, 5), e=rng.uniform(0.8, 1.6, 5))
    t5 = _design([2.0, 1.0, 3.0, 1.5, 0.5])
    l5 = _law(**p5, tokens=t5) * (1 + rng.normal(0, 1e-2, t5.shape))
    _write(directory / "k5.csv", list("vwxyz"), t5, l5)
    out["k5_4k1"] = (directory / "k5.csv", ["8", "80"])
    swarm = rng.dirichlet(np.ones(3), 40) * 30000.0
    ls = _law(**p3, tokens=swarm) * (1 + rng.normal(0, 3e-3, swarm.shape))
    _write(directory / "swarm.csv", "abc", swarm, ls)
    out["k3_swarm"] = (directory / "swarm.csv", ["30000"])
    tu = np.concatenate([t3, np.full((len(t3), 1), 3000.0)], axis=1)
    _write(directory / "unmeasured.csv", ["a", "b", "c", "web"], tu, np.concatenate([l3, np.full((len(t3), 1), np.nan)], 1))
    out["unmeasured"] = (directory / "unmeasured.csv", ["20000"])
    return out


FLAGS = {
    "default": [],
    "paper": ["--family", "paper"],
    "transfer": ["--family", "transfer"],
    "two-stage": ["--family", "two-stage"],
    "two-stage-paper-prior": ["--family", "two-stage", "--procedure", "paper", "--alpha-mode", "prior"],
}


def cases():
    """(table name, flags name) of every pinned answer (flags beyond the default on the 4k+1 tables)."""
    for table in ("worked_example", "k3_4k1", "k5_4k1", "k3_swarm", "unmeasured"):
        for flags in FLAGS:
            if flags == "default" or table in ("worked_example", "k3_4k1") or (table == "k5_4k1" and flags == "two-stage"):
                yield table, flags


def answer(path: Path, budgets: list[str], flags: list[str]) -> dict:
    """``mixjax.fit --json``'s optimum of the chosen law and its predicted losses (the
    recommendation on top of it is mixjax.mixing.decision's)."""
    from mixjax.fit import main

    import tempfile

    buf = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(buf):
        config = Path(tmp) / "fit-config.json"  # the optimum does not depend on the plausible laws: none drawn
        config.write_text(json.dumps({"decision": {"samples": 0}}))
        code = main(["--runs", str(path), "--budget", *budgets, "--json", "--grid-step", "0", "--fit-config", str(config), *flags])
    assert code == 0, code
    out = json.loads(buf.getvalue())
    return {"weights": out["optimum"], "predicted_losses": out["optimum_predicted_losses"]}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = tables(Path(tmp))
        record = {f"{t}/{f}": answer(paths[t][0], paths[t][1], FLAGS[f]) for t, f in cases()}
    PINNED.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {len(record)} answers to {PINNED}", file=sys.stderr)
