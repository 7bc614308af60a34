import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PUBLISHED_PARAMS, PUBLISHED_WEIGHTS

from mixjax.mixing.analysis import check_convexity, tangent_basis, weight_jacobians
from mixjax.mixing.baselines import grid_search, proportional_weights, simplex_grid
from mixjax.mixing.law import rescale_units, total_loss
from mixjax.mixing.solve import Constraints, project_bounded_simplex, solve_sweep, solve_weights


def test_published_weights_reproduced():
    budgets = sorted(PUBLISHED_WEIGHTS)
    weights = solve_sweep(PUBLISHED_PARAMS, budgets)
    for budget, w in zip(budgets, weights):
        np.testing.assert_allclose(w, PUBLISHED_WEIGHTS[budget], atol=1e-3)
        assert w.sum() == pytest.approx(1.0, abs=1e-12)


def test_solution_beats_every_grid_point():
    w = solve_sweep(PUBLISHED_PARAMS, [20.0])[0]
    best_grid, values = grid_search(PUBLISHED_PARAMS, 20.0, simplex_grid(3, 0.01))
    with jax.enable_x64(True):
        optimum = float(total_loss(jnp.asarray(w), jax.tree.map(jnp.asarray, PUBLISHED_PARAMS), 20.0))
    assert optimum <= values.min() + 1e-12
    np.testing.assert_allclose(w, best_grid, atol=0.01)


def test_projection_matches_sort_based_simplex_projection():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for _ in range(20):
            y = rng.normal(size=5) * 2
            w = np.asarray(project_bounded_simplex(jnp.asarray(y), (jnp.zeros(5), jnp.ones(5))))
            # Reference: Duchi et al. (2008) sort-based projection onto the simplex.
            u = np.sort(y)[::-1]
            css = np.cumsum(u) - 1
            rho = np.nonzero(u - css / np.arange(1, 6) > 0)[0][-1]
            np.testing.assert_allclose(w, np.maximum(y - css[rho] / (rho + 1), 0), atol=1e-12)


def test_projection_respects_boxes():
    with jax.enable_x64(True):
        lo, hi = jnp.array([0.1, 0.0, 0.2]), jnp.array([0.5, 0.3, 1.0])
        w = project_bounded_simplex(jnp.array([5.0, 4.0, -3.0]), (lo, hi))
    np.testing.assert_allclose(w, [0.5, 0.3, 0.2], atol=1e-12)


def test_availability_and_bounds_bind():
    # Domain 0 alone would take ~42% at N=20; give it only 4 tokens (20%).
    cons = Constraints.create(3, available=[4.0, np.inf, np.inf], lower=[0.0, 0.3, 0.0])
    w = solve_sweep(PUBLISHED_PARAMS, [20.0], cons)[0]
    assert w[0] == pytest.approx(0.2, abs=1e-9)
    assert w[1] >= 0.3 - 1e-12
    assert w.sum() == pytest.approx(1.0, abs=1e-12)


def test_infeasible_budget_is_a_clear_error():
    cons = Constraints.create(3, available=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="budget 20 exceeds what the domains can supply"):
        solve_sweep(PUBLISHED_PARAMS, [20.0], cons, ["if", "math", "code"])


def test_importance_shifts_weight():
    base = solve_sweep(PUBLISHED_PARAMS, [20.0])[0]
    favoured = solve_sweep(PUBLISHED_PARAMS, [20.0], Constraints.create(3, importance=[1.0, 3.0, 1.0]))[0]
    assert favoured[1] > base[1] + 0.05


def _finite_difference(fn, x, h):
    return (fn(x + h) - fn(x - h)) / (2 * h)


def test_implicit_jacobian_matches_finite_differences():
    cons = Constraints.create(3)
    d_params, d_budget = weight_jacobians(PUBLISHED_PARAMS, 20.0, cons)
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, PUBLISHED_PARAMS)
        cons = jax.tree.map(jnp.asarray, cons)
        solve = jax.jit(lambda p, n: solve_weights(p, n, cons))
        np.testing.assert_allclose(d_params.e, 0.0, atol=1e-12)  # an additive constant cannot move w*
        for field, h in [("beta", 1e-4), ("c", 1e-3), ("gamma", 1e-3), ("alpha", 1e-3)]:
            jac = getattr(d_params, field)
            for j in range(3):
                def shifted(v, j=j, field=field):
                    return np.asarray(solve(params._replace(**{field: getattr(params, field).at[j].set(v)}), 20.0))
                fd = _finite_difference(shifted, float(getattr(params, field)[j]), h)
                np.testing.assert_allclose(jac[:, j], fd, rtol=1e-4, atol=1e-4 * np.abs(jac).max(), err_msg=field)
        fd_budget = _finite_difference(lambda n: np.asarray(solve(params, n)), 20.0, 0.1)
        np.testing.assert_allclose(d_budget, fd_budget, rtol=1e-4, atol=1e-4 * np.abs(d_budget).max())


def test_convexity_check_on_published_params():
    w = solve_sweep(PUBLISHED_PARAMS, [20.0])[0]
    report = check_convexity(PUBLISHED_PARAMS, 20.0, w, jax.random.key(0))
    assert report.convex and report.min_eigenvalue > 0


