"""Targets (loss columns no run trains on) and objectives over domains and targets."""

import json

import jax
import numpy as np
import pytest

from mixjax.fit import main
from mixjax.mixing.fit.result import predict
from mixjax.mixing.mixture import optimise_mixture
from mixjax.mixing.objective import objective_importance
from mixjax.mixing.runs import RunTableError, read_run_table, write_run_table
from mixjax.mixing.solve import Constraints

NAMES = ("a", "b", "c")
TRANSFER = np.array([2.0, 0.5, 0.5])  # the target learns most from domain a


def _domains(x):
    beta, c, g, al, e = np.array([0.3, 0.25, 0.35]), np.array([1.0, 1.2, 0.9]), np.array([0.3, 0.2, 0.4]), np.array([0.6, 0.5, 0.7]), np.array([1.5, 1.2, 1.0])
    return c * (x + g * (x.sum(1, keepdims=True) - x) ** al) ** -beta + e


def _target(x):
    return 0.8 * (0.5 * (x @ TRANSFER) ** 0.8) ** -0.3 + 1.3


def _design(k=3):
    rows = [np.ones(k)] + [np.where(np.arange(k) == i, s, 1.0) for i in range(k) for s in (0.25, 0.5, 2, 3)]
    return np.array(rows)


@pytest.fixture
def table_path(tmp_path):
    x = _design()
    rng = np.random.default_rng(0)
    losses = np.concatenate([_domains(x), _target(x)[:, None]], axis=1) + rng.normal(0, 2e-4, (len(x), 4))
    path = tmp_path / "runs.csv"
    write_run_table(path, NAMES, x, losses, targets=("bench",))
    return path


def test_a_loss_column_without_tokens_is_a_target(table_path):
    table = read_run_table(table_path)
    assert table.domains == NAMES and table.targets == ("bench",)
    assert table.losses.shape == (13, 4) and table.output_tokens.shape == (13, 4)
    assert np.all(table.output_tokens[:, 3] == 0)


