"""Differentiable analysis of the optimal weights.

- Jacobians of the optimal weights w.r.t. every fitted parameter and the budget, by
  implicit differentiation through the solver's fixed point (no unrolling).
- A numerical convexity check of the objective on the simplex (the paper proves
  convexity under its constraints; we verify it for the fitted parameters).
- Bootstrap confidence intervals: solve for each refitted parameter sample.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.cache import cached_call, small_program_jit
from mixjax.mixing.law import AnyLawParams, LawParams, total_loss
from mixjax.mixing.solve import Constraints, solve_weights


def _x64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


_jacobians = small_program_jit(jax.jacobian(solve_weights, argnums=(0, 1)))


def weight_jacobians(params: AnyLawParams, budget: float, constraints: Constraints) -> tuple[AnyLawParams, np.ndarray]:
    """d w* / d theta for each law field (each (k, k): [weight, domain]) and d w* / d N (k,)."""
    with jax.enable_x64(True):
        d_params, d_budget = cached_call("jacobians", _jacobians, (_x64(params), jnp.float64(budget), _x64(constraints)))
        return jax.tree.map(np.asarray, d_params), np.asarray(d_budget)


def tangent_basis(num_domains: int) -> np.ndarray:
    """Orthonormal basis (k, k-1) of the simplex tangent space {v : sum v = 0}."""
    q, _ = np.linalg.qr(np.eye(num_domains) - 1.0 / num_domains)
    return q[:, : num_domains - 1]


@small_program_jit
def _tangent_hessian_eigenvalues(points, params, budget, importance):
    basis = jnp.asarray(tangent_basis(points.shape[-1]), points.dtype)
    hess = jax.vmap(jax.hessian(total_loss), in_axes=(0, None, None, None))(points, params, budget, importance)
    return jnp.linalg.eigvalsh(basis.T @ hess @ basis)


@dataclasses.dataclass(frozen=True)
class ConvexityReport:
    min_eigenvalue: float  # over all checked points, tangent-space Hessian
    min_eigenvalue_at_optimum: float
    num_points: int
    convex: bool


def check_convexity(
    params: AnyLawParams,
    budget: float,
    weights_opt,
    key: jax.Array,
    importance=None,
    num_points: int = 256,
    rel_tol: float = 1e-8,
) -> ConvexityReport:
    """Hessian eigenvalues of the objective on the tangent space at the optimum and at
    ``num_points`` Dirichlet(1) mixtures (interior of the simplex). Warns if any is negative."""
    k = len(weights_opt)
    with jax.enable_x64(True):
        # Dirichlet(1) points from numpy (seeded by the key): no per-op PRNG dispatch.
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
        points = np.concatenate([np.asarray(weights_opt, np.float64)[None], rng.dirichlet(np.ones(k), num_points)])
        importance = np.ones(k) if importance is None else np.asarray(importance, np.float64)
        args = (jnp.asarray(points), _x64(params), jnp.float64(budget), jnp.asarray(importance))
        eig = np.asarray(cached_call("convexity", _tangent_hessian_eigenvalues, args))
    scale = max(float(np.max(np.abs(eig))), 1e-300)
    report = ConvexityReport(
        min_eigenvalue=float(eig.min()),
        min_eigenvalue_at_optimum=float(eig[0].min()),
        num_points=num_points + 1,
        convex=bool(eig.min() >= -rel_tol * scale),
    )
    if not report.convex:
        warnings.warn(
            f"objective is not convex on the simplex at budget {budget:g}: min Hessian eigenvalue"
            f" {report.min_eigenvalue:.3g}; the optimum may be local",
            stacklevel=2,
        )
    return report


_solve_samples = small_program_jit(jax.vmap(solve_weights, in_axes=(0, None, None)))


@dataclasses.dataclass(frozen=True)
class WeightInterval:
    samples: np.ndarray  # (B, k)
    low: np.ndarray  # (k,)
    high: np.ndarray  # (k,)
    level: float


def solve_samples(params, budget: float, constraints: Constraints) -> np.ndarray:
    """The optimum of each of several laws (stacked params, (S, k) per field): (S', k), the
    non-finite solves dropped (vmapped :func:`~mixjax.mixing.solve.solve_weights`)."""
    with jax.enable_x64(True):
        samples = np.asarray(cached_call("bootstrap", _solve_samples, (_x64(params), jnp.float64(budget), _x64(constraints))))
    return samples[np.all(np.isfinite(samples), axis=1)]


def bootstrap_weights(bootstrap_params: LawParams, budget: float, constraints: Constraints, level: float = 0.9) -> WeightInterval:
    """Percentile interval of the optimal weights over bootstrap refits (vmapped solve)."""
    samples = solve_samples(bootstrap_params, budget, constraints)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    return WeightInterval(samples=samples, low=low, high=high, level=level)
