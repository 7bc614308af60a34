"""#14 item 1-2, 5: real tables load as published; one fit configuration; predictions."""

import json
import time

import jax
import numpy as np
import pytest

from mixjax.fit import main
from mixjax.mixing.baselines import grid_candidates, simplex_grid
from mixjax.mixing.design import perturbation_runs
from helpers import law_losses
from helpers import two_stage_config
from mixjax.mixing.fit import FamilyConfig, Fit, FitConfig, FoldConfig, TwoStageConfig, predict
from mixjax.mixing.fit.result import UNMEASURED_NOTE
from mixjax.mixing.mixture import fit_table as fit_run_table
from mixjax.mixing.law import LawParams
from mixjax.mixing.runs import RunTable, domain_data, read_run_table, write_run_table
from mixjax.mixing.solve import Constraints
from mixjax.pipeline.stages import fit_runs, solve_mixture

TRUTH = LawParams(
    beta=np.array([0.3, 0.25, 0.35]), c=np.array([1.0, 0.8, 1.2]), gamma=np.array([0.3, 0.2, 0.4]),
    alpha=np.array([0.5, 0.5, 0.5]), e=np.array([1.2, 1.0, 0.9]),
)
FAST = FitConfig(two_stage=TwoStageConfig(num_starts=8))


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("MIXJAX_CACHE_DIR", "")


def _4k1(base=6000.0, noise=1e-5, seed=0):
    tokens = perturbation_runs([base] * 3)
    losses = law_losses(TRUTH, tokens) + np.random.default_rng(seed).normal(0, noise, tokens.shape)
    return tokens, losses


def test_zero_token_run_is_data_not_an_error(tmp_path):
    tokens, losses = _4k1()
    zero = np.array([[0.0, 6000.0, 6000.0]])  # a run without domain a: a's transfer-only loss
    tokens = np.concatenate([tokens, zero])
    losses = np.concatenate([losses, law_losses(TRUTH, zero)])
    write_run_table(tmp_path / "runs.csv", "abc", tokens, losses)
    table = read_run_table(tmp_path / "runs.csv")
    assert table.tokens[-1, 0] == 0.0
    a = domain_data(table)[0]
    assert 0.0 in a.in_domain  # in a's own series (others at base)
    fit = fit_run_table(table, jax.random.key(0), two_stage_config(num_starts=8, alpha_mode="prior"))
    # The transfer-only point is fitted like any other: residual at the noise level (1e-5).
    assert abs(fit.diagnostics[0].residuals[0]) < 3e-5
    assert fit.diagnostics[0].num_runs == 14  # 6 own-series points (0 included) + 8 cross runs


def _unmeasured_table(tmp_path):
    tokens, losses = _4k1()
    extra = np.full((len(tokens), 1), 3000.0)  # trained in every run, never measured
    path = tmp_path / "runs.csv"
    write_run_table(path, ["a", "b", "c", "web"], np.concatenate([tokens, extra], 1), np.concatenate([losses, np.full_like(extra, np.nan)], 1))
    text = path.read_text().replace(",loss.web", "").replace(",\n", "\n")  # no loss.web column at all
    path.write_text(text)
    return path


