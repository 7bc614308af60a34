"""Probe runs that settle disagreement between fit variants (issue #14 item 4).

STUB on the ``validation`` branch: the fit helper's module replaces it at merge. The
pipeline only relies on these two signatures.
"""

from __future__ import annotations

import jax
import numpy as np

from mixjax.mixing.fit import FitConfig, FitResult, fit_law
from mixjax.mixing.runs import RunTable, domain_data
from mixjax.mixing.solve import Constraints


def propose_probes(fit: FitResult, budget: float, constraints: Constraints, key: jax.Array) -> dict[str, np.ndarray]:
    """Probe mixtures (name -> weights in fit.domains order) that discriminate the fit variants within
    out-of-fold noise of the best one; {} when the variants agree."""
    return {}


def settle_with_probes(train: RunTable, probes: RunTable, cfg: FitConfig, key: jax.Array) -> tuple[FitResult, dict]:
    """Refit the candidate variants on `train`, score each on the `probes` runs, choose, refit the chosen one
    on train + probes. Returns (final FitResult, report dict: {"scores": {variant: probe RMSE}, "chosen": str})."""
    return fit_law(domain_data(train), key, cfg), {"scores": {}, "chosen": "default"}
