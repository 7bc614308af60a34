"""#10: paper procedure, any run design (4k+1, swarm), alpha chosen automatically."""

import jax
import numpy as np
import pytest

from mixjax.mixing.design import perturbation_runs
from helpers import law_losses
from helpers import two_stage_config
from mixjax.mixing.fit.two_stage import fit_two_stage
from mixjax.mixing.runs import DomainData
from mixjax.mixing.stats import spearman
from mixjax.mixing.law import LawParams
from mixjax.mixing.runs import RunTable, RunTableError, domain_data
from mixjax.mixing.solve import solve_sweep

# k = 4, a different alpha per domain.
TRUTH4 = LawParams(
    beta=np.array([0.3, 0.25, 0.35, 0.2]),
    c=np.array([1.0, 0.8, 1.2, 0.9]),
    gamma=np.array([0.3, 0.2, 0.4, 0.25]),
    alpha=np.array([0.3, 0.5, 0.7, 0.4]),
    e=np.array([1.2, 1.0, 0.9, 1.1]),
)
NAMES = ("a", "b", "c", "d")


def _table(tokens, seed=0, noise=1e-5) -> RunTable:
    losses = law_losses(TRUTH4, tokens) + np.random.default_rng(seed).normal(0, noise, tokens.shape)
    return RunTable(NAMES, tokens, losses, tuple(range(2, len(tokens) + 2)))


def _half_l1(params, budgets):
    return 0.5 * np.abs(solve_sweep(params, budgets) - solve_sweep(TRUTH4, budgets)).sum(axis=1)


def test_paper_procedure_reproduces_published_betas(worked_domains):
    fit = fit_two_stage(worked_domains, jax.random.key(0), two_stage_config(procedure="paper", leave_one_out=False))
    np.testing.assert_allclose(fit.params.beta, [0.0510, 0.0430, 0.0439], atol=0.01)
    # The best optimum of the reference's statistic (scipy L-BFGS-B from a grid agrees).
    np.testing.assert_allclose(fit.params.beta, [0.05866, 0.05116, 0.05191], atol=2e-4)
    assert all(d.two_stage.procedure == "paper" for d in fit.diagnostics)


def test_4k1_recovery_default_flags():
    table = _table(perturbation_runs(np.ones(4)))
    fit = fit_two_stage(domain_data(table), jax.random.key(0), two_stage_config())
    base_total = 4.0
    assert _half_l1(fit.params, [10 * base_total, 100 * base_total]).max() < 0.01
    for d in fit.diagnostics:  # alpha chosen by leave-one-run-out error, both reported
        assert d.num_runs == 17 and np.isfinite(d.two_stage.loo_rmse_prior) and np.isfinite(d.two_stage.loo_rmse_fitted)
        assert d.two_stage.alpha_choice == ("fitted" if d.two_stage.loo_rmse_fitted < d.two_stage.loo_rmse_prior else "prior")
    fitted = [i for i, d in enumerate(fit.diagnostics) if d.two_stage.alpha_choice == "fitted"]
    assert len(fitted) >= 3
    np.testing.assert_allclose(fit.params.alpha[fitted], TRUTH4.alpha[fitted], atol=0.02)
    assert fit.validation["folds"] == 17 and fit.validation["oof_rmse"] < 1e-4
    assert fit.validation["oof_spearman"] > 0.99


def test_swarm_recovery_default_flags():
    rng = np.random.default_rng(1)
    tokens = rng.dirichlet(np.ones(4), 20) * np.exp(rng.uniform(np.log(2), np.log(16), (20, 1)))
    domains = domain_data(_table(tokens, seed=2))
    assert all(not d.has_series and len(d.cross_loss) == 20 for d in domains)  # no base run: all cross
    fit = fit_two_stage(domains, jax.random.key(0), two_stage_config())
    assert _half_l1(fit.params, [4.0, 40.0, 400.0]).max() < 0.02
    assert fit.validation["oof_spearman"] > 0.99


def test_alpha_mode_overrides():
    domains = domain_data(_table(perturbation_runs(np.ones(4))))
    prior = fit_two_stage(domains, jax.random.key(0), two_stage_config(alpha_mode="prior", alpha_prior=0.4, leave_one_out=False))
    np.testing.assert_allclose(prior.params.alpha, 0.4)
    assert {d.two_stage.alpha_choice for d in prior.diagnostics} == {"prior"}
    with pytest.raises(ValueError, match="procedure"):
        two_stage_config(procedure="nope")


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [1, 2]))


