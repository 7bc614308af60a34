"""The decision (issue "Decisions the data support"): plausible laws, a recommendation
pulled toward the prior that does no harm, how sure it is, and the runs that would settle it."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import law_losses

from mixjax.fit import main
from mixjax.mixing.design import perturbation_runs
from mixjax.mixing.fit import DecisionConfig, FitConfig
from mixjax.mixing.law import LawParams
from mixjax.mixing.mixture import optimise_mixture
from mixjax.mixing.runs import RunTable

EXAMPLE = Path(__file__).parents[1] / "examples" / "paper_worked_example.csv"
TRUTH = LawParams(beta=np.array([0.5, 0.3, 0.4]), c=np.array([2.0, 1.0, 3.0]), gamma=np.array([0.2, 0.1, 0.3]),
                  alpha=np.array([0.5, 0.5, 0.5]), e=np.array([1.0, 1.5, 0.8]))


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("MIXJAX_CACHE_DIR", "")


def _table(noise: float, seed: int = 0) -> RunTable:
    tokens = perturbation_runs(np.ones(3))
    losses = law_losses(TRUTH, tokens) * (1 + noise * np.random.default_rng(seed).standard_normal(tokens.shape))
    return RunTable(("a", "b", "c"), tokens, losses, tuple(range(2, len(tokens) + 2)), "truth")


def test_precise_runs_recommend_the_optimum_and_say_how_sure():
    """At 0.1% noise on the paper's law the plausible laws agree: the recommendation is
    close to the true optimum, beats uniform in (nearly) every plausible law, and the
    gain's interval is positive."""
    from mixjax.mixing.solve import solve_sweep

    report = optimise_mixture(_table(1e-3), [30.0], key=jax.random.key(0), grid_step=None)
    b = report.budgets[0]
    truth = solve_sweep(TRUTH, [30.0])[0]
    assert 0.5 * np.abs(b.weights - truth).sum() < 0.05, (b.weights, truth)
    gain = b.decision.gains["uniform"]
    assert b.decision.num_laws >= 32 and gain["p_better"] > 0.9 and gain["low"] > 0
    assert np.isfinite(b.decision.strength) and "gain over uniform" in b.decision.message


def test_when_the_runs_cannot_tell_the_answer_is_the_prior_and_says_so():
    """The paper's worked example: the plausible laws disagree (code's weight 0.0003 under
    the chosen law, 0.37 under the tied paper family); the recommendation is uniform, the
    output says the runs cannot tell, and the JSON states the optimum's gain over uniform
    with its interval and probability."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--runs", str(EXAMPLE), "--budget", "200", "--json", "--grid-step", "0"]) == 0
    out = json.loads(buf.getvalue())
    d = out["decision"]["200"]
    assert set(d["families"]) == {"paper", "transfer"}  # tied by practical equivalence (OOF RMSE within 10%)
    np.testing.assert_allclose(out["weights"]["200"], [1 / 3] * 3, atol=1e-9)
    assert out["optimum"]["200"][2] < 0.01  # the chosen law alone would drop code
    assert "cannot tell" in d["message"] and d["strength"] == float("inf")
    g = d["optimum_gains"]["uniform"]
    assert set(g) == {"mean", "low", "high", "p_better", "relative"} and g["low"] < 0 < g["high"] and 0 < g["p_better"] < 1
    assert "200" in out["disagreement"]  # the candidates disagree, and the output says so


def test_the_prior_is_stated_and_proportional_needs_availability(capsys):
    assert main(["--runs", str(EXAMPLE), "--budget", "20", "--prior", "proportional"]) == 2
    assert "--available" in capsys.readouterr().err
    cfg = FitConfig(decision=DecisionConfig(prior="proportional"))
    report = optimise_mixture(_table(3e-2, seed=1), [30.0], cfg=cfg, key=jax.random.key(0), grid_step=None)
    assert report.budgets[0].decision.prior_name == "uniform"  # no availability given: proportional is undefined


def test_propose_gives_distinct_mixtures_in_the_json(capsys):
    assert main(["--runs", str(EXAMPLE), "--budget", "200", "--json", "--grid-step", "0", "--propose", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    w = np.asarray(out["proposals"]["weights"])
    assert w.shape == (3, 3) and np.allclose(w.sum(axis=1), 1) and np.all(w >= -1e-12)
    assert out["proposals"]["budget"] == pytest.approx(1.98)  # the base run's budget (3 x 0.66)
    assert min(0.5 * np.abs(w[i] - w[j]).sum() for i in range(3) for j in range(i + 1, 3)) > 0.02


def test_max_epochs_scales_availability(capsys):
    args = ["--runs", str(EXAMPLE), "--budget", "20", "--json", "--grid-step", "0", "--available", "if=100", "math=100", "code=2"]
    assert main(args) == 0
    one = json.loads(capsys.readouterr().out)["optimum"]["20"]
    assert main([*args, "--max-epochs", "4"]) == 0
    four = json.loads(capsys.readouterr().out)["optimum"]["20"]
    assert one[2] <= 0.1 + 1e-9 and four[2] <= 0.4 + 1e-9  # code's cap: 2 (x4) of 20 tokens
    assert main(["--runs", str(EXAMPLE), "--budget", "20", "--max-epochs", "4"]) == 2
