"""Fit + solve wall time: mixjax (jaxopt, vmapped multi-start, float64) vs the published
reference approach (scipy trust-constr, one start per stage), on the same synthetic
4k+1 run tables, for k = 3 and k = 5.

    python benchmarks/fit_solve.py

mixjax figures are reported cold (first call, compilation included) and warm, with the
default own-series fit (alpha at its prior, as the paper) and with cross runs (alpha
fitted). The scipy fit is single-start without leave-one-out; mixjax does 32 starts per
stage and 5 leave-one-out refits per domain in the same time column.
"""

from __future__ import annotations

import itertools
import time

import jax
import numpy as np
from scipy.optimize import Bounds, NonlinearConstraint, minimize

from mixjax.mixing.design import law_losses, perturbation_runs
from mixjax.mixing.fit import FitConfig, fit_law
from mixjax.mixing.law import LawParams
from mixjax.mixing.runs import RunTable, domain_data
from mixjax.mixing.solve import solve_sweep

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

        def stage1(t):
            f = (x + t[1]) ** -t[0]
            df = np.array([f[a] - f[b] for a, b in pairs])
            return np.sum(huber(np.array([np.log(df[p] / df[q]) - np.log(dy[p] / dy[q]) for p, q in quads])))

        beta, _ = minimize(stage1, [0.1, 0.5 * m], method="trust-constr", bounds=Bounds([0, 0], [np.inf, m])).x

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
        res = minimize(objective, np.full(k, 1 / k), method="trust-constr", bounds=Bounds(np.full(k, 1e-9), np.ones(k)),
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}])
        weights.append(res.x)
    return p, np.array(weights)


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'k':>2} {'method':<44} {'wall s':>8} {'max |w - w_true|':>17}")
    for k in (3, 5):
        true = truth(k, rng)
        tokens = perturbation_runs(np.ones(k))
        losses = law_losses(true, tokens) + rng.normal(0, 1e-4, (len(tokens), k))
        domains = domain_data(RunTable(tuple(f"d{i}" for i in range(k)), tokens, losses, tuple(range(len(tokens)))))
        w_true = solve_sweep(true, BUDGETS)
        variants = [
            ("mixjax cold (compile incl.), own series", FitConfig()),
            ("mixjax warm, own series", FitConfig()),
            ("mixjax cold (compile incl.), cross runs", FitConfig(use_cross_runs=True)),
            ("mixjax warm, cross runs", FitConfig(use_cross_runs=True)),
        ]
        for label, cfg in variants:
            t0 = time.perf_counter()
            fit = fit_law(domains, jax.random.key(0), cfg)
            w = solve_sweep(fit.params, BUDGETS)
            print(f"{k:>2} {label:<44} {time.perf_counter() - t0:8.2f} {np.abs(w - w_true).max():17.4f}")
        t0 = time.perf_counter()
        _, w = scipy_reference(domains, BUDGETS)
        print(f"{k:>2} {'scipy trust-constr, 1 start (reference)':<44} {time.perf_counter() - t0:8.2f} {np.abs(w - w_true).max():17.4f}")


if __name__ == "__main__":
    main()