def test_a_target_never_measured_is_refused(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("tokens.a,tokens.b,loss.a,loss.b,loss.t\n1,1,2,2,\n2,1,1.9,2.1,\n")
    with pytest.raises(RunTableError, match="target loss.t .* is empty in every run"):
        read_run_table(path)


def test_the_target_objective_finds_the_targets_optimum(table_path):
    """The target's law recovers its held-out losses, and minimising it alone puts the
    weight on the domain it learns from (the true optimum is all of a)."""
    table = read_run_table(table_path)
    importance = objective_importance(table.outputs, 3, table.measured, {"bench": 1.0})
    report = optimise_mixture(table, [3.0], Constraints.create(3, importance=importance), key=jax.random.key(0), grid_step=None)
    fit, b = report.fit, report.budgets[0]
    assert fit.targets == ("bench",) and len(fit.diagnostics) == 4
    mixtures = np.random.default_rng(1).dirichlet(np.ones(3), 20) * 3.0
    rel = np.abs(predict(fit, mixtures)[:, 3] - _target(mixtures)) / _target(mixtures)
    assert np.median(rel) < 0.003 and rel.max() < 0.02  # 20 mixtures up to the corners; the 4k+1 runs move one domain at a time
    assert b.optimum[0] > 0.95
    truth = lambda w: float(_target(np.asarray(w)[None] * 3.0)[0])
    assert truth(b.weights) < truth(np.full(3, 1 / 3)) - 0.05  # uniform's loss is 0.1 nats higher


def test_the_default_objective_ignores_targets(table_path):
    table = read_run_table(table_path)
    s = objective_importance(table.outputs, 3, table.measured)
    assert s.tolist() == [1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("objective, message", [
    (["nope=1"], "--objective: unknown domain 'nope' (have: a, b, c, bench)"), (["bench=0"], "every weight is 0"), (["bench=-1"], "--objective bench"),
])
def test_bad_objectives_exit_2(table_path, capsys, objective, message):
    assert main(["--runs", str(table_path), "--budget", "3", "--objective", *objective]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_objective_in_json(table_path, capsys):
    assert main(["--runs", str(table_path), "--budget", "3", "--objective", "bench=1", "a=0.5", "--json", "--grid-step", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objective"] == {"a": 0.5, "b": 0.0, "c": 0.0, "bench": 1.0}
    assert out["targets"] == ["bench"] and len(out["predicted_losses"]["3"]) == 4
    assert main(["--runs", str(table_path), "--budget", "3", "--objective", "bench=1", "--importance", "a=1"]) == 2


def test_a_target_keeps_its_own_family_under_the_paper_law(table_path):
    """--family paper for the domains: the target's law is still the family that predicts it
    out-of-fold (the paper's law would make it a function of the budget alone), and says so."""
    table = read_run_table(table_path)
    from mixjax.mixing.fit.config import FitConfig

    importance = objective_importance(table.outputs, 3, table.measured, {"bench": 1.0})
    report = optimise_mixture(table, [3.0], Constraints.create(3, importance=importance), FitConfig(family="paper"),
                              key=jax.random.key(0), grid_step=None)
    fit = report.fit
    assert fit.family == "paper" and "its law is the 'transfer' family's" in fit.diagnostics[3].notes[0]
    assert report.budgets[0].optimum[0] > 0.95
    # The domains' laws are the paper family's, written in the transfer form: t = 1 among the
    # domains, rho = 1, nothing transferred from the target's (empty) column.
    t = np.asarray(fit.params.transfer)
    assert np.allclose(t[:3, :3], 1 - np.eye(3)) and np.allclose(t[:, 3], 0) and np.allclose(fit.params.rho[:3], 1)


def test_a_target_named_like_a_domain_is_refused(tmp_path):
    """loss.B beside tokens.b is a typo, not a target: it would leave b never measured."""
    path = tmp_path / "runs.csv"
    path.write_text("tokens.a,tokens.b,loss.a,loss.B\n1,1,2,2\n2,1,1.9,2.1\n1,2,2.1,1.9\n")
    with pytest.raises(RunTableError, match="column loss.B has no tokens.B column but matches domain 'b'"):
        read_run_table(path)


def test_a_table_measuring_only_the_target(tmp_path, capsys):
    """RegMix's case: the training domains' losses are not measured, the objective is the target."""
    x = _design()
    path = tmp_path / "runs.csv"
    write_run_table(path, NAMES, x, np.concatenate([np.full((len(x), 3), np.nan), _target(x)[:, None]], axis=1), targets=("bench",))
    assert main(["--runs", str(path), "--budget", "3"]) == 2  # the default objective (the domains) is empty
    assert "no training domain has a measured loss" in capsys.readouterr().err
    assert main(["--runs", str(path), "--budget", "3", "--objective", "bench=1", "--json", "--grid-step", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["optimum"]["3"][0] > 0.95


def test_a_target_measured_in_few_runs_is_poorly_identified(table_path):
    table = read_run_table(table_path)
    losses = table.losses.copy()
    losses[4:, 3] = np.nan  # the target measured in the base run and a's three first perturbations only
    fit = optimise_mixture(type(table)(table.domains, table.tokens, losses, table.lines, "few", table.targets), [3.0],
                           Constraints.create(3, importance=[0, 0, 0, 1.0]), key=jax.random.key(0), grid_step=None).fit
    bench = fit.diagnostics[3]
    assert bench.poorly_identified and any("measured in 4 runs, too few" in n for n in bench.notes)


def test_the_library_default_objective_leaves_targets_out(table_path):
    """optimise_mixture without constraints minimises the domains' sum (targets at 0), as the CLI."""
    table = read_run_table(table_path)
    report = optimise_mixture(table, [3.0], key=jax.random.key(0), grid_step=None)
    w = report.budgets[0].optimum
    expected = float(np.sum(predict(report.fit, w[None] * 3.0)[0, :3]))
    assert report.budgets[0].optimum_objective == pytest.approx(expected, rel=1e-9)
    from mixjax.mixing.solve import solve_sweep

    assert solve_sweep(report.fit.params, [3.0], domains=NAMES).shape == (1, 3)