def test_swarm_without_enough_runs_is_a_clear_error():
    tokens = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 1.0]])  # base would be (1, 1): no such run
    table = RunTable(("a", "b"), tokens, np.array([[2.0, 2.0], [1.9, 2.1], [np.nan, 2.05]]), (2, 3, 4))
    with pytest.raises(RunTableError, match="no base run"):
        domain_data(table)
    with pytest.raises(ValueError, match=">= 3"):
        DomainData("x", np.zeros(0), 0.0, np.zeros(0), np.ones(2), np.ones(2), np.ones(2))


def test_a_swarm_is_reproducible_distinct_and_within_the_available_tokens():
    from mixjax.mixing.design import design_runs, swarm_mixtures

    available = np.array([1000.0, 150.0, 2000.0, 600.0])
    draw = lambda seed: design_runs("swarm", tuple("abcd"), np.full(4, 100.0), available, np.random.default_rng(seed))
    tokens, names = draw(3)
    assert tokens.shape == (17, 4) and names[0] == "swarm-000"  # 4k+1 runs by default
    assert np.allclose(tokens.sum(axis=1), 400.0) and np.all(tokens <= available + 1e-9)
    assert np.array_equal(tokens, draw(3)[0]) and not np.array_equal(tokens, draw(4)[0])
    w = tokens / 400.0
    gaps = [0.5 * np.abs(w[i] - w[j]).sum() for i in range(17) for j in range(i)]
    assert min(gaps) >= 0.05
    both, labels = design_runs("4k+1+swarm", tuple("abcd"), np.full(4, 100.0), available, np.random.default_rng(3))
    assert len(both) == 34 and labels[:2] == ["base", "a-x0.25"] and np.array_equal(both[17:], tokens)
    with pytest.raises(ValueError, match="largest weights sum to"):
        swarm_mixtures(np.ones(2), 3, np.random.default_rng(0), max_weight=[0.3, 0.3])


def test_a_swarm_table_fits_and_decides():
    """A swarm has no base run: every run is a cross point, and the decision still runs."""
    from mixjax.mixing.design import design_runs
    from mixjax.mixing.mixture import optimise_mixture

    tokens, _ = design_runs("swarm", ("a", "b", "c"), np.full(3, 1.0), np.full(3, 10.0), np.random.default_rng(0), swarm_runs=26)
    x = tokens
    losses = 1.0 + 0.8 * (x + 0.3 * (x.sum(1, keepdims=True) - x) ** 0.6 + 1e-3) ** -0.3
    table = RunTable(("a", "b", "c"), tokens, losses, tuple(range(2, len(tokens) + 2)))
    report = optimise_mixture(table, [6.0], key=jax.random.key(0), grid_step=None)
    assert report.budgets[0].decision is not None and np.isclose(report.budgets[0].weights.sum(), 1.0)
    assert np.allclose(report.budgets[0].optimum, 1 / 3, atol=0.05)  # a symmetric truth


def test_a_swarm_with_no_feasible_draw_fails_fast():
    """Availability that leaves one feasible point (caps summing to 1): refused after one
    round of draws, not after halving the distance again and again."""
    import time

    from mixjax.mixing.design import swarm_mixtures

    start = time.perf_counter()
    with pytest.raises(ValueError, match="no feasible mixture in 8,192 draws"):
        swarm_mixtures(np.ones(2), 3, np.random.default_rng(0), max_weight=[0.5, 0.5], max_draws=8192)
    assert time.perf_counter() - start < 10


def test_plan_keeps_the_4k1_run_names_of_earlier_experiments():
    """A 4k+1 run is named by its rounded tokens over the base (its run directory in
    experiments planned before the swarm designs): base_tokens=1001 gives a-x0.24975."""
    from mixjax.pipeline.config import PlanConfig
    from mixjax.pipeline.stages import plan_runs

    specs = plan_runs(["a", "b"], 1001, (0.25, 0.5, 2, 3), np.array([1e6, 1e6]), [4000], PlanConfig(design="4k+1+swarm", swarm_runs=2))
    assert [s.name for s in specs] == ["base", "a-x0.24975", "a-x0.4995", "a-x2", "a-x3", "b-x0.24975", "b-x0.4995", "b-x2", "b-x3",
                                       "swarm-000", "swarm-001"]
