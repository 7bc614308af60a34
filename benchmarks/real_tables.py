"""Law families on a real public table: RegMix's official 1M split (issue #14, item 7).

    python benchmarks/real_tables.py [--no-gbm] [--repeats 2]

RegMix (Liu et al. 2024, arXiv 2407.01492; github.com/sail-sg/regmix, MIT license,
Copyright (c) 2024 Sea AI Lab) trained 512 + 256 1M-parameter models on Dirichlet
mixtures of 17 Pile domains, all at one token budget, and measured the validation loss of
13 of them. ``benchmarks/data/regmix_1m_{train,test}.csv`` are its ``data/`` files in
mixjax's run-table format (see ``benchmarks/data/README.md``).

Every law family is fitted on the 512 training runs (:func:`mixjax.mixing.mixture.fit_table`,
default config: out-of-fold scoring included) and predicts the 256 test runs; printed:
test RMSE and Spearman per domain and of the total (sum over the 13 measured domains),
next to LightGBM's (RegMix's regressor: one model per domain on the 17 weights; optional
``lightgbm``) from the same run, and wall times (warm: the second fit in the process;
with the machine's load average and the process CPU time, since timings on a shared machine
compare only within a run).
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
from mixjax.mixing.mixture import fit_table
from mixjax.mixing.selection import score
from mixjax.mixing.stats import spearman
from mixjax.mixing.runs import RunTable

DATA = Path(__file__).parent / "data"


def load(path: Path) -> RunTable:
    """A run table with zero-token runs and empty (unmeasured) loss cells, as published."""
    rows = list(csv.DictReader(path.open()))
    domains = tuple(c.removeprefix("tokens.") for c in rows[0] if c.startswith("tokens."))
    tokens = np.array([[float(r[f"tokens.{d}"]) for d in domains] for r in rows])
    losses = np.array([[float(r[f"loss.{d}"]) if r[f"loss.{d}"] else np.nan for d in domains] for r in rows])
    return RunTable(domains, tokens, losses, tuple(range(2, len(rows) + 2)), str(path))


def lightgbm_predict(train: RunTable, test: RunTable, measured: np.ndarray) -> np.ndarray:
    """RegMix's regressor: one LightGBM model per measured domain on the mixture weights."""
    import lightgbm

    out = np.full(test.losses.shape, np.nan)
    for i in np.flatnonzero(measured):
        ok = ~np.isnan(train.losses[:, i])
        model = lightgbm.LGBMRegressor(n_estimators=1000, learning_rate=0.01, num_leaves=31, random_state=0,
                                       verbose=-1, n_jobs=os.cpu_count())
        model.fit(train.tokens[ok], train.losses[ok, i])
        out[:, i] = model.predict(test.tokens)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-gbm", action="store_true", help="skip LightGBM")
    parser.add_argument("--repeats", type=int, default=2, help="fits per process (the last is timed warm)")
    args = parser.parse_args()
    train, test = load(DATA / "regmix_1m_train.csv"), load(DATA / "regmix_1m_test.csv")
    cfg = FitConfig()
    times, cpu = [], []
    for rep in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fit = fit_table(train, jax.random.key(0), cfg)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    load_avg = os.getloadavg()
    measured = fit.has_law
    names = [d for d, m in zip(train.domains, measured) if m]
    predictions = {}
    for family in fit.scores:
        if family == "gbm":
            continue
        predictions[f"{family}{' (default)' if family == fit.family else ''}"] = predict(fit, test.tokens, family=family)
    gbm_seconds = gbm_cpu = float("nan")
    if not args.no_gbm:
        try:
            start, start_cpu = time.perf_counter(), time.process_time()
            predictions["lightgbm"] = lightgbm_predict(train, test, measured)
            gbm_seconds, gbm_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        except ImportError:
            print("lightgbm not installed: no reference row")
    target = test.losses[:, measured]
    print(f"RegMix 1M: {len(train.tokens)} training -> {len(test.tokens)} test mixtures, {len(train.domains)} domains,"
          f" {measured.sum()} measured; load average {load_avg[0]:.2f} ({os.cpu_count()} CPUs)")
    print(f"default fit (all families + {fit.validation['folds']}-fold out-of-fold scoring): "
          f"{times[0]:.1f} s first (compile), {times[-1]:.2f} s warm ({cpu[-1]:.2f} CPU-s);"
          f" LightGBM fit+predict {gbm_seconds:.2f} s ({gbm_cpu:.2f} CPU-s)")
    print(fit.notes[0])
    print("\nout-of-fold (training table):")
    print(fit.score_table())
    print("\ntest:")
    print(f"{'model':22s} {'total Spearman':>14s} {'total RMSE':>10s} {'RMSE':>7s} {'domain Spearman':>15s}")
    for name, pred in predictions.items():
        s = score(target, pred[:, measured])
        print(f"{name:22s} {s['total_spearman']:14.4f} {s['total_rmse']:10.3f} {s['rmse']:7.3f} {s['domain_spearman']:15.4f}")
    print("\nper domain (test RMSE / Spearman):")
    print(f"{'domain':18s} " + " ".join(f"{n[:17]:>17s}" for n in predictions))
    for col, name in enumerate(names):
        i = train.domains.index(name)
        cells = []
        for pred in predictions.values():
            rmse = float(np.sqrt(np.mean((pred[:, i] - test.losses[:, i]) ** 2)))
            cells.append(f"{rmse:7.3f} / {spearman(test.losses[:, i], pred[:, i]):6.3f}")
        print(f"{name:18s} " + " ".join(f"{c:>17s}" for c in cells))


if __name__ == "__main__":
    main()
