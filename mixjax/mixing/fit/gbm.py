"""LightGBM on the mixture proportions: RegMix's regressor (Liu et al. 2024, arXiv
2407.01492; ``LGBMRegressor(n_estimators=1000, learning_rate=0.01, num_leaves=31)``), a
reference the law families are scored against out-of-fold, never solved. Optional
``lightgbm`` (the ``bench`` extra), called through its own API (its sklearn wrapper needs
scikit-learn)."""

from __future__ import annotations

import numpy as np


def fit_gbm(x: np.ndarray, y: np.ndarray, seed: int = 0, min_child_samples: int = 20):
    """A LightGBM booster of ``y`` (R,) on the features ``x`` (R, k), one thread (two
    threads ran 17x slower on a loaded 2-core machine: OpenMP spinning). Raises ImportError
    without ``lightgbm``."""
    import lightgbm

    params = {"objective": "regression", "learning_rate": 0.01, "num_leaves": 31, "min_data_in_leaf": int(min_child_samples),
              "seed": int(seed), "verbose": -1, "num_threads": 1}
    return lightgbm.train(params, lightgbm.Dataset(x, y, params={"verbose": -1}), num_boost_round=1000)


def gbm_oof(tokens: np.ndarray, losses: np.ndarray, measured_cols: np.ndarray, folds: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """Out-of-fold predictions (R, D) of the measured outputs (``measured_cols`` (P,)) from
    one model per output and fold on the proportions of ``tokens`` (R, P); a fold's model
    never sees its runs."""
    r = tokens / tokens.sum(axis=1, keepdims=True)
    d_idx = np.flatnonzero(measured_cols)
    oof = np.full((len(r), len(d_idx)), np.nan)
    for col, d in enumerate(d_idx):
        ok = ~np.isnan(losses[:, d])
        for f in range(num_folds):
            train, test = ok & (folds != f), folds == f
            # min_child_samples: LightGBM's default 20 makes no split at all on small tables.
            model = fit_gbm(r[train], losses[train, d], seed, max(2, min(20, int(train.sum()) // 5)))
            oof[test, col] = model.predict(r[test])
    return oof
