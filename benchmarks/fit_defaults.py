"""Which fit settings predict a measured validation grid best: the numbers behind the fit's
defaults (the law families and the paper's two-stage procedure with each stage-1 statistic
and alpha mode).

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
import itertools
from pathlib import Path

import jax
import numpy as np
from scipy.stats import spearmanr

from mixjax.mixing.fit import FitConfig, TwoStageConfig, predict
from mixjax.mixing.mixture import fit_table
from mixjax.mixing.runs import read_run_table

VARIANTS = {"families, auto (default)": FitConfig(), "family paper (joint fit)": FitConfig(family="paper"),
            "family transfer": FitConfig(family="transfer")} | {
    f"two-stage, {procedure} stage 1, alpha {alpha}": FitConfig(family="paper", paper_fit="two-stage", two_stage=TwoStageConfig(procedure=procedure, alpha_mode=alpha))
    for procedure, alpha in itertools.product(("mixjax", "paper"), ("prior", "fitted", "auto"))
}


def score(experiment: Path, cfg: FitConfig) -> tuple[float, float, float]:
    """(Spearman of predicted vs measured total, regret of the law's pick, mean abs rel. error)
    over the validation runs (every mixture at every seed)."""
    fit = fit_table(read_run_table(experiment / "runs.csv"), jax.random.key(0), cfg)
    validation = read_run_table(experiment / "validation.csv")
    predicted = np.nansum(predict(fit, validation.tokens, validation.domains), axis=1)
    measured = validation.losses.sum(axis=1)
    pick = int(np.argmin(predicted))
    regret = (measured[pick] - measured.min()) / measured.min()
    return float(spearmanr(predicted, measured)[0]), float(regret), float(np.mean(np.abs(predicted / measured - 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+", type=Path)
    args = parser.parse_args()
    print("| experiment | fit | Spearman | regret of the law's pick | mean abs rel. error |")
    print("|---|---|---|---|---|")
    for experiment in args.experiments:
        for name, cfg in VARIANTS.items():
            rho, regret, error = score(experiment, cfg)
            print(f"| {experiment.name} | {name} | {rho:.3f} | {regret:.2%} | {error:.2%} |")


if __name__ == "__main__":
    main()
