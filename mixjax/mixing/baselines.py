"""Baseline mixtures a user expects next to the optimum: uniform, proportional, grid."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.cache import small_program_jit
from mixjax.mixing.law import LawParams, total_loss


def uniform_weights(num_domains: int) -> np.ndarray:
    return np.full(num_domains, 1.0 / num_domains)


def proportional_weights(available_tokens) -> np.ndarray:
    """Weights proportional to each domain's available tokens (natural mixture)."""
    available = np.asarray(available_tokens, np.float64)
    if not np.all(np.isfinite(available)) or np.any(available <= 0):
        raise ValueError(f"available tokens must be positive and finite, got {available.tolist()}")
    return available / available.sum()


MAX_LATTICE_POINTS = 20_000  # above this, grid_candidates samples the simplex instead


def lattice_size(num_domains: int, step: float) -> int:
    """Points of the simplex lattice at ``step``: C(1/step + k - 1, k - 1).

    Raises:
      ValueError: if ``step`` does not divide 1.
    """
    units = round(1.0 / step)
    if units < 1 or not np.isclose(units * step, 1.0):
        raise ValueError(f"grid step must divide 1, got {step}")
    return math.comb(units + num_domains - 1, num_domains - 1)


def simplex_grid(num_domains: int, step: float, lower=None, upper=None, max_points: int = 10 * MAX_LATTICE_POINTS) -> np.ndarray:
    """Every mixture whose weights are multiples of ``step`` (a simplex lattice), in bounds.

    Shape (G, k) with G = C(1/step + k - 1, k - 1) before bounds, e.g. 231 for k=3, step 0.05.

    Raises:
      ValueError: if ``step`` does not divide 1, or the lattice has more than ``max_points``
        points (3.1M at k = 9, step 0.05: use :func:`grid_candidates` or a coarser step).
    """
    size = lattice_size(num_domains, step)
    if size > max_points:
        raise ValueError(
            f"the simplex lattice at step {step:g} over {num_domains} domains has {size:,} points"
            f" (more than {max_points:,}); use a coarser step"
        )
    units = round(1.0 / step)
    # Stars and bars: choose k-1 cut points among units + k - 1 slots.
    rows = []
    for cuts in itertools.combinations(range(units + num_domains - 1), num_domains - 1):
        edges = (-1, *cuts, units + num_domains - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(num_domains)])
    grid = np.asarray(rows, np.float64) / units
    keep = np.ones(len(grid), bool)
    if lower is not None:
        keep &= np.all(grid >= np.asarray(lower) - 1e-12, axis=1)
    if upper is not None:
        keep &= np.all(grid <= np.asarray(upper) + 1e-12, axis=1)
    return grid[keep]


def grid_candidates(
    num_domains: int, step: float, lower=None, upper=None, *, seed: int = 0, max_points: int = MAX_LATTICE_POINTS,
) -> tuple[np.ndarray, str]:
    """The grid baseline's candidate mixtures, bounded in time and memory at any k.

    The simplex lattice at ``step`` while it has at most ``max_points`` points; above
    that, ``max_points`` mixtures drawn from a flat Dirichlet(1) (seeded) plus the k
    vertices, filtered by the bounds. Returns (points (G, k), a one-line description).
    """
    size = lattice_size(num_domains, step)
    if size <= max_points:
        return simplex_grid(num_domains, step, lower, upper), f"simplex lattice at step {step:g} ({size:,} points)"
    rng = np.random.default_rng(seed)
    points = np.concatenate([np.eye(num_domains), rng.dirichlet(np.ones(num_domains), max_points)])
    keep = np.ones(len(points), bool)
    if lower is not None:
        keep &= np.all(points >= np.asarray(lower) - 1e-12, axis=1)
    if upper is not None:
        keep &= np.all(points <= np.asarray(upper) + 1e-12, axis=1)
    return points[keep], (
        f"{max_points:,} random Dirichlet(1) mixtures and the {num_domains} vertices (the lattice at step"
        f" {step:g} would have {size:,} points)"
    )


_grid_values = small_program_jit(jax.vmap(total_loss, in_axes=(0, None, None, None)))


def grid_search(params: LawParams, budget: float, grid: np.ndarray, importance=None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted objective of every grid mixture; returns (best weights, objective per row)."""
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        importance = np.ones(grid.shape[1]) if importance is None else np.asarray(importance, np.float64)
        values = np.asarray(_grid_values(jnp.asarray(grid), params, jnp.float64(budget), jnp.asarray(importance)))
    return grid[int(np.argmin(values))], values


def _violations(w: np.ndarray, budget: float, constraints, tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(below lower, above upper, beyond availability ``w_i N > D_i``), each shaped like ``w``."""
    lower = np.asarray(constraints.lower, np.float64)
    upper = np.asarray(constraints.upper, np.float64)
    available = np.asarray(constraints.available, np.float64)
    return w < lower - tol, w > upper + tol, w * budget > available * (1 + tol) + tol


def feasible_mask(weights, budget: float, constraints, tol: float = 1e-9) -> np.ndarray:
    """Which mixtures satisfy the constraints at ``budget``: bool (m,) for weights (m, k).

    Feasible: on the simplex, ``lower <= w <= upper`` and availability ``w_i N <= D_i``.
    The pipeline skips infeasible grid points and baselines with it.
    """
    w = np.atleast_2d(np.asarray(weights, np.float64))
    below, above, beyond = _violations(w, budget, constraints, tol)
    return ~np.any(below | above | beyond, axis=1) & (np.abs(w.sum(axis=1) - 1.0) <= 1e-6)


def infeasibility(weights, budget: float, constraints, domains, tol: float = 1e-9) -> str:
    """Why one mixture is infeasible (empty string if it is feasible)."""
    w = np.asarray(weights, np.float64)
    below, above, beyond = _violations(w, budget, constraints, tol)
    why = []
    for i, name in enumerate(domains):
        if below[i]:
            why.append(f"{name} {w[i]:.3g} < lower {float(constraints.lower[i]):.3g}")
        if above[i]:
            why.append(f"{name} {w[i]:.3g} > upper {float(constraints.upper[i]):.3g}")
        if beyond[i]:
            why.append(f"{name} needs {w[i] * budget:.4g} tokens, {float(constraints.available[i]):.4g} available")
    return "; ".join(why)
