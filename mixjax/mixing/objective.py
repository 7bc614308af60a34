"""What the solve minimises: a weighted sum of the laws' losses, over the training domains
and the targets (losses no run trains on; :class:`mixjax.mixing.runs.RunTable`).

The paper's objective (arXiv 2508.11953, Sec. 2) is ``sum_i s_i L_i(w, N)`` over the
training domains, ``s_i = 1``; an objective here is any ``sum_o s_o L_o(w, N)`` over the
outputs ``o`` (the k domains, then the T targets): RegMix's Pile-CC loss alone, olmix's
task-family weights, a held-out benchmark's loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def objective_importance(outputs: Sequence[str], num_domains: int, has_law: np.ndarray,
                         objective: Mapping[str, float] | None = None) -> np.ndarray:
    """The objective's weights ``s`` (P,) over ``outputs`` (domains, then targets).

    Args:
      outputs: the laws' names, the ``num_domains`` training domains first.
      has_law: (P,) bool: the outputs with a law (measured).
      objective: {output: weight >= 0}; the outputs it leaves out weigh 0. None: the
        paper's objective, every measured training domain at 1 and every target at 0.
    Raises:
      ValueError: an unknown name, a negative or non-finite weight, an output without a
        law (never measured) given a weight, or weights summing to 0 (the default's too:
        no measured domain).
    """
    has_law = np.asarray(has_law, bool)
    if objective is None:
        s = np.where(np.arange(len(outputs)) < num_domains, has_law, False).astype(np.float64)
        if not s.sum() > 0:
            raise ValueError("objective: no training domain has a measured loss, so the default objective (their sum) is"
                             f" empty; give one, e.g. --objective {outputs[-1]}=1")
        return s
    s = np.zeros(len(outputs))
    for name, weight in objective.items():
        if name not in outputs:
            raise ValueError(f"objective: unknown domain or target {name!r} (have: {', '.join(outputs)})")
        i = list(outputs).index(name)
        if not (np.isfinite(weight) and weight >= 0):
            raise ValueError(f"objective: {name}={weight}: a weight must be a finite number >= 0")
        if weight > 0 and not has_law[i]:
            raise ValueError(f"objective: {name} was never measured (no loss.{name} values), so it has no law to minimise; drop it")
        s[i] = float(weight)
    if not s.sum() > 0:
        raise ValueError("objective: every weight is 0; give at least one domain or target a positive weight")
    return s
