"""Validation over seeds: the spread of a mixture's measured loss and the paired comparison
of two mixtures trained at the same seeds.

A validation seed changes which examples a run selects and their order (the base model
stays the same); two mixtures trained at the same seed share nothing else, so the
comparison is paired by seed: d_s = loss(optimal, s) - loss(baseline, s), and its mean has
the two-sided Student-t interval mean +- t_{(1+c)/2, n-1} sd / sqrt(n) (scipy.stats.t).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import stats

Verdict = Literal["better", "indistinguishable", "worse", "n/a (1 seed)"]


def mean_sd(values: Sequence[float] | np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (ddof 1; NaN for a single value) along ``axis``."""
    values = np.asarray(values, np.float64)
    n = values.shape[axis]
    sd = values.std(axis=axis, ddof=1) if n > 1 else np.full(np.mean(values, axis=axis).shape, np.nan)
    return values.mean(axis=axis), sd


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over the seeds both were measured at (same units as the losses, nats)."""

    n: int  # seeds
    mean: float
    sd: float  # sample sd of the per-seed differences (NaN when n = 1)
    low: float | None  # the t interval (None when n = 1)
    high: float | None
    confidence: float
    relative: float  # mean / mean of b
    verdict: Verdict  # for a: "better" when the whole interval is below 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """The paired difference ``a - b`` (lower loss is better) with its Student-t interval.

    ``a[s]`` and ``b[s]`` are the losses at the same seed s (shape (n,), n >= 1). The verdict
    for ``a`` is "better" when the interval lies below 0, "worse" when above, else
    "indistinguishable"; with one seed there is no interval. ValueError when the lengths
    differ or are 0.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired values need equal non-empty 1-d shapes, got {a.shape} and {b.shape}")
    d = a - b
    n = d.size
    mean = float(d.mean())
    relative = mean / float(b.mean())
    if n == 1:
        return PairedDifference(1, mean, float("nan"), None, None, confidence, relative, "n/a (1 seed)")
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / np.sqrt(n)
    low, high = mean - half, mean + half
    verdict: Verdict = "better" if high < 0 else "worse" if low > 0 else "indistinguishable"
    return PairedDifference(n, mean, sd, low, high, confidence, relative, verdict)
