import jax
import numpy as np
import pytest
from helpers import WORKED_LOSSES

from mixjax.mixing.design import perturbation_runs
from helpers import law_losses
from helpers import two_stage_config
from mixjax.mixing.fit.two_stage import fit_two_stage
from mixjax.mixing.fit.two_stage.objectives import ratio_design
from mixjax.mixing.runs import DomainData
from mixjax.mixing.law import LawParams
from mixjax.mixing.runs import RunTable, domain_data
from mixjax.mixing.solve import solve_sweep

TRUTH = LawParams(
    beta=np.array([0.3, 0.25, 0.35]),
    c=np.array([1.0, 0.8, 1.2]),
    gamma=np.array([0.3, 0.2, 0.4]),
    alpha=np.array([0.4, 0.6, 0.5]),
    e=np.array([1.2, 1.0, 0.9]),
)


def test_ratio_design_is_the_papers_for_five_points():
    pairs, quads = ratio_design(5)
    assert [tuple(p + 1) for p in pairs] == [(1, 3), (1, 4), (1, 5), (2, 4), (2, 5), (3, 5)]
    assert len(quads) == 15
    assert len(ratio_design(3)[0]) == 3  # short series fall back to every pair


def test_worked_example_fit_reproduces_losses(worked_domains):
    fit = fit_two_stage(worked_domains, jax.random.key(0), two_stage_config())
    for diag, losses in zip(fit.diagnostics, WORKED_LOSSES.values()):
        assert diag.max_abs_residual < 0.002, diag.name
        assert len(diag.oof_errors) == 5 and np.all(np.isfinite(diag.oof_errors))
    # Positivity and the transfer constraint gamma M^alpha <= M at the observed M.
    p, m = fit.params, 2 * 0.66
    assert np.all(p.beta > 0) and np.all(p.c > 0) and np.all(p.gamma > 0) and np.all(p.e >= 0)
    assert np.all((p.alpha >= 0) & (p.alpha <= 1))
    assert np.all(p.gamma * m**p.alpha <= m * (1 + 1e-9))


def test_worked_example_weights_stable_across_start_sets(worked_domains):
    cfg = two_stage_config(leave_one_out=False)
    weights = np.stack(
        [solve_sweep(fit_two_stage(worked_domains, jax.random.key(seed), cfg).params, [5.0, 20.0, 200.0]) for seed in range(20)]
    )
    spread = weights.max(axis=0) - weights.min(axis=0)
    assert spread.max() < 0.02, spread


def _synthetic_table(noise: float, seed: int = 0) -> RunTable:
    tokens = perturbation_runs([1.0, 1.0, 1.0])
    losses = law_losses(TRUTH, tokens) + np.random.default_rng(seed).normal(0, noise, (len(tokens), 3))
    return RunTable(("a", "b", "c"), tokens, losses, tuple(range(2, len(tokens) + 2)))


def test_synthetic_recovery_with_cross_runs():
    fit = fit_two_stage(domain_data(_synthetic_table(1e-4)), jax.random.key(0), two_stage_config(alpha_mode="fitted"))
    mixtures = np.random.default_rng(1).dirichlet(np.ones(3), 50)
    for budget in (3.0, 10.0):  # 3 = the base total (interpolation), 10 = extrapolation
        tokens = mixtures * budget
        rel = np.abs(law_losses(fit.params, tokens) / law_losses(TRUTH, tokens) - 1)
        assert rel.max() < 0.005, (budget, rel.max())
        w_fit, w_true = solve_sweep(fit.params, [budget])[0], solve_sweep(TRUTH, [budget])[0]
        np.testing.assert_allclose(w_fit, w_true, atol=0.03)
    assert all(d.two_stage.alpha_identified and not d.poorly_identified for d in fit.diagnostics)
    np.testing.assert_allclose(fit.params.alpha, TRUTH.alpha, atol=0.05)
    np.testing.assert_allclose(fit.params.beta, TRUTH.beta, rtol=0.1)


def test_own_series_only_holds_alpha_at_prior_and_says_so():
    # alpha_mode="prior": each domain on its own series only (the default is now "auto").
    fit = fit_two_stage(domain_data(_synthetic_table(1e-4)), jax.random.key(0), two_stage_config(alpha_prior=0.5, alpha_mode="prior"))
    np.testing.assert_allclose(fit.params.alpha, 0.5)
    assert all(not d.two_stage.alpha_identified and "not identified" in d.notes[0] for d in fit.diagnostics)


def test_noisy_flat_domain_is_flagged():
    x = np.array([0.25, 0.5, 1.0, 2.0, 3.0])
    noisy = DomainData("flat", x, 2.0, np.array([2.0, 2.003, 1.999, 2.002, 1.998]))
    fit = fit_two_stage([noisy], jax.random.key(0), two_stage_config(num_starts=16))
    assert fit.diagnostics[0].poorly_identified


def test_bootstrap_samples_have_requested_shape():
    fit = fit_two_stage(domain_data(_synthetic_table(1e-3)), jax.random.key(0), two_stage_config(leave_one_out=False, bootstrap_samples=16))
    assert fit.bootstrap_params.beta.shape == (16, 3)
    assert np.all(np.isfinite(fit.bootstrap_params.beta))


def test_domain_data_validates():
    with pytest.raises(ValueError, match=">= 3"):
        DomainData("x", np.array([1.0, 2.0]), 1.0, np.array([2.0, 1.9]))
    with pytest.raises(ValueError, match="finite"):
        DomainData("x", np.array([1.0, 2.0, 3.0]), 1.0, np.array([2.0, np.nan, 1.8]))
