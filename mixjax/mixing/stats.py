"""Rank statistics of predictions against measurements."""

from __future__ import annotations

import numpy as np
import scipy.stats


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for fewer than 3 points or a
    constant input."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))) or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(a, b).statistic)
