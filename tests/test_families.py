"""Law families (issue #14 items 3, 4, 6): transfer-matrix law, family scoring, probes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.mixing.fit import FamilyConfig, Fit, FitConfig, predict
from mixjax.mixing.mixture import fit_table
from mixjax.mixing.law import LawParams, TransferLawParams, mixture_losses, token_losses
from mixjax.mixing.runs import RunTable
from mixjax.mixing.solve import Constraints, solve_sweep, solve_weights, solve_weights_pg

DOMAINS = ("a", "b", "c")
TRUE = TransferLawParams(
    beta=np.array([0.5, 0.6, 0.4]),
    c=np.array([3.0, 2.5, 3.5]),
    gamma=np.array([0.4, 0.3, 0.5]),
    alpha=np.array([0.6, 0.5, 0.7]),
    e=np.array([1.0, 1.2, 0.8]),
    transfer=np.array([[0.0, 1.4, 0.6], [0.65, 0.0, 1.35], [1.0, 1.0, 0.0]]),
    rho=np.array([1.0, 0.7, 0.85]),
)
CFG = FitConfig(families=FamilyConfig(scored=("paper", "transfer")))


def losses_of(law, tokens: np.ndarray) -> np.ndarray:
    with jax.enable_x64(True):
        return np.array(token_losses(jax.tree.map(jnp.asarray, law), jnp.asarray(tokens)))


def table_4k1(law=TRUE, noise: float = 0.0, seed: int = 0, factors=(0.5, 0.75, 1.5, 2.0)) -> RunTable:
    """The 4k+1 design: a base run plus four own-token perturbations per domain (every loss measured)."""
    k = len(law.beta)
    rows = [np.ones(k)]
    for i in range(k):
        for f in factors:
            row = np.ones(k)
            row[i] = f
            rows.append(row)
    tokens = np.array(rows)
    rng = np.random.default_rng(seed)
    loss = losses_of(law, tokens) + noise * rng.standard_normal((len(tokens), k))
    return RunTable(DOMAINS[:k], tokens, loss, tuple(range(2, len(tokens) + 2)), "4k+1")


def half_l1(a, b) -> float:
    return float(0.5 * np.abs(np.asarray(a) - np.asarray(b)).sum())


def test_transfer_law_with_unit_matrix_is_the_papers_law():
    paper = LawParams(*TRUE[:5])
    w = np.array([0.2, 0.5, 0.3])
    with jax.enable_x64(True):
        a = mixture_losses(paper, w, 7.0)
        b = mixture_losses(TransferLawParams.from_paper(paper), w, 7.0)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_transfer_solve_matches_projected_gradient_and_finite_differences():
    """The non-separable solve (projected Newton) against jaxopt's projected gradient, with a
    bound active, and its implicit derivatives against central differences."""
    with jax.enable_x64(True):
        law = jax.tree.map(jnp.asarray, TRUE)
        cons = jax.tree.map(jnp.asarray, Constraints.create(3, lower=[0.0, 0.0, 0.25], upper=[1.0, 0.5, 1.0]))
        w = solve_weights(law, 3.0, cons)
        reference = solve_weights_pg(law, 3.0, cons)
        np.testing.assert_allclose(w, reference, atol=1e-6)
        assert abs(float(w[1]) - 0.5) < 1e-12 or abs(float(w[2]) - 0.25) < 1e-12  # a bound is active
        # One directional derivative: the budget and t_01 together (a JVP through the solve).
        tangent = jax.tree.map(jnp.zeros_like, law)._replace(transfer=jnp.zeros((3, 3)).at[0, 1].set(1.0))
        _, dw = jax.jvp(lambda p, n: solve_weights(p, n, cons), (law, 3.0), (tangent, 1.0))
        eps = 1e-5
        bump = lambda s: (law._replace(transfer=law.transfer.at[0, 1].add(s)), 3.0 + s)
        fd = (solve_weights(*bump(eps), cons) - solve_weights(*bump(-eps), cons)) / (2 * eps)
        np.testing.assert_allclose(dw, fd, atol=1e-6)
        assert np.max(np.abs(dw)) > 1e-3  # the direction moves the weights


def test_transfer_law_recovered_from_4k1_runs():
    """Noiseless 4k+1 runs of a transfer law: the transfer family wins out of fold, predicts
    other budgets and mixtures, and its optimum is the true one (half-L1 < 0.01; 0.02 at 4x the budget)."""
    fit = fit_table(table_4k1(), jax.random.key(0), CFG)
    assert fit.family == "transfer"
    assert fit.scores["transfer"]["rmse"] < 0.2 * fit.scores["paper"]["rmse"]
    assert fit.scores["transfer"]["rmse"] < 5e-3
    cons = Constraints.create(3)
    # At the table's budget, and at four times it (extrapolation in N).
    for budget, tol in ((3.0, 0.01), (12.0, 0.02)):
        assert half_l1(solve_sweep(fit.params, [budget], cons)[0], solve_sweep(TRUE, [budget], cons)[0]) < tol
    other = np.random.default_rng(1).dirichlet(np.ones(3), 20) * 6.0
    np.testing.assert_allclose(predict(fit, other), losses_of(TRUE, other), rtol=0.015)


def test_transfer_law_recovered_from_a_swarm_with_zero_tokens_and_an_unmeasured_domain():
    """A Dirichlet swarm at two budgets, some domains at 0 tokens, the third domain trained
    but never measured (RegMix's case): it gets no law and still transfers."""
    rng = np.random.default_rng(3)
    weights = rng.dirichlet(np.full(3, 0.6), 16)
    weights[:3, 0] = 0.0  # zero-token runs
    weights /= weights.sum(axis=1, keepdims=True)
    tokens = weights * np.where(np.arange(16) % 2 == 0, 3.0, 6.0)[:, None]
    loss = losses_of(TRUE, tokens)
    loss[:, 2] = np.nan
    table = RunTable(DOMAINS, tokens, loss, tuple(range(2, 18)), "swarm")
    fit = fit_table(table, jax.random.key(1), CFG)
    assert tuple(fit.has_law) == (True, True, False)
    from mixjax.mixing.fit.result import UNMEASURED_NOTE

    assert fit.diagnostics[2].notes == [UNMEASURED_NOTE] and not any("never measured" in n for n in fit.notes)  # said once
    assert fit.family == "transfer" and fit.scores["transfer"]["rmse"] < 0.02
    pred = predict(fit, np.array([[1.0, 1.0, 1.0], [0.0, 2.0, 1.0]]))
    assert np.all(np.isnan(pred[:, 2]))
    np.testing.assert_allclose(pred[:, :2], losses_of(TRUE, np.array([[1.0, 1.0, 1.0], [0.0, 2.0, 1.0]]))[:, :2], atol=0.02)
    # The result round-trips through its JSON dict.
    back = Fit.from_dict(fit.to_dict())
    np.testing.assert_allclose(predict(back, tokens)[:, :2], predict(fit, tokens)[:, :2])


def test_family_table_and_the_non_extrapolating_note():
    """Runs at one budget generated by the Data Mixing Laws form: every family is scored on
    the same folds; the default keeps an extrapolating family and says exp is clearly better."""
    rng = np.random.default_rng(5)
    r = rng.dirichlet(np.ones(3), 16)
    t = np.array([[-2.0, 0.5, 0.3], [0.8, -1.5, -0.4], [0.2, 0.6, -2.5]])
    loss = 1.5 + np.exp(0.3 + r @ t.T) + 0.002 * rng.standard_normal((16, 3))
    table = RunTable(DOMAINS, r, loss, tuple(range(16)), "dml")
    fit = fit_table(table, jax.random.key(2), FitConfig())
    assert set(fit.scores) == {"paper", "transfer", "exp"}
    assert fit.validation["folds"] == 16  # leave-one-run-out (16 <= max_folds)
    assert fit.family in ("paper", "transfer")
    assert fit.scores["exp"]["rmse"] < 0.5 * fit.scores[fit.family]["rmse"]
    assert any("'exp' family" in n and "cannot extrapolate" in n for n in fit.notes)
    assert "*" + fit.family in fit.score_table()
    np.testing.assert_allclose(predict(fit, r, family="exp"), loss, atol=0.01)


def test_one_non_monotone_run_does_not_produce_a_wild_extrapolation():
    """Issue #14 item 6: a 4k+1 paper-law table (losses ~2.2, steps ~0.025) where one run
    breaks monotonicity (domain a's 0.5x run measured 0.03 high, above its 0.25x run).
    Leaving any run out must not send the fit to beta's bound: every leave-one-run-out
    error stays within 2.5x the defect (the two-stage fit_law misses by 0.093 here)."""
    paper = LawParams(beta=np.array([0.05, 0.045, 0.045]), c=np.array([1.15, 0.75, 1.0]),
                      gamma=np.array([0.2, 0.05, 0.12]), alpha=np.array([0.48, 0.44, 0.47]), e=np.array([1.1, 1.5, 1.27]))
    table = table_4k1(TransferLawParams.from_paper(paper), factors=(0.25, 0.5, 2.0, 3.0))
    loss = table.losses.copy()
    loss[2, 0] += 0.03
    assert loss[2, 0] > loss[1, 0]  # not monotone
    table = dataclasses.replace(table, losses=loss)
    fit = fit_table(table, jax.random.key(4), CFG)
    errors = np.array(fit.diagnostics[0].oof_errors)
    assert np.max(np.abs(errors)) < 0.075, errors  # held out: the 0.5x run or its neighbour 0.25x
    assert np.max(np.abs(np.delete(errors, [1, 2]))) < 0.01, errors  # the other runs stay accurate
    assert float(np.asarray(fit.params.beta)[0]) < 0.9 * CFG.families.beta_bounds[1]


@pytest.mark.slow
def test_probes_settle_a_disagreement():
    """Issue #14 item 4. 4k+1 runs (noise 0.05 nats) of a transfer law; target budget 10x the
    table's. The paper's law and the extension are within out-of-fold noise of each other
    and their optima differ; the chosen fit misses the true optimum by 0.097; the probes
    (each candidate's optimum and a discriminating mixture, trained at the target budget)
    pick the transfer law, and the final weights are within 0.01 (half-L1) of the true
    optimum (0.0038). Not every such table is settled: of six scanned (noise 0.03 / 0.05,
    seeds 1-3), two disagreed; in the other (noise 0.03, seed 3) the probes chose the
    paper's law (probe RMSE 0.273 vs 0.307) and the final weights missed by 0.080."""
    from mixjax.mixing.mixture import settle_with_probes
    from mixjax.mixing.selection import propose_probes, variant_disagreement

    t0 = np.array([[0.0, 1.8, 0.2], [0.3, 0.0, 1.7], [1.0, 1.0, 0.0]])
    true = TransferLawParams(beta=np.array([0.5, 0.6, 0.4]), c=np.array([3.0, 2.5, 3.5]), gamma=0.8 * np.array([0.4, 0.3, 0.5]),
                             alpha=np.array([0.6, 0.5, 0.7]), e=np.array([1.0, 1.2, 0.8]),
                             transfer=np.where(np.eye(3) > 0, 0.0, 1.0 + 0.8 * (t0 - 1.0)), rho=np.ones(3))
    noise, budget = 0.05, 30.0
    cfg = CFG
    train = table_4k1(true, noise=noise, seed=1)
    fit = fit_table(train, jax.random.key(0), cfg)
    assert set(fit.candidates) == {"paper", "transfer"}
    cons = Constraints.create(3)
    truth = solve_sweep(true, [budget], cons)[0]
    report = variant_disagreement(fit, budget, cons)
    assert report["disagree"] and "cannot choose" in report["message"]
    assert half_l1(solve_sweep(fit.params, [budget], cons)[0], truth) > 0.05  # the table alone misses
    probes = propose_probes(fit, budget, cons, jax.random.key(1))
    assert {"optimum:paper", "optimum:transfer", "discriminating"} <= set(probes)
    tokens = np.array([w * budget for w in probes.values()])
    loss = losses_of(true, tokens) + noise * np.random.default_rng(101).standard_normal(tokens.shape)
    probe_table = RunTable(DOMAINS, tokens, loss, tuple(range(len(tokens))), "probes")
    final, settle = settle_with_probes(fit, train, probe_table, cfg, jax.random.key(2))
    assert settle["chosen"] == "transfer" and final.family == "transfer"
    assert settle["scores"]["transfer"] < settle["scores"]["paper"]
    assert half_l1(solve_sweep(final.params, [budget], cons)[0], truth) < 0.01


def test_diagnostics_flag_beta_at_its_bound_and_large_leave_one_out_errors():
    """A family fit whose beta sits on its bound (the runs barely bend the curve) or whose
    leave-one-out error exceeds max_loo_rel_error is POORLY IDENTIFIED, as the two-stage fit."""
    from mixjax.mixing.selection import _diagnostics

    table = table_4k1(noise=1e-4)
    fit = fit_table(table, jax.random.key(0), FitConfig(families=FamilyConfig(scored=("paper",)), family="paper"))
    measured = fit.has_law
    none = np.full((len(table.tokens), int(measured.sum())), np.nan)
    clean = _diagnostics(fit, table, none, measured)
    assert not any(d.poorly_identified for d in clean)
    beta = np.asarray(fit.params.beta).copy()
    beta[0] = fit.config.families.beta_bounds[1]
    at_bound = _diagnostics(dataclasses.replace(fit, params=fit.params._replace(beta=beta)), table, none, measured)
    assert at_bound[0].poorly_identified and "is at its bound" in at_bound[0].notes[0]
    assert not at_bound[1].poorly_identified
    oof = np.where(np.isnan(table.losses[:, measured]), np.nan, 0.05 * table.losses[:, measured])  # 5% errors
    loose = _diagnostics(fit, table, oof, measured)
    assert all(d.poorly_identified and "leave-one-out error 5.00% exceeds 1.00%" in d.notes[-1] for d in loose)


def test_a_compile_that_fails_ahead_is_not_lost(monkeypatch):
    """The families' programs compile in a worker thread; its error reaches the caller."""
    import mixjax.mixing.fit.table as table_module

    def broken(*args, **kwargs):
        raise RuntimeError("compile failed in the worker")

    monkeypatch.setattr(table_module, "compile_group", broken)
    from mixjax.mixing.design import perturbation_runs

    tokens = perturbation_runs(np.ones(3))
    table = RunTable(DOMAINS, tokens, losses_of(TRUE, tokens), tuple(range(2, 2 + len(tokens))), "design")
    with pytest.raises(RuntimeError, match="compile failed in the worker"):
        fit_table(table, jax.random.key(0), CFG)



def test_lightgbm_reference_scores_out_of_fold_without_scikit_learn():
    """FamilyConfig(reference_gbm=True): LightGBM's out-of-fold score beside the families'
    (through LightGBM's own API: its sklearn wrapper crashed where scikit-learn is absent)."""
    pytest.importorskip("lightgbm")
    from mixjax.mixing.fit import DecisionConfig

    rng = np.random.default_rng(0)
    tokens = rng.dirichlet(np.ones(3), 40) * 3.0
    losses = 1.0 + 0.8 * (tokens + 0.3 * (tokens.sum(1, keepdims=True) - tokens) ** 0.6 + 1e-3) ** -0.3
    table = RunTable(("a", "b", "c"), tokens, losses, tuple(range(2, 42)), "swarm")
    fit = fit_table(table, jax.random.key(0), FitConfig(families=FamilyConfig(reference_gbm=True), decision=DecisionConfig(samples=0)))
    gbm = fit.scores["gbm"]
    assert gbm["reference_only"] and 0 < gbm["rmse"] < 0.05 and gbm["total_spearman"] > 0.3
    assert fit.scores["paper"]["rmse"] < 0.1 * gbm["rmse"]  # 40 runs of a law of the paper's form: the law predicts them far better
    assert fit.family != "gbm"
