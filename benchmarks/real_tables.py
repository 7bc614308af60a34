"""Law families on a real public table: RegMix's official 1M split (issues #14 item 7, #26).

    python benchmarks/real_tables.py [--no-gbm] [--repeats 2] [--objective pile_cc] [--candidates 100000]

RegMix (Liu et al. 2024, arXiv 2407.01492; github.com/sail-sg/regmix, MIT license,
Copyright (c) 2024 Sea AI Lab) trained 512 + 256 1M-parameter models on Dirichlet
mixtures of 17 Pile domains, all at one token budget, and measured the validation loss of
13 of them. ``benchmarks/data/regmix_1m_{train,test}.csv`` are its ``data/`` files in
mixjax's run-table format (see ``benchmarks/data/README.md``).

Every law family is fitted on the 512 training runs (:func:`mixjax.mixing.fit.table.fit_families`
then :func:`mixjax.mixing.selection.choose`: :func:`mixjax.mixing.mixture.fit_table` with
the default config; LightGBM out of fold on the same folds) and predicts the
256 test runs; printed: test RMSE and Spearman per domain and of the total (sum over the 13
measured domains), next to LightGBM's (RegMix's regressor: one model per domain on the 17
weights; optional ``lightgbm``) from the same run, and wall times (warm: the last fit in
the process; with the machine's load average and the process CPU time, since timings on a
shared machine compare only within a run).

``--objective NAME`` (a measured domain, e.g. ``pile_cc``, RegMix's own objective; default
``total``, the sum of the 13): the ranking of the runs by it, out of fold on the training
runs and on the test runs: Spearman of the total and of the objective's loss, and the regret
of each model's top pick (the measured loss of the run it ranks best minus the best measured
loss among those runs, nats and relative), next to a random pick's (the mean minus the best).
Then the mixtures each approach would train, with what each model predicts for them (no run
measures them): mixjax's recommendation and law optimum for that objective (what
``python -m mixjax.fit --runs benchmarks/data/regmix_1m_train.csv --budget 1 --objective NAME=1``
solves, on the same fit), and RegMix's procedure: the mean of the top 100 of
``--candidates`` Dirichlet mixtures around the training mixtures' mean (RegMix's
token-distribution prior, of which its runs are draws) under LightGBM's prediction.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import jax
import numpy as np

from mixjax.mixing.fit import FitConfig, predict
from mixjax.mixing.fit.gbm import fit_gbm
from mixjax.mixing.fit.folds import run_folds
from mixjax.mixing.fit.table import fit_families
from mixjax.mixing.mixture import decide
from mixjax.mixing.objective import objective_importance
from mixjax.mixing.runs import RunTable
from mixjax.mixing.selection import choose, score
from mixjax.mixing.solve import Constraints
from mixjax.mixing.stats import spearman

DATA = Path(__file__).parent / "data"
TOTAL = "total"


def load(path: Path) -> RunTable:
    """A run table with zero-token runs and empty (unmeasured) loss cells, as published."""
    rows = list(csv.DictReader(path.open()))
    domains = tuple(c.removeprefix("tokens.") for c in rows[0] if c.startswith("tokens."))
    tokens = np.array([[float(r[f"tokens.{d}"]) for d in domains] for r in rows])
    losses = np.array([[float(r[f"loss.{d}"]) if r[f"loss.{d}"] else np.nan for d in domains] for r in rows])
    return RunTable(domains, tokens, losses, tuple(range(2, len(rows) + 2)), str(path))


def lightgbm_fit(x: np.ndarray, y: np.ndarray):
    """RegMix's regressor (:func:`mixjax.mixing.fit.gbm.fit_gbm`, LightGBM's defaults otherwise)."""
    return fit_gbm(x, y)


def lightgbm_models(train: RunTable, measured: np.ndarray, rows: np.ndarray | None = None) -> dict:
    """One LightGBM model per measured domain on the mixture weights (of ``rows``, default all)."""
    rows = np.ones(len(train.tokens), bool) if rows is None else rows
    models = {}
    for i in np.flatnonzero(measured):
        ok = rows & ~np.isnan(train.losses[:, i])
        models[int(i)] = lightgbm_fit(train.tokens[ok], train.losses[ok, i])
    return models


def law_folds(table: RunTable, key: jax.Array, cfg: FitConfig) -> tuple[np.ndarray, int]:
    """The folds :func:`fit_families` scores the laws on (its derivation from ``key``), so
    LightGBM's out-of-fold predictions are paired with the laws'."""
    key_fold, _ = jax.random.split(key)
    return run_folds(len(table.tokens), cfg.folds, np.random.default_rng(np.asarray(jax.random.key_data(key_fold)).ravel()))


def lightgbm_oof(train: RunTable, measured: np.ndarray, folds: np.ndarray, num_folds: int) -> np.ndarray:
    """(R, D) out-of-fold LightGBM predictions of the measured domains."""
    out = np.full((len(train.tokens), len(train.domains)), np.nan)
    for f in range(num_folds):
        held = folds == f
        out[held] = lightgbm_predict(lightgbm_models(train, measured, ~held), train.tokens[held], len(train.domains))
    return out[:, measured]


def lightgbm_predict(models: dict, tokens: np.ndarray, num_outputs: int) -> np.ndarray:
    """(R, P) predicted losses, NaN for the outputs without a model."""
    out = np.full((len(tokens), num_outputs), np.nan)
    for i, model in models.items():
        out[:, i] = model.predict(tokens)
    return out


def objective_of(losses: np.ndarray, col: int | None) -> np.ndarray:
    """(R,) the objective of (R, D) losses over the measured domains: column ``col``, or the total."""
    return losses.sum(axis=1) if col is None else losses[:, col]


def pick_regret(measured: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(nats, relative) regret of the run ``predicted`` ranks best, by its ``measured`` loss."""
    best = float(measured.min())
    regret = float(measured[np.argmin(predicted)]) - best
    return regret, regret / best