def test_convexity_check_warns_on_concave_objective():
    concave = PUBLISHED_PARAMS._replace(c=-PUBLISHED_PARAMS.c)  # flips the curvature
    with pytest.warns(UserWarning, match="not convex"):
        report = check_convexity(concave, 20.0, np.full(3, 1 / 3), jax.random.key(0))
    assert not report.convex


def test_tangent_basis_is_orthonormal_and_sums_to_zero():
    q = tangent_basis(4)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(q.sum(axis=0), 0, atol=1e-12)


def test_simplex_grid_counts_and_bounds():
    assert len(simplex_grid(3, 0.05)) == 231
    assert len(simplex_grid(5, 0.1)) == 1001
    grid = simplex_grid(3, 0.1, lower=[0.2, 0, 0], upper=[1, 0.5, 1])
    assert np.all(grid[:, 0] >= 0.2) and np.all(grid[:, 1] <= 0.5)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="divide 1"):
        simplex_grid(3, 0.3)


def test_proportional_weights():
    np.testing.assert_allclose(proportional_weights([1, 3]), [0.25, 0.75])
    with pytest.raises(ValueError):
        proportional_weights([1, 0])


def test_rescale_units_preserves_losses():
    from mixjax.mixing.law import mixture_losses

    with jax.enable_x64(True):
        p = jax.tree.map(jnp.asarray, PUBLISHED_PARAMS)
        w = jnp.array([0.2, 0.5, 0.3])
        # Parameters in millions of tokens -> parameters in tokens.
        in_tokens = rescale_units(p, 1e6)  # fitted on tokens / 1e6
        np.testing.assert_allclose(mixture_losses(in_tokens, w, 20e6), mixture_losses(p, w, 20.0), rtol=1e-12)


def test_bisection_matches_projected_gradient():
    """The bisection solver (default) against the previous 20,000-step projected gradient."""
    from mixjax.mixing.solve import solve_weights_pg

    rng = np.random.default_rng(0)
    cases = [(PUBLISHED_PARAMS, Constraints.create(3), n) for n in (5.0, 20.0, 200.0)]
    cases.append((PUBLISHED_PARAMS, Constraints.create(3, available=[4.0, np.inf, np.inf], lower=[0.0, 0.3, 0.0]), 20.0))
    cases.append((PUBLISHED_PARAMS, Constraints.create(3, upper=[0.35, 1, 1], importance=[1.0, 2.0, 0.5]), 50.0))
    for _ in range(4):
        k = 5
        p = PUBLISHED_PARAMS._replace(
            beta=rng.uniform(0.05, 0.5, k), c=rng.uniform(0.5, 1.5, k), gamma=rng.uniform(0.05, 0.5, k),
            alpha=rng.uniform(0.2, 0.8, k), e=rng.uniform(1, 2, k),
        )
        cases.append((p, Constraints.create(k), float(rng.uniform(1, 100))))
    with jax.enable_x64(True):
        for params, cons, n in cases:
            args = jax.tree.map(jnp.asarray, params), jnp.float64(n), jax.tree.map(jnp.asarray, cons)
            w_new = np.asarray(jax.jit(solve_weights)(*args))
            w_old = np.asarray(jax.jit(solve_weights_pg)(*args))
            np.testing.assert_allclose(w_new, w_old, atol=1e-7)
            assert w_new.sum() == pytest.approx(1.0, abs=1e-12)
            # and it is at least as good
            obj = lambda w: float(total_loss(jnp.asarray(w), args[0], n, args[2].importance))
            assert obj(w_new) <= obj(w_old) + 1e-13


def test_feasible_mask():
    from mixjax.mixing.baselines import feasible_mask

    cons = Constraints.create(3, available=[4.0, np.inf, np.inf], lower=[0.0, 0.3, 0.0], upper=[1, 1, 0.5])
    w = np.array([[0.2, 0.3, 0.5], [0.25, 0.3, 0.45], [0.1, 0.2, 0.7], [0.1, 0.3, 0.6], [0.2, 0.4, 0.5]])
    np.testing.assert_array_equal(feasible_mask(w, 20.0, cons), [True, False, False, False, False])


def test_report_hides_infeasible_baselines_and_skips_grid_points():
    from mixjax.mixing.fit import Fit
    from mixjax.mixing.mixture import decide

    fit = Fit(domains=("if", "math", "code"), params=PUBLISHED_PARAMS, diagnostics=())
    cons = Constraints.create(3, available=[4.0, 100.0, 100.0])  # uniform needs 6.67 of if at N=20
    report = decide(fit, [20.0], cons, jax.random.key(0), grid_step=0.1)
    b = report.budgets[0]
    assert "uniform" not in b.baselines and "if needs" in b.infeasible_baselines["uniform"]
    assert b.grid_skipped == 36  # w_if >= 0.3 needs more than 4 tokens: 8 + 7 + ... + 1 lattice points
    assert all(b.objective <= v + 1e-12 for v in b.baseline_objective.values())
    assert any("if at its upper bound" in w for w in b.warnings)
