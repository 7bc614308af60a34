"""Folds of whole runs: the one fold assignment every out-of-fold score uses."""

from __future__ import annotations

import numpy as np

from mixjax.mixing.fit.config import FoldConfig


def run_folds(num_runs: int, cfg: FoldConfig, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Fold of every run: leave-one-run-out up to ``cfg.max_leave_one_out`` runs, else
    ``cfg.kfold`` random folds of whole runs (no draw from ``rng`` in the first case).

    Returns:
      (fold id per run (R,), number of folds); (zeros, 0) when ``cfg.enabled`` is False.
    """
    if not cfg.enabled:
        return np.zeros(num_runs, int), 0
    if num_runs <= cfg.max_leave_one_out:
        return np.arange(num_runs), num_runs
    folds = min(cfg.kfold, num_runs)
    return rng.permutation(num_runs) % folds, folds
