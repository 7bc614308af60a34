"""Which fit settings predict a measured validation grid best: the numbers behind the fit's
defaults (stage-1 procedure x how alpha is chosen).

    python benchmarks/fit_defaults.py experiments/demo [experiments/demo_seed1 ...]

For each experiment directory (one run with ``configs/demo_grid.py``: ``runs.csv`` from the
perturbation runs, ``validation.csv`` with the measured grid and baselines), it fits the
law on ``runs.csv`` with every variant and prints, over the measured mixtures:

- Spearman correlation of predicted vs measured total validation loss (how well the law
  ranks mixtures);
- the regret of the mixture the law ranks first, (measured total of the law's pick - best
  measured total) / best measured total;
- the mean absolute relative error of the predicted totals.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import jax
import numpy as np
from scipy.stats import spearmanr

from mixjax.mixing.fit import FitConfig, fit_law
from mixjax.mixing.law import total_loss
from mixjax.mixing.runs import domain_data, read_run_table

VARIANTS = list(itertools.product(("mixjax", "paper"), ("prior", "fitted", "auto")))


def validation_table(path: Path, domains) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, losses) of the validation runs; grid corners have zero-token domains, which
    the run-table reader (for fitting) rejects."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    column = lambda prefix: np.array([[float(r[f"{prefix}.{d}"]) for d in domains] for r in rows])
    return column("tokens"), column("loss")


def score(experiment: Path, procedure: str, alpha_mode: str) -> tuple[float, float, float]:
    fit = fit_law(
        domain_data(read_run_table(experiment / "runs.csv")), jax.random.key(0),
        FitConfig(procedure=procedure, alpha_mode=alpha_mode),
    )
    tokens, losses = validation_table(experiment / "validation.csv", fit.domains)
    budget = tokens.sum(axis=1)
    weights = tokens / budget[:, None]
    measured = losses.sum(axis=1)
    with jax.enable_x64(True):
        predicted = np.array([float(total_loss(w, fit.params, n)) for w, n in zip(weights, budget)])
    pick = int(np.argmin(predicted))
    regret = (measured[pick] - measured.min()) / measured.min()
    return float(spearmanr(predicted, measured)[0]), float(regret), float(np.mean(np.abs(predicted / measured - 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+", type=Path)
    args = parser.parse_args()
    print("| experiment | procedure | alpha | Spearman | regret of the law's pick | mean abs rel. error |")
    print("|---|---|---|---|---|---|")
    for experiment in args.experiments:
        for procedure, alpha_mode in VARIANTS:
            rho, regret, error = score(experiment, procedure, alpha_mode)
            print(f"| {experiment.name} | {procedure} | {alpha_mode} | {rho:.3f} | {regret:.2%} | {error:.2%} |")


if __name__ == "__main__":
    main()