def ranking(measured: np.ndarray, predicted: np.ndarray, col: int | None) -> dict[str, float]:
    """Spearman of the total and of the objective, the top pick's regret under each
    (measured, predicted: (R, D) over the measured domains; ``col``: the objective's column)."""
    out = {}
    for name, c in ((TOTAL, None), ("objective", col)):
        m, p = objective_of(measured, c), objective_of(predicted, c)
        regret, rel = pick_regret(m, p)
        out |= {f"{name} spearman": spearman(m, p), f"{name} regret": regret, f"{name} regret rel": rel}
    return out


def random_pick(measured: np.ndarray, col: int | None) -> dict[str, float]:
    """A random pick's expected regret (the mean minus the best) under the total and the objective."""
    out = {}
    for name, c in ((TOTAL, None), ("objective", col)):
        m = objective_of(measured, c)
        out |= {f"{name} spearman": float("nan"), f"{name} regret": float(m.mean() - m.min()),
                f"{name} regret rel": float((m.mean() - m.min()) / m.min())}
    return out


def print_ranking(title: str, objective: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}: Spearman, and the top pick's regret in nats (relative)")
    print(f"{'model':22s} {'total Spearman':>14s} {f'{objective} Spearman':>20s} {'total regret':>20s} {f'{objective} regret':>20s}")
    for name, r in rows.items():
        regret = lambda k: f"{r[f'{k} regret']:.4f} ({r[f'{k} regret rel']:.2%})"
        print(f"{name:22s} {r['total spearman']:14.4f} {r['objective spearman']:20.4f} {regret(TOTAL):>20s} {regret('objective'):>20s}")


def dirichlet_candidates(prior: np.ndarray, count: int, rng: np.random.Generator, strengths=(0.1, 5.0)) -> np.ndarray:
    """(count, k) mixtures Dirichlet(s k prior), s log-uniform in ``strengths`` (RegMix's
    sampler around the token-distribution prior; mixjax.mixing.design.SWARM_STRENGTHS)."""
    k = len(prior)
    s = np.exp(rng.uniform(np.log(strengths[0]), np.log(strengths[1]), (count, 1)))
    g = rng.gamma(np.maximum(s * k * prior[None], 1e-3))
    return g / g.sum(axis=1, keepdims=True)


