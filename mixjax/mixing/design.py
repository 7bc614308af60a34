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


DESIGNS = ("4k+1", "swarm", "4k+1+swarm")
SWARM_STRENGTHS = (0.1, 5.0)  # RegMix's range of Dirichlet concentration multipliers


def swarm_size(num_domains: int) -> int:
    """Runs in a swarm by default: as many as the 4k+1 design (so the designs cost the same)."""
    return 4 * num_domains + 1


def swarm_mixtures(prior, num_runs: int, rng: np.random.Generator, *, max_weight=None,
                   strengths: tuple[float, float] = SWARM_STRENGTHS, min_distance: float = 0.05,
                   max_draws: int = 200_000) -> np.ndarray:
    """A Dirichlet swarm of mixtures around ``prior`` (RegMix, arXiv 2407.01492, Sec. 3;
    olmix's swarms): each draw is ``Dirichlet(s * k * prior)`` with a strength ``s``
    log-uniform in ``strengths`` (small: near a vertex, large: near the prior).

    Args:
      prior: (k,) the mixture the swarm is centred on (e.g. the available tokens' shares), > 0.
      num_runs: mixtures to return.
      rng: the draws' generator (reproducible from its seed).
      max_weight: (k,) the largest weight each domain can supply (its available tokens /
        the run's budget); draws above it are rejected.
      min_distance: a draw within this half-L1 distance of a kept one is a near-duplicate
        and rejected (halved whenever the draws run out before ``num_runs``).
    Returns:
      (num_runs, k) mixtures, each on the simplex.
    Raises:
      ValueError: a prior that is not positive, or no feasible draws (``max_weight`` sums below 1).
    """
    prior = np.asarray(prior, np.float64)
    prior = prior / prior.sum()
    k = len(prior)
    cap = np.ones(k) if max_weight is None else np.minimum(np.asarray(max_weight, np.float64), 1.0)
    if np.any(prior <= 0):
        raise ValueError(f"the swarm's prior must be positive, got {prior.tolist()}")
    if cap.sum() < 1.0:
        raise ValueError(f"no mixture fits the available tokens: the largest weights sum to {cap.sum():.3g} < 1")
    kept: list[np.ndarray] = []
    distance, drawn = float(min_distance), 0
    while len(kept) < num_runs:
        batch = 4096
        s = np.exp(rng.uniform(np.log(strengths[0]), np.log(strengths[1]), batch))
        draws = np.stack([rng.dirichlet(np.maximum(si * k * prior, 1e-3)) for si in s])
        drawn += batch
        for w in draws[np.all(draws <= cap + 1e-12, axis=1)]:
            if all(0.5 * np.abs(w - v).sum() >= distance for v in kept):
                kept.append(w)
                if len(kept) == num_runs:
                    break
        if drawn >= max_draws and len(kept) < num_runs:
            if not kept:
                raise ValueError(f"no feasible mixture in {drawn:,} draws: the available tokens leave almost no room"
                                 f" (the largest weights sum to {cap.sum():.3g}); give more data or lower the budget")
            distance, drawn = distance / 2, 0
            if distance < 1e-6:
                raise ValueError(f"only {len(kept)} distinct feasible mixtures found of {num_runs}; loosen the availability or ask for fewer runs")
    return np.stack(kept)


def design_runs(design: str, names, base_tokens, available, rng: np.random.Generator, scales=PAPER_SCALES,
                swarm_runs: int | None = None, **swarm) -> tuple[np.ndarray, list[str]]:
    """The token counts (R, k) and names of a plan's runs.

    ``"4k+1"``: :func:`perturbation_runs`; ``"swarm"``: a swarm (:func:`swarm_mixtures`,
    ``swarm_runs`` or :func:`swarm_size` runs) at the base run's budget ``sum(base_tokens)``
    around the available tokens' shares, each domain within its available tokens;
    ``"4k+1+swarm"``: both; ``swarm``: :func:`swarm_mixtures`' options. Run names (from the
    domains' ``names``): "base", "<domain>-x<scale>", "swarm-<j>". Raises ValueError for
    an unknown design.
    """
    base = np.asarray(base_tokens, np.float64)
    k = len(base)
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose from {DESIGNS}")
    tokens, runs = np.zeros((0, k)), []
    if design != "swarm":
        tokens = perturbation_runs(base, scales)
        runs = ["base"] + [f"{name}-x{s:g}" for name in names for s in scales]
    if design != "4k+1":
        budget = base.sum()
        available = np.asarray(available, np.float64)
        w = swarm_mixtures(available / available.sum(), swarm_runs or swarm_size(k), rng, max_weight=available / budget, **swarm)
        tokens = np.concatenate([tokens, w * budget])
        runs += [f"swarm-{j:03d}" for j in range(len(w))]
    return tokens, runs
