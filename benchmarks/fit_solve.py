"""Whole-process wall time of the fit + solve: mixjax vs the published reference approach.

    python benchmarks/fit_solve.py [K ...]   (default: 3 5)

For synthetic 4k+1 run tables (k = 3 and k = 5, noise 1e-4) it times, each as a separate
Python process (imports included):

- ``mixjax cold``: ``python -m mixjax.fit --runs T --budget 5 20 200`` (default flags:
  the law families scored leave-one-run-out, started from the paper's two-stage fit; the
  report's solve, Jacobians and convexity check at each budget) with an empty
  compilation cache: what a first-time user on a new machine waits for;
- ``mixjax warm``: the same command again, compilation cache warm;
- ``scipy reference``: the released code's approach (trust-constr stage 1 on the ratio
  of logs, trust-constr stage 2, one start each, no leave-one-out or bootstrap; SLSQP
  solve from uniform).

The machine's load average is printed with the table: timings on a shared machine are
only comparable within one run.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import csv
from collections import namedtuple

import numpy as np
from scipy.optimize import Bounds, NonlinearConstraint, minimize

# The reference process imports numpy and scipy only (no jax), as the released code.
LawParams = namedtuple("LawParams", "beta c gamma alpha e")
Series = namedtuple("Series", "in_domain loss other")

BUDGETS = [5.0, 20.0, 200.0]


def truth(k: int, rng) -> LawParams:
    return LawParams(
        beta=rng.uniform(0.2, 0.4, k), c=rng.uniform(0.8, 1.2, k), gamma=rng.uniform(0.1, 0.4, k),
        alpha=rng.uniform(0.3, 0.7, k), e=rng.uniform(0.9, 1.3, k),
    )


def scipy_reference(domains, budgets):
    """Two-stage trust-constr fit (one start) + trust-constr simplex solve, as in the paper's code."""
    pairs = [(0, 2), (0, 3), (0, 4), (1, 3), (1, 4), (2, 4)]
    quads = list(itertools.combinations(range(len(pairs)), 2))
    huber = lambda r, d=1e-3: np.where(np.abs(r) <= d, 0.5 * r * r, d * (np.abs(r) - 0.5 * d))
    params = []
    for d in domains:
        x, y, m = d.in_domain, d.loss, d.other
        dy = np.array([y[a] - y[b] for a, b in pairs])

        usable = [(p, q) for p, q in quads if dy[p] > 0 and dy[q] > 0]

        def stage1(t):  # the reference's ratio of logs
            f = (x + t[1]) ** -t[0]
            df = np.maximum(np.array([f[a] - f[b] for a, b in pairs]), 1e-300)
            return np.sum(huber(np.array([np.log(df[p]) / np.log(df[q]) - np.log(dy[p]) / np.log(dy[q]) for p, q in usable])))

        beta, _ = minimize(stage1, [0.5, 0.5], method="trust-constr", bounds=Bounds([0, 0], [np.inf, m])).x

        def stage2(t):
            c, g, a, e = np.exp(t[0]), np.exp(t[1]), t[2], np.exp(t[3])
            return np.sum(huber(c * (x + g * m**a) ** -beta + e - y))

        transfer = NonlinearConstraint(lambda t: np.exp(t[1]) * m ** t[2] - m, -np.inf, 0)
        t = minimize(stage2, [0.0, np.log(0.2), 0.5, 0.0], method="trust-constr", constraints=[transfer],
                     bounds=Bounds([-np.inf, -np.inf, 0, -np.inf], [np.inf, np.inf, 1, np.inf])).x
        params.append((beta, np.exp(t[0]), np.exp(t[1]), t[2], np.exp(t[3])))
    p = LawParams(*map(np.array, zip(*params)))
    k = len(domains)
    weights = []
    for n in budgets:
        objective = lambda w: np.sum(p.c * (w * n + p.gamma * ((1 - w) * n) ** p.alpha) ** -p.beta + p.e)
        res = minimize(objective, np.full(k, 1 / k), method="SLSQP", bounds=[(1e-9, 1.0)] * k,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}])
        weights.append(res.x)
    return p, np.array(weights)


def _wall(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0, done.stdout


def read_series(path: str) -> list[Series]:
    """Each domain's own series (base run + runs changing only it) from a CSV run table."""
    rows = list(csv.DictReader(open(path)))
    names = [c.removeprefix("tokens.") for c in rows[0] if c.startswith("tokens.")]
    tokens = np.array([[float(r[f"tokens.{n}"]) for n in names] for r in rows])
    losses = np.array([[float(r[f"loss.{n}"] or "nan") for n in names] for r in rows])
    base = np.median(tokens, axis=0)
    out = []
    for i in range(len(names)):
        rows_i = [r for r in range(len(rows)) if np.allclose(np.delete(tokens[r], i), np.delete(base, i))]
        order = sorted(rows_i, key=lambda r: tokens[r, i])
        out.append(Series(tokens[order, i], losses[order, i], float(base.sum() - base[i])))
    return out


def reference_main(path: str) -> None:
    """``--reference TABLE``: the scipy reference on a run table, weights printed."""
    _, w = scipy_reference(read_series(path), BUDGETS)
    print(np.round(w, 4).tolist())


def main(ks=(3, 5)) -> None:
    from mixjax.mixing.design import perturbation_runs
    from mixjax.mixing.law import evaluate, token_losses
    from mixjax.mixing.runs import write_run_table

    rng = np.random.default_rng(0)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'k':>2} {'method':<40} {'wall s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for k in ks:
            true = truth(k, rng)
            tokens = perturbation_runs(np.ones(k))
            losses = evaluate(token_losses, true, tokens) + rng.normal(0, 1e-4, (len(tokens), k))
            table = Path(tmp) / f"runs{k}.csv"
            write_run_table(table, tuple(f"d{i}" for i in range(k)), tokens, losses)
            cache = Path(tmp) / f"cache{k}"
            fit_cmd = [sys.executable, "-m", "mixjax.fit", "--runs", str(table), "--budget", *map(str, BUDGETS)]
            cold, _ = _wall(fit_cmd, dict(env, MIXJAX_CACHE_DIR=str(cache)))
            warm, _ = _wall(fit_cmd, dict(env, MIXJAX_CACHE_DIR=str(cache)))
            ref, _ = _wall([sys.executable, __file__, "--reference", str(table)], env)
            print(f"{k:>2} {'mixjax cold (empty compilation cache)':<40} {cold:8.2f}")
            print(f"{k:>2} {'mixjax warm (second process)':<40} {warm:8.2f}   {warm / ref:.2f} x scipy")
            print(f"{k:>2} {'scipy reference (trust-constr + SLSQP)':<40} {ref:8.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--reference":
        reference_main(sys.argv[2])
    else:
        main(tuple(int(k) for k in sys.argv[1:]) or (3, 5))