def regmix_pick(models: dict, prior: np.ndarray, num_outputs: int, col: int | None, measured_idx: np.ndarray,
                count: int, top: int = 100, seed: int = 0) -> np.ndarray:
    """RegMix's choice: the mean of the ``top`` of ``count`` candidates under LightGBM's predicted objective."""
    candidates = dirichlet_candidates(prior, count, np.random.default_rng(seed))
    predicted = lightgbm_predict(models, candidates, num_outputs)[:, measured_idx]
    return candidates[np.argsort(objective_of(predicted, col))[:top]].mean(axis=0)


def law_picks(fit, objective: str) -> tuple[np.ndarray, np.ndarray]:
    """(recommendation, law optimum) at the runs' budget (1) for ``objective`` (what
    ``mixjax.fit --budget 1 --objective NAME=1`` solves, on this fit; key 0: its --seed)."""
    k = len(fit.domains)
    weights = None if objective == TOTAL else {objective: 1.0}
    importance = objective_importance(fit.outputs, k, fit.has_law, weights)
    b = decide(fit, [1.0], Constraints.create(k, importance=importance), jax.random.key(0), grid_step=None).budgets[0]
    return np.asarray(b.weights), np.asarray(b.optimum)


def print_picks(picks: dict[str, np.ndarray], predictors: dict, domains, measured_idx, col: int | None, objective: str) -> None:
    """Each approach's mixture with each model's predicted objective (no run measures them)."""
    names = list(predictors)
    print(f"\nmixtures to train for {objective} (predicted {objective} loss, nats; not measured):")
    print(f"{'mixture':22s} " + " ".join(f"{n[:16]:>16s}" for n in names) + "  largest weights")
    for label, w in picks.items():
        cells = [float(objective_of(f(w[None])[:, measured_idx], col)[0]) for f in predictors.values()]
        top = ", ".join(f"{domains[i]} {w[i]:.3f}" for i in np.argsort(-w)[:4])
        print(f"{label:22s} " + " ".join(f"{c:16.4f}" for c in cells) + f"  {top}")


def timed_fits(train: RunTable, cfg: FitConfig, repeats: int):
    """(families, chosen fit, wall seconds per fit, CPU seconds per fit)."""
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        families = fit_families(train, jax.random.key(0), cfg)
        fit = choose(families)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return families, fit, times, cpu


