"""The paper's 4k+1 perturbation experiments (arXiv 2508.11953; README, "The pipeline", plan):
base run + each domain at each scale."""

from __future__ import annotations

import numpy as np

PAPER_SCALES = (0.25, 0.5, 2.0, 3.0)


def perturbation_runs(base_tokens, scales=PAPER_SCALES) -> np.ndarray:
    """Token counts (R, k) of the 1 + k * len(scales) runs; row 0 is the base run.

    Row 1 + i * len(scales) + j has domain i at ``scales[j] * base_tokens[i]`` and every
    other domain at its base size.
    """
    base = np.asarray(base_tokens, np.float64)
    if np.any(base <= 0):
        raise ValueError(f"base tokens must be positive, got {base.tolist()}")
    if any(s <= 0 or s == 1.0 for s in scales):
        raise ValueError(f"scales must be positive and differ from 1 (the base run), got {scales}")
    rows = [base]
    for i in range(len(base)):
        for s in scales:
            row = base.copy()
            row[i] = s * base[i]
            rows.append(row)
    return np.stack(rows)
