"""Optimal mixture weights: minimise sum_i s_i L_i(w, N) over the (bounded) simplex.

The objective is separable: L_i depends on w_i alone. At the optimum (KKT) every weight
strictly inside its box has the same marginal loss ``s_i dL_i/dw_i = mu``, and a weight
at a bound has its marginal on the right side of ``mu``. With each L_i convex in w_i
(the paper's result; :mod:`mixjax.mixing.analysis` checks it) the marginal is increasing,
so ``w_i(mu)`` is found by bisection per domain and ``sum_i w_i(mu) = 1`` by bisection on
``mu`` (:func:`solve_weights`): exact to float64 rounding, a fixed number of steps, and
differentiable through a custom JVP from the KKT conditions (implicit differentiation).

The transfer-matrix law (:class:`~mixjax.mixing.law.TransferLawParams`) is not separable:
``L_i`` depends on ``w_i`` and on ``sum_j t_ij w_j``. Each ``L_i`` is still convex in ``w``
(a convex decreasing function of the effective data, which is concave in ``w``), so the
objective is convex and :func:`solve_weights` runs a fixed number of projected Newton
steps on the bounded simplex (Newton on the free coordinates under ``sum w = 1``, with
projected-gradient candidates as a safeguard, the best of all kept), differentiable
through a custom JVP from the KKT conditions with the full Hessian.

The reference solver (:func:`solve_weights_pg`, the tests compare the two) is projected
gradient (FISTA with backtracking, jaxopt) with an exact projection onto
``{w : lo <= w <= hi, sum w = 1}`` (:func:`project_bounded_simplex`). ``hi`` folds the per-domain upper bound and the
availability limit ``w_i N <= D_i`` together. The solver differentiates implicitly
through its fixed point, so ``jax.jacobian`` of :func:`solve_weights` gives the
sensitivity of the optimal weights to every law parameter and to the budget.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jaxopt
from jaxopt import linear_solve
import numpy as np

from mixjax.cache import cached_call, small_program_jit
from mixjax.mixing.law import AnyLawParams, LawParams, has_transfer, total_loss

Array = jax.Array


class Constraints(NamedTuple):
    """Per-domain constraints, arrays of shape (k,). ``available`` is in budget units;
    ``importance`` (P,) weighs every law output, the k domains then any targets
    (:mod:`mixjax.mixing.objective`)."""

    lower: Array
    upper: Array
    available: Array
    importance: Array

    @classmethod
    def create(
        cls,
        num_domains: int,
        lower=None,
        upper=None,
        available=None,
        importance=None,
    ) -> "Constraints":
        fill = lambda v, default: np.broadcast_to(
            np.asarray(default if v is None else v, np.float64), (num_domains,)
        ).copy()
        # The objective's weights cover every law output: the domains, then any targets.
        outputs = np.size(importance) if np.ndim(importance) == 1 else num_domains
        return cls(
            lower=fill(lower, 0.0),
            upper=fill(upper, 1.0),
            available=fill(available, np.inf),
            importance=np.broadcast_to(np.asarray(1.0 if importance is None else importance, np.float64), (outputs,)).copy(),
        )


@jax.custom_jvp
def project_bounded_simplex(y: Array, bounds: tuple[Array, Array]) -> Array:
    """Euclidean projection of ``y`` onto ``{w : lo <= w <= hi, sum w = 1}``.

    The solution is ``clip(y - tau, lo, hi)``; ``tau`` is found by bisection (the sum is
    monotone in tau). The JVP is analytic and linear in the tangents, so the solver's
    implicit differentiation can transpose it (jaxopt's root-finding projection cannot).
    """
    lo, hi = bounds
    return jnp.clip(y - _projection_shift(y, lo, hi), lo, hi)


def _projection_shift(y: Array, lo: Array, hi: Array, iterations: int = 100) -> Array:
    def body(_, interval):
        a, b = interval
        mid = 0.5 * (a + b)
        too_big = jnp.sum(jnp.clip(y - mid, lo, hi)) > 1.0
        return jnp.where(too_big, mid, a), jnp.where(too_big, b, mid)

    a, b = jax.lax.fori_loop(0, iterations, body, (jnp.min(y - hi), jnp.max(y - lo)))
    return jax.lax.stop_gradient(0.5 * (a + b))


@project_bounded_simplex.defjvp
def _project_bounded_simplex_jvp(primals, tangents):
    (y, (lo, hi)), (dy, (dlo, dhi)) = primals, tangents
    w = project_bounded_simplex(y, (lo, hi))
    at_lo, at_hi = w <= lo, w >= hi
    free = ~(at_lo | at_hi)
    dw_fixed = jnp.where(at_lo, dlo, 0.0) + jnp.where(at_hi, dhi, 0.0)
    # Free coordinates move with dy - dtau, where dtau keeps sum(dw) = 0.
    dtau = (jnp.sum(jnp.where(free, dy, 0.0)) + jnp.sum(dw_fixed)) / jnp.maximum(jnp.sum(free), 1)
    return w, jnp.where(free, dy - dtau, dw_fixed)


def weight_bounds(constraints: Constraints, budget, xp=jnp) -> tuple[Array, Array]:
    """Box of the feasible weights at ``budget``: ``lower <= w <= min(upper, D / N)``.
    ``xp``: the array module (numpy: :func:`host_weight_bounds`)."""
    limited = xp.isfinite(constraints.available)
    share = xp.where(limited, constraints.available, 1.0) / budget  # NaN-free gradient in N
    return constraints.lower, xp.where(limited, xp.minimum(constraints.upper, share), constraints.upper)


def host_weight_bounds(constraints: Constraints, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`weight_bounds` as float64 numpy, for checks outside jitted code (jnp ops
    run eagerly would each compile)."""
    return weight_bounds(jax.tree.map(lambda a: np.asarray(a, np.float64), constraints), budget, xp=np)


def check_feasible(constraints: Constraints, budget: float, domains=None) -> None:
    """Raise ValueError, naming the bound or the availability that breaks it, when no
    weights satisfy the constraints at ``budget``."""
    lo, hi = host_weight_bounds(constraints, budget)
    upper = np.asarray(constraints.upper, np.float64)
    available = np.asarray(constraints.available, np.float64)
    names = list(domains) if domains is not None else [str(i) for i in range(len(lo))]
    for i, (name, a, b) in enumerate(zip(names, lo, hi)):
        if a > upper[i]:
            raise ValueError(f"domain {name}: lower bound {a:.4g} exceeds its upper bound {upper[i]:.4g}; lower one of them")
        if a > b:
            raise ValueError(
                f"domain {name}: lower bound {a:.4g} needs {a * budget:g} tokens at budget {budget:g} but only"
                f" {available[i]:g} are available (at most {b:.4g} of the budget); lower the bound or the budget"
            )
    if upper.sum() < 1.0 - 1e-12:
        raise ValueError(
            f"upper bounds sum to {upper.sum():.4g} < 1 ({', '.join(f'{n}={u:g}' for n, u in zip(names, upper))}):"
            " no weights summing to 1 fit under them; raise an upper bound"
        )
    if hi.sum() < 1.0 - 1e-12:
        raise ValueError(
            f"budget {budget:g} exceeds what the domains can supply: available tokens and upper bounds"
            f" allow at most {hi.sum() * budget:g} (sum of min(upper_i * N, D_i)); lower the budget or give more data"
        )
    if lo.sum() > 1.0 + 1e-12:
        raise ValueError(
            f"lower bounds sum to {lo.sum():.4g} > 1 ({', '.join(f'{n}={l:g}' for n, l in zip(names, lo))}):"
            " no weights summing to 1 meet them; lower a lower bound"
        )


def _marginal(w: Array, params: LawParams, budget, importance: Array) -> Array:
    """``s_i dL_i / dw_i`` for every domain (the objective is separable, so this is its gradient)."""
    return jax.grad(total_loss)(w, params, budget, importance)


def _bisect(params: LawParams, budget, lo: Array, hi: Array, importance: Array, outer: int, inner: int) -> Array:
    marginal = lambda w: _marginal(w, params, budget, importance)
    width = hi - lo

    def weights_at(mu):
        def body(_, interval):  # per domain: the w in [lo, hi] where the marginal crosses mu
            a, b = interval
            mid = 0.5 * (a + b)
            below = marginal(mid) < mu
            return jnp.where(below, mid, a), jnp.where(below, b, mid)

        a, b = jax.lax.fori_loop(0, inner, body, (lo, hi))
        return 0.5 * (a + b)

    inside = jnp.minimum(1e-12, 0.5) * width
    g_lo, g_hi = marginal(lo + inside), marginal(hi - inside)
    g_lo, g_hi = jnp.where(jnp.isfinite(g_lo), g_lo, -1e300), jnp.where(jnp.isfinite(g_hi), g_hi, 1e300)

    def outer_body(_, interval):
        a, b = interval
        mid = 0.5 * (a + b)
        short = jnp.sum(weights_at(mid)) < 1.0
        return jnp.where(short, mid, a), jnp.where(short, b, mid)

    a, b = jax.lax.fori_loop(0, outer, outer_body, (jnp.min(g_lo), jnp.max(g_hi)))
    w = jnp.clip(weights_at(0.5 * (a + b)), lo, hi)
    # Put the last rounding error of sum(w) = 1 on the weights strictly inside their box.
    free = (w > lo + 1e-12) & (w < hi - 1e-12)
    fix = (1.0 - jnp.sum(w)) / jnp.maximum(jnp.sum(free), 1)
    return jnp.clip(jnp.where(free, w + fix, w), lo, hi)


@jax.custom_jvp
def _solve_separable(params: LawParams, budget, lo: Array, hi: Array, importance: Array) -> Array:
    return _bisect(params, budget, lo, hi, importance, outer=110, inner=64)


@_solve_separable.defjvp
def _solve_separable_jvp(primals, tangents):
    """Implicit differentiation of the KKT conditions at the optimum.

    Free weights: ``g_i(w_i; theta) = mu`` and ``sum dw = 0`` over all weights; weights at a
    bound move with the bound.
    """
    params, budget, lo, hi, importance = primals
    d_params, d_budget, d_lo, d_hi, d_importance = tangents
    w = _solve_separable(params, budget, lo, hi, importance)
    _, dg = jax.jvp(lambda p, n, s: _marginal(w, p, n, s), (params, budget, importance), (d_params, d_budget, d_importance))
    _, curvature = jax.jvp(lambda v: _marginal(v, params, budget, importance), (w,), (jnp.ones_like(w),))
    at_lo, at_hi = w <= lo + 1e-11, w >= hi - 1e-11
    free = ~(at_lo | at_hi) & (curvature > 0)
    d_fixed = jnp.where(at_lo, d_lo, 0.0) + jnp.where(at_hi & ~at_lo, d_hi, 0.0)
    inv = jnp.where(free, 1.0 / jnp.where(free, curvature, 1.0), 0.0)
    d_mu = (jnp.sum(inv * dg) - jnp.sum(jnp.where(free, 0.0, d_fixed))) / jnp.maximum(jnp.sum(inv), 1e-300)
    return w, jnp.where(free, (d_mu - dg) * inv, d_fixed)


def _newton(params: AnyLawParams, budget, lo: Array, hi: Array, importance: Array, iterations: int) -> Array:
    """:func:`projected_newton` on the law's objective."""
    return projected_newton(lambda w: total_loss(w, params, budget, importance), lo, hi, iterations)


def projected_newton(f, lo: Array, hi: Array, iterations: int) -> Array:
    """Minimise a smooth convex ``f`` over ``{w : lo <= w <= hi, sum w = 1}``: projected
    Newton on the free coordinates with a projected-gradient safeguard, a fixed number of
    steps from the projected uniform mixture; the best candidate of each step is kept.
    Pure and jittable."""
    grad, hess = jax.grad(f), jax.hessian(f)
    k = lo.shape[-1]
    safe_f = lambda w: jnp.where(jnp.isfinite(f(w)), f(w), jnp.inf)
    steps = 2.0 ** -jnp.arange(16, dtype=lo.dtype)
    project = jax.vmap(lambda y: project_bounded_simplex(y, (lo, hi)))

    def body(w, _):
        g, h = jnp.nan_to_num(grad(w)), jnp.nan_to_num(hess(w))
        inside = (w > lo) & (w < hi)
        mu = jnp.sum(jnp.where(inside, g, 0.0)) / jnp.maximum(jnp.sum(inside), 1)
        mu = jnp.where(jnp.any(inside), mu, jnp.median(g))
        free = inside | ((w <= lo) & (g < mu)) | ((w >= hi) & (g > mu))
        both = free[:, None] & free[None, :]
        ridge = 1e-12 * jnp.maximum(jnp.max(jnp.abs(jnp.diagonal(h))), 1e-300)
        a = jnp.where(both, h, 0.0) + jnp.diag(jnp.where(free, ridge, 1.0))
        border = jnp.where(free, 1.0, 0.0)
        kkt = jnp.block([[a, border[:, None]], [border[None, :], jnp.zeros((1, 1), h.dtype)]])
        d = jnp.linalg.solve(kkt, jnp.concatenate([-jnp.where(free, g, 0.0), jnp.zeros(1, h.dtype)]))[:k]
        curvature = jnp.maximum(jnp.max(jnp.abs(jnp.diagonal(h))), 1e-300)
        candidates = jnp.concatenate([
            project(w[None] + steps[:, None] * jnp.nan_to_num(d)[None]),
            project(w[None] - (steps * 4.0 / curvature)[:, None] * g[None]),
            w[None],
        ])
        values = jax.vmap(safe_f)(candidates)
        return candidates[jnp.argmin(values)], None

    w0 = project_bounded_simplex(jnp.full(k, 1.0 / k, lo.dtype), (lo, hi))
    w, _ = jax.lax.scan(body, w0, None, length=iterations)
    return w


@jax.custom_jvp
def _solve_general(params: AnyLawParams, budget, lo: Array, hi: Array, importance: Array) -> Array:
    return _newton(params, budget, lo, hi, importance, iterations=60)


@_solve_general.defjvp
def _solve_general_jvp(primals, tangents):
    """Implicit differentiation of the KKT conditions with the full Hessian.

    Free weights: ``grad_i f(w; theta) = mu``; weights at a bound move with the bound;
    ``sum dw = 0``.
    """
    params, budget, lo, hi, importance = primals
    d_params, d_budget, d_lo, d_hi, d_importance = tangents
    w = _solve_general(params, budget, lo, hi, importance)
    grad = lambda v, p, n, s: jax.grad(total_loss)(v, p, n, s)
    _, dg = jax.jvp(lambda p, n, s: grad(w, p, n, s), (params, budget, importance), (d_params, d_budget, d_importance))
    h = jax.hessian(total_loss)(w, params, budget, importance)
    k = w.shape[-1]
    at_lo, at_hi = w <= lo + 1e-11, w >= hi - 1e-11
    free = ~(at_lo | at_hi)
    d_fixed = jnp.where(at_lo, d_lo, 0.0) + jnp.where(at_hi & ~at_lo, d_hi, 0.0)
    a = jnp.where(free[:, None], jnp.where(free[None, :], h, 0.0), jnp.eye(k, dtype=h.dtype))
    col = jnp.where(free, -1.0, 0.0)
    any_free = jnp.any(free)
    last = jnp.where(any_free, jnp.concatenate([jnp.ones(k, h.dtype), jnp.zeros(1, h.dtype)]),
                     jnp.concatenate([jnp.zeros(k, h.dtype), jnp.ones(1, h.dtype)]))
    kkt = jnp.concatenate([jnp.concatenate([a, col[:, None]], axis=1), last[None]], axis=0)
    rhs = jnp.where(free, -(dg + h @ jnp.where(free, 0.0, d_fixed)), d_fixed)
    dw = jnp.linalg.solve(kkt, jnp.concatenate([rhs, jnp.zeros(1, h.dtype)]))[:k]
    return w, dw


def solve_weights(params: AnyLawParams, budget, constraints: Constraints) -> Array:
    """Optimal weights at one budget (module docstring): bisection on the KKT multiplier for
    the paper's (separable) law, projected Newton for the transfer-matrix law.

    Pure, jittable, vmappable, and differentiable (implicit) in params, budget and the
    constraints; both run a fixed number of steps to float64 precision.
    """
    lo, hi = weight_bounds(constraints, budget)
    dtype = jnp.result_type(params.beta, lo, float)
    cast = lambda a: jnp.asarray(a, dtype)
    solver = _solve_general if has_transfer(params) else _solve_separable
    return solver(
        jax.tree.map(cast, params), cast(budget), cast(lo), cast(hi), cast(constraints.importance)
    )


def solve_weights_pg(
    params: AnyLawParams,
    budget,
    constraints: Constraints,
    *,
    tol: float = 1e-12,
    maxiter: int = 20000,
) -> Array:
    """The previous solver (projected gradient, 20,000 iterations): the tests' reference."""
    lo, hi = weight_bounds(constraints, budget)
    k = lo.shape[-1]
    solver = jaxopt.ProjectedGradient(
        fun=total_loss,
        projection=project_bounded_simplex,
        tol=tol,
        maxiter=maxiter,
        implicit_diff=True,
        implicit_diff_solve=linear_solve.solve_lu,  # k x k system: exact and cheap
    )
    init = project_bounded_simplex(jnp.full(k, 1.0 / k, lo.dtype), (lo, hi))
    return solver.run(init, (lo, hi), params, budget, constraints.importance).params


_solve_budgets = small_program_jit(jax.vmap(solve_weights, in_axes=(None, 0, None)))


def solve_sweep(params: AnyLawParams, budgets, constraints: Constraints | None = None, domains=None) -> np.ndarray:
    """Optimal weights for each budget, shape (len(budgets), k); float64, checked feasible.
    Without ``constraints``: no bounds, every domain at importance 1 and targets at 0; a law
    with targets (more entries than domains) then needs ``domains`` to know k."""
    budgets = np.atleast_1d(np.asarray(budgets, np.float64))
    constraints = constraints or Constraints.create(len(domains) if domains is not None else len(params.beta))
    for budget in budgets:
        check_feasible(constraints, float(budget), domains)
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, params)
        constraints = jax.tree.map(jnp.asarray, constraints)
        weights = np.asarray(cached_call("solve", _solve_budgets, (params, jnp.asarray(budgets), constraints)))
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"the solver returned non-finite weights for budgets {budgets.tolist()}: the law parameters are degenerate ({params})")
    return weights