def test_trained_but_unmeasured_domain_gets_no_law_and_counts_in_transfer(tmp_path, capsys):
    path = _unmeasured_table(tmp_path)
    table = read_run_table(path)
    assert table.domains == ("a", "b", "c", "web") and list(table.measured) == [True, True, True, False]
    # web's 3000 tokens are part of every other domain's M.
    assert domain_data(table)[0].other == 6000.0 * 2 + 3000.0
    assert main(["--runs", str(path), "--budget", "30000", "--json", "--bootstrap", "0", "--starts", "8", "--predict", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["diagnostics"]["domains"]["web"]["measured"] is False
    assert UNMEASURED_NOTE in out["diagnostics"]["domains"]["web"]["notes"]
    w = out["weights"]["30000"]
    assert sum(w) == pytest.approx(1.0) and w[3] == pytest.approx(0.0, abs=1e-6)  # importance 0: no tokens for it
    assert all(row[3] is None for row in out["predictions"]["losses"])
    assert main(["--runs", str(path), "--budget", "30000", "--bootstrap", "0", "--starts", "8"]) == 0
    assert "web" in capsys.readouterr().out


def test_repeated_base_with_partial_losses(tmp_path):
    tokens, losses = _4k1()
    repeat = losses[:1].copy()
    repeat[0, 1:] = np.nan  # a second base run, only domain a measured
    repeat[0, 0] += 0.002
    write_run_table(tmp_path / "runs.csv", "abc", np.concatenate([tokens, tokens[:1]]), np.concatenate([losses, repeat]))
    data = domain_data(read_run_table(tmp_path / "runs.csv"))
    base_a = data[0].loss[list(data[0].in_domain).index(6000.0)]
    assert base_a == pytest.approx(losses[0, 0] + 0.001)  # averaged over the two measured repeats
    base_b = data[1].loss[list(data[1].in_domain).index(6000.0)]
    assert base_b == pytest.approx(losses[0, 1])  # the unmeasured repeat is not a point of b


def test_grid_baseline_is_bounded_at_many_domains():
    start = time.perf_counter()
    points, kind = grid_candidates(13, 0.05)
    assert time.perf_counter() - start < 2.0
    assert points.shape == (20_013, 13) and "Dirichlet" in kind and "225,792,840" in kind
    np.testing.assert_allclose(points.sum(axis=1), 1.0)
    assert grid_candidates(3, 0.05)[0].shape == (231, 3)
    with pytest.raises(ValueError, match="3,108,105 points"):
        simplex_grid(9, 0.05, max_points=1_000_000)


def test_cli_reproduces_the_pipeline_weights_from_fit_json(tmp_path, capsys):
    tokens, losses = _4k1(noise=3e-4)
    runs = tmp_path / "runs.csv"
    write_run_table(runs, ("instruct", "math", "code"), tokens, losses)
    cfg = FitConfig(families=FamilyConfig(num_starts=3, transfer_prior=1.5), folds=FoldConfig(max_leave_one_out=7, kfold=5))  # not the defaults
    fit = fit_runs(runs, 3, cfg)
    (tmp_path / "fit.json").write_text(json.dumps(fit.to_dict()))
    assert Fit.from_dict(json.loads((tmp_path / "fit.json").read_text())).config == cfg
    available = [20000.0, 30000.0, 40000.0]
    constraints = Constraints.create(3, available=available)
    solution = solve_mixture(fit, [18000, 36000], constraints, 3)
    args = ["--runs", str(runs), "--budget", "18000", "36000", "--fit-config", str(tmp_path / "fit.json"), "--seed", "3",
            "--available", "instruct=20000", "math=30000", "code=40000", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert FitConfig.from_dict(out["config"]) == cfg
    for budget in ("18000", "36000"):
        np.testing.assert_allclose(out["weights"][budget], solution["weights"][budget], atol=1e-6)


def test_one_fit_config_default_everywhere():
    from mixjax.fit import fit_config, parse_args
    from mixjax.pipeline.config import ExperimentConfig

    assert ExperimentConfig.__dataclass_fields__["fit"].default == FitConfig()
    assert fit_config(parse_args(["--runs", "x", "--budget", "1"])) == FitConfig()


def test_predictions_follow_the_other_tables_row_order(tmp_path, capsys):
    tokens, losses = _4k1()
    write_run_table(tmp_path / "train.csv", "abc", tokens, losses)
    other = np.array([[9000.0, 3000.0, 6000.0], [1000.0, 1000.0, 16000.0]])
    (tmp_path / "other.csv").write_text("tokens.a,tokens.b,tokens.c\n" + "\n".join(",".join(map(str, r)) for r in other) + "\n")
    assert main(["--runs", str(tmp_path / "train.csv"), "--budget", "18000", "--predict", str(tmp_path / "other.csv"),
                 "--json", "--starts", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["predictions"]["domains"] == ["a", "b", "c"]
    np.testing.assert_allclose(out["predictions"]["losses"], law_losses(TRUTH, other), atol=2e-3)
    from mixjax.fit import fit_config, parse_args

    cfg = fit_config(parse_args(["--runs", "x", "--budget", "1", "--starts", "8"]))
    fit = fit_run_table(read_run_table(tmp_path / "train.csv"), jax.random.key(0), cfg)
    np.testing.assert_allclose(out["predictions"]["losses"], predict(fit, other[:, [2, 0, 1]], ("c", "a", "b")), rtol=1e-9)


def test_a_family_that_cannot_extrapolate_is_never_solved(capsys):
    from mixjax.mixing.mixture import fit_table

    with pytest.raises(ValueError, match="family must be one of"):
        FitConfig(family="exp")
    tokens, losses = _4k1()
    with pytest.raises(ValueError, match="none extrapolates in N"):
        fit_table(RunTable(tuple("abc"), tokens, losses, tuple(range(len(tokens)))), jax.random.key(0), FitConfig(families=FamilyConfig(scored=("exp",))))


def test_two_stage_options_are_refused_under_another_family(capsys):
    """--bootstrap, --procedure, --alpha-mode and --alpha-prior configure the paper's two-stage
    fit: under another --family they would do nothing, so they are refused (exit 2, naming
    the combination that works)."""
    for flags in (["--bootstrap", "8"], ["--procedure", "paper"], ["--alpha-mode", "prior"], ["--alpha-prior", "0.4"]):
        assert main(["--runs", "examples/paper_worked_example.csv", "--budget", "20", "--family", "transfer", *flags]) == 2
        err = capsys.readouterr().err
        assert f"use --family two-stage {flags[0]}" in err and len(err.strip().splitlines()) == 1


def test_two_stage_options_alone_imply_the_two_stage_fit_and_say_so(capsys):
    """`--procedure paper` without --family fits the paper's two-stage procedure (it gave the
    transfer family's weights, silently, before), and says so on stderr."""
    from mixjax.fit import check_flags, fit_config, parse_args

    args = parse_args(["--runs", "x", "--budget", "20", "--procedure", "paper"])
    assert check_flags(args) == ["--procedure is an option of the paper's two-stage fit: fitting --family two-stage"]
    cfg = fit_config(args)
    assert cfg.family == "paper" and cfg.paper_fit == "two-stage" and cfg.two_stage.procedure == "paper"
    assert main(["--runs", "examples/paper_worked_example.csv", "--budget", "200", "--procedure", "paper", "--alpha-mode", "prior", "--json"]) == 0
    captured = capsys.readouterr()
    assert "fitting --family two-stage" in captured.err
    implied = json.loads(captured.out)
    assert main(["--runs", "examples/paper_worked_example.csv", "--budget", "200", "--family", "two-stage", "--procedure", "paper",
                 "--alpha-mode", "prior", "--json"]) == 0
    explicit = json.loads(capsys.readouterr().out)
    assert implied["weights"] == explicit["weights"]
    assert implied["params"]["if"]["beta"] < 0.1  # the reference procedure's small betas, not the transfer family's


@pytest.mark.parametrize("flags,message", [
    (["--export", "json", "--grid-step", "0.1"], "--grid-step"),
    (["--export", "json", "--predict", "x.csv"], "--predict"),
    (["--alpha-prior", "0.4", "--alpha-mode", "fitted"], "--alpha-prior"),
])
def test_flags_without_effect_together_are_refused(capsys, flags, message):
    assert main(["--runs", "examples/paper_worked_example.csv", "--budget", "20", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_json_and_export_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--runs", "examples/paper_worked_example.csv", "--budget", "20", "--json", "--export", "json"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