def print_test_scores(predictions: dict, test: RunTable, measured: np.ndarray, names: list[str]) -> None:
    target = test.losses[:, measured]
    print("\ntest:")
    print(f"{'model':22s} {'total Spearman':>14s} {'total RMSE':>10s} {'RMSE':>7s} {'domain Spearman':>15s}")
    for name, pred in predictions.items():
        s = score(target, pred[:, measured])
        print(f"{name:22s} {s['total_spearman']:14.4f} {s['total_rmse']:10.3f} {s['rmse']:7.3f} {s['domain_spearman']:15.4f}")
    print("\nper domain (test RMSE / Spearman):")
    print(f"{'domain':18s} " + " ".join(f"{n[:17]:>17s}" for n in predictions))
    for name in names:
        i = test.domains.index(name)
        cells = []
        for pred in predictions.values():
            rmse = float(np.sqrt(np.mean((pred[:, i] - test.losses[:, i]) ** 2)))
            cells.append(f"{rmse:7.3f} / {spearman(test.losses[:, i], pred[:, i]):6.3f}")
        print(f"{name:18s} " + " ".join(f"{c:>17s}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-gbm", action="store_true", help="skip LightGBM")
    parser.add_argument("--repeats", type=int, default=2, help="fits per process (the last is timed warm)")
    parser.add_argument("--objective", default=TOTAL, help="a measured domain (e.g. pile_cc) or 'total' (default)")
    parser.add_argument("--candidates", type=int, default=100_000, help="Dirichlet candidates of RegMix's procedure")
    args = parser.parse_args()
    train, test = load(DATA / "regmix_1m_train.csv"), load(DATA / "regmix_1m_test.csv")
    use_gbm = not args.no_gbm
    if use_gbm:
        try:
            import lightgbm  # noqa: F401
        except ImportError:
            print("lightgbm not installed: no reference rows")
            use_gbm = False
    cfg = FitConfig()
    families, fit, times, cpu = timed_fits(train, cfg, args.repeats)
    load_avg = os.getloadavg()
    measured = fit.has_law
    measured_idx = np.flatnonzero(measured)
    names = [d for d, m in zip(train.domains, measured) if m]
    if args.objective != TOTAL and args.objective not in names:
        parser.error(f"--objective {args.objective}: not a measured domain ({', '.join(names)}) or {TOTAL}")
    col = None if args.objective == TOTAL else names.index(args.objective)
    predictions = {}
    for family in fit.scores:
        if family == "gbm":
            continue
        predictions[f"{family}{' (default)' if family == fit.family else ''}"] = predict(fit, test.tokens, family=family)
    gbm_seconds = gbm_cpu = gbm_oof_seconds = float("nan")
    if use_gbm:
        folds, num_folds = law_folds(train, jax.random.key(0), cfg)
        assert num_folds == families.num_folds
        start = time.perf_counter()
        oof_gbm = lightgbm_oof(train, measured, folds, num_folds)
        gbm_oof_seconds = time.perf_counter() - start
        start, start_cpu = time.perf_counter(), time.process_time()
        models = lightgbm_models(train, measured)
        predictions["lightgbm"] = lightgbm_predict(models, test.tokens, len(fit.outputs))
        gbm_seconds, gbm_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(f"RegMix 1M: {len(train.tokens)} training -> {len(test.tokens)} test mixtures, {len(train.domains)} domains,"
          f" {measured.sum()} measured; load average {load_avg[0]:.2f} ({os.cpu_count()} CPUs)")
    print(f"default fit (all families + {fit.validation['folds']}-fold out-of-fold scoring): "
          f"{times[0]:.1f} s first (compile), {times[-1]:.2f} s warm ({cpu[-1]:.2f} CPU-s);"
          f" LightGBM fit+predict {gbm_seconds:.2f} s ({gbm_cpu:.2f} CPU-s), its {fit.validation['folds']} folds {gbm_oof_seconds:.1f} s")
    print(fit.notes[0])
    print("\nout-of-fold (training table):")
    print(fit.score_table())
    print_test_scores(predictions, test, measured, names)

    # The ranking by the objective: out of fold on the training runs, then on the test runs.
    oof_rows = {f"{f}{' (default)' if f == fit.family else ''}": ranking(train.losses[:, measured], ff.oof, col)
                for f, ff in families.fits.items()}
    if use_gbm:
        oof_rows["lightgbm"] = ranking(train.losses[:, measured], oof_gbm, col)
    oof_rows["random pick"] = random_pick(train.losses[:, measured], col)
    print_ranking(f"out-of-fold on the {len(train.tokens)} training runs ({families.num_folds} folds), objective {args.objective}",
                  args.objective, oof_rows)
    test_rows = {name: ranking(test.losses[:, measured], pred[:, measured], col) for name, pred in predictions.items()}
    test_rows["random pick"] = random_pick(test.losses[:, measured], col)
    print_ranking(f"test ({len(test.tokens)} runs), objective {args.objective}", args.objective, test_rows)

    # What each approach would train next (predicted only).
    start = time.perf_counter()
    recommended, optimum = law_picks(fit, args.objective)
    picks = {"mixjax recommended": recommended, "mixjax law optimum": optimum}
    predictors = {f"law ({fit.family})": lambda w: predict(fit, w)}
    solve_seconds = time.perf_counter() - start
    if use_gbm:
        start = time.perf_counter()
        prior = train.tokens.mean(axis=0) / train.tokens.mean(axis=0).sum()
        picks[f"RegMix top-100/{args.candidates // 1000}k"] = regmix_pick(models, prior, len(fit.outputs), col, measured_idx,
                                                                         args.candidates)
        predictors["lightgbm"] = lambda w: lightgbm_predict(models, w, len(fit.outputs))
        print(f"\nRegMix's procedure: {time.perf_counter() - start:.1f} s; the law's decision {solve_seconds:.1f} s;"
              f" load average {os.getloadavg()[0]:.2f}")
    best_train = int(np.argmin(objective_of(train.losses[:, measured], col)))
    picks["best training run"] = train.tokens[best_train] / train.tokens[best_train].sum()
    picks["uniform"] = np.full(len(train.domains), 1.0 / len(train.domains))
    print_picks(picks, predictors, train.domains, measured_idx, col, args.objective)
    print(f"(the best training run's measured {args.objective} loss:"
          f" {float(objective_of(train.losses[:, measured], col)[best_train]):.4f})")


if __name__ == "__main__":
    main()
