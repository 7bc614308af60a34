"""Fit the mixing law to your own runs and print the optimal weights.

    python -m mixjax.fit --runs runs.csv --budget 5 20 200 [--json | --export FORMAT]

The table has one row per training run with ``tokens.<domain>`` and ``loss.<domain>``
columns (see mixjax/mixing/runs.py): the paper's 4k+1 design, a random swarm of
mixtures, or both. Budgets are in the table's token units. The fit's configuration is
:class:`mixjax.mixing.fit.FitConfig`'s defaults (the pipeline's too), or a recorded one
(``--fit-config <experiment>/fit.json`` reproduces the pipeline's weights), with the
flags below overriding single fields. Compiled code is cached across calls
(``MIXJAX_CACHE_DIR`` moves the cache, an empty value turns it off). Exit code 2 on bad
input, with a one-line error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

from mixjax.cache import enable_compilation_cache
from mixjax.cli import check_budgets, per_domain_values
from mixjax.mixing.decision import propose_runs
from mixjax.mixing.export import FORMATS, export_tokens_per_example, export_weights
from mixjax.mixing.fit.config import ALPHA_MODES, FAMILY_CHOICES, PROCEDURES, FitConfig
from mixjax.mixing.fit.result import Fit, predict
from mixjax.mixing.mixture import MixtureReport, optimise_mixture
from mixjax.mixing.objective import objective_importance
from mixjax.mixing.runs import RunTableError, read_run_table
from mixjax.mixing.solve import Constraints

TWO_STAGE = "two-stage"  # --family two-stage: the paper family fitted by the paper's two-stage procedure
# Flags that configure the two-stage procedure alone (destination -> flag).
TWO_STAGE_FLAGS = {"procedure": "--procedure", "alpha_mode": "--alpha-mode", "alpha_prior": "--alpha-prior", "bootstrap": "--bootstrap"}


def _per_domain(values: list[str] | None, domains: tuple[str, ...], flag: str) -> list[float] | None:
    """A per-domain list from ``name=value`` pairs (None if not given; defaults fill the rest)."""
    if not values:
        return None
    given = per_domain_values(values, domains, flag, required=flag == "--available")
    default = {"--lower": 0.0, "--upper": 1.0, "--importance": 1.0}.get(flag, np.inf)
    return [given.get(d, default) for d in domains]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mixjax.fit", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="CSV or JSONL run table")
    p.add_argument("--budget", required=True, type=float, nargs="+", help="total token budget(s) N")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    out.add_argument("--export", choices=FORMATS, help="print the weights in this tool's format instead of the tables")
    p.add_argument("--importance", nargs="*", metavar="D=S", help="per-domain loss weight s_i (default 1)")
    p.add_argument("--objective", nargs="*", metavar="NAME=S",
                   help="what the solve minimises: sum of S x loss over these domains or targets (loss.<name> columns without"
                        " tokens.<name>), the others 0; default every measured domain at 1, targets at 0")
    p.add_argument("--available", nargs="*", metavar="D=TOKENS", help="tokens available per domain")
    p.add_argument("--lower", nargs="*", metavar="D=W", help="lower bound on a weight")
    p.add_argument("--upper", nargs="*", metavar="D=W", help="upper bound on a weight")
    p.add_argument("--grid-step", type=float, default=None, help="step of the grid baseline (default 0.05; 0: off)")
    p.add_argument("--fit-config", metavar="JSON", help="the fit's config: a pipeline's fit.json or a JSON of FitConfig fields")
    p.add_argument("--family", choices=(*FAMILY_CHOICES, TWO_STAGE),
                   help="law family: auto (the extrapolating family with the lowest out-of-fold error), paper, transfer,"
                        f" or {TWO_STAGE} (the paper family fitted by the paper's own two-stage procedure); default auto")
    p.add_argument("--starts", type=int, help=f"random starts of the two-stage fit, also the start of every law fit (default {FitConfig().two_stage.num_starts})")
    p.add_argument("--bootstrap", type=int, help="bootstrap refits for weight intervals (implies --family two-stage)")
    p.add_argument("--procedure", choices=PROCEDURES,
                   help="stage-1 statistic of the two-stage fit (implies --family two-stage): mixjax (log of the ratio of differences) or paper (the reference code's ratio of logs)")
    p.add_argument("--alpha-mode", choices=ALPHA_MODES,
                   help="two-stage fit (implies --family two-stage): alpha at the prior (own series), fitted (every run), or auto: by leave-one-run-out error")
    p.add_argument("--alpha-prior", type=float, default=None, help="two-stage fit: hold alpha at this value (implies --family two-stage --alpha-mode prior)")
    p.add_argument("--predict", metavar="TABLE", help="also predict every run of this table (tokens.<domain> columns; losses optional)")
    p.add_argument("--propose", type=int, metavar="R", help="also give R mixtures to train at the base run's budget that would most change the recommendation")
    p.add_argument("--prior", choices=("uniform", "proportional"), help="the mixture the recommendation is pulled toward (default uniform; proportional needs --available)")
    p.add_argument("--max-epochs", type=float, metavar="E", help="passes over each domain's available tokens a mixture may take (default 1; needs --available)")
    p.add_argument("--tokens-per-example", nargs="*", metavar="D=T",
                   help="mean tokens per example of each domain: --export maxtext|llama-factory|hf-datasets sample examples and need them")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def check_flags(args: argparse.Namespace) -> list[str]:
    """Refuse flags that would have no effect under the others; returns the notes of what
    a flag implies (printed to stderr).

    Raises:
      ValueError: naming the flag, why it has no effect, and the combination that works.
    """
    if args.export and args.grid_step:  # 0 (no grid) only saves time
        raise ValueError("--grid-step: the grid baseline is not part of an --export; drop --grid-step (or --export for the tables)")
    if args.export and args.predict:
        raise ValueError("--predict: predictions are not part of an --export; use --json or the tables with --predict")
    if args.export and args.propose:
        raise ValueError("--propose: proposals are not part of an --export; use --json or the tables with --propose")
    if args.objective is not None and args.importance is not None:
        raise ValueError("--importance and --objective both set the objective's weights: give one (--objective NAME=S ... covers targets too)")
    if args.max_epochs is not None and not args.available:
        raise ValueError("--max-epochs caps the passes over the available tokens: give --available too")
    if args.max_epochs is not None and not args.max_epochs > 0:
        raise ValueError(f"--max-epochs must be positive, got {args.max_epochs}")
    if args.prior == "proportional" and not args.available:
        raise ValueError("--prior proportional is proportional to the available tokens: give --available too")
    if args.alpha_prior is not None and args.alpha_mode not in (None, "prior"):
        raise ValueError(f"--alpha-prior holds alpha at a value; --alpha-mode {args.alpha_mode} would not: drop one of them")
    given = [flag for dest, flag in TWO_STAGE_FLAGS.items() if getattr(args, dest) is not None]
    if not given or args.family == TWO_STAGE:
        return []
    if args.family is not None:
        raise ValueError(f"{given[0]} is an option of the paper's two-stage fit; --family {args.family} does not use it:"
                         f" use --family {TWO_STAGE} {given[0]} ...")
    return [f"{given[0]} is an option of the paper's two-stage fit: fitting --family {TWO_STAGE}"]


def fit_config(args: argparse.Namespace) -> FitConfig:
    """FitConfig from ``--fit-config`` (or the defaults) with the flags that were given on top.

    Raises:
      ValueError: an unreadable config file, an unknown field, or flags that contradict it.
    """
    cfg = FitConfig()
    if args.fit_config:
        try:
            recorded = json.loads(Path(args.fit_config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--fit-config {args.fit_config}: {err}") from None
        if "params" in recorded and recorded.get("config") is None:
            raise ValueError(f"--fit-config {args.fit_config}: this fit.json has no recorded config; refit it")
        cfg = FitConfig.from_dict(recorded["config"] if "params" in recorded else recorded)
    two_stage = args.family == TWO_STAGE or any(getattr(args, d) is not None for d in TWO_STAGE_FLAGS)
    family = {"family": "paper", "paper_fit": "two-stage"} if two_stage else {"family": args.family, "paper_fit": "joint" if args.family else None}
    section = {"num_starts": args.starts, "bootstrap_samples": args.bootstrap, "procedure": args.procedure,
               "alpha_mode": "prior" if args.alpha_prior is not None else args.alpha_mode, "alpha_prior": args.alpha_prior}
    cfg = dataclasses.replace(cfg, two_stage=dataclasses.replace(cfg.two_stage, **{k: v for k, v in section.items() if v is not None}),
                              **{k: v for k, v in family.items() if v is not None})
    if args.prior:
        cfg = dataclasses.replace(cfg, decision=dataclasses.replace(cfg.decision, prior=args.prior))
    return cfg


def _law_lines(fit: Fit) -> list[str]:
    """The fitted-parameter table, one line per domain and target."""
    names = fit.outputs
    width = max(8, *(len(n) for n in names))
    how = f"family {fit.family}" + ("; M_i = (sum_j t_ij x_j^rho_i)^(1/rho_i)" if fit.family == "transfer" else "")
    if fit.config is not None and fit.config.two_stage_only:
        how = f"the paper's two-stage procedure, {fit.config.two_stage.procedure} stage 1"
    lines = [f"Fitted parameters (L = c (x + gamma M^alpha)^-beta + e; {how}):",
             f"  {'domain':<{width}} {'beta':>9} {'c':>9} {'gamma':>9} {'alpha':>7} {'e':>9} {'runs':>4} {'rmse':>9}"
             f" {'OOF rmse':>9} {'OOF max':>8} {'alpha':>7}"]
    p = fit.params
    for i, (name, diag) in enumerate(zip(names, fit.diagnostics)):
        if not diag.measured:
            lines.append(f"  {name:<{width}} (trained, never measured: no law of its own)")
            continue
        alpha = diag.two_stage.alpha_choice if diag.two_stage else ("target" if i >= len(fit.domains) else "fitted")
        lines.append(
            f"  {name:<{width}} {p.beta[i]:9.4g} {p.c[i]:9.4g} {p.gamma[i]:9.4g} {p.alpha[i]:7.3f}"
            f" {p.e[i]:9.4g} {diag.num_runs:4d} {diag.rmse:9.2e} {diag.oof_rmse:9.2e} {diag.oof_max_rel_error:8.2%} {alpha:>7}"
        )
    if fit.validation:
        v = fit.validation
        lines.append(f"  out-of-fold ({v['folds']}-fold over runs, {v['num_points']} losses): RMSE {v['oof_rmse']:.2e},"
                     f" Spearman {v['oof_spearman']:.3f}")
    return lines


def _budget_lines(b, names) -> list[str]:
    """One budget's optimum against the baselines, its interval, dw/dN and any disagreement."""
    lines = [f"\nBudget N = {b.budget:g}   (predicted objective, lower is better)",
             f"  {'mixture':<12} " + " ".join(f"{n:>{max(7, len(n))}}" for n in names) + f" {'total':>9}"]
    rows = [("recommended", b.weights, b.objective), ("law optimum", b.optimum, b.optimum_objective)]
    rows += [(n, w, b.baseline_objective[n]) for n, w in b.baselines.items()]
    for label, w, obj in rows:
        lines.append(f"  {label:<12} " + " ".join(f"{x:>{max(7, len(n))}.4f}" for x, n in zip(w, names)) + f" {obj:9.5f}")
    for name, why in b.infeasible_baselines.items():
        lines.append(f"  {name:<12} infeasible at this budget ({why}); not compared")
    if b.grid_kind:
        lines.append(f"  grid: {b.grid_kind}" + (f", {b.grid_skipped} infeasible points skipped" if b.grid_skipped else ""))
    if b.interval is not None:
        lo, hi = b.interval
        lines.append("  90% bootstrap interval: " + ", ".join(f"{n} [{l:.3f}, {h:.3f}]" for n, l, h in zip(names, lo, hi)))
    lines.append(f"  {b.decision.message}")
    lines.append("  dw/dN (law optimum): " + ", ".join(f"{n} {d:+.2e}" for n, d in zip(names, b.d_weights_d_budget)))
    if b.disagreement:
        lines += ["  " + line for line in b.disagreement["message"].splitlines()]
        lines += [f"  probe {name}: " + ", ".join(f"{n}={x:.3f}" for n, x in zip(names, w)) for name, w in b.disagreement["probes"].items()]
    if not b.convex:
        lines.append(f"  WARNING: objective not convex here (min Hessian eigenvalue {b.min_hessian_eigenvalue:.3g})")
    return lines


def format_report(report: MixtureReport) -> str:
    """The human-readable output of ``mixjax.fit``."""
    fit, lines = report.fit, []
    if fit.scores:
        lines += [f"Law families, out-of-fold over {fit.validation['folds']} folds of whole runs (* = used):"]
        lines += ["  " + row for row in fit.score_table().splitlines()]
        lines += [f"  {note}" for note in fit.notes] + [""]
    lines += _law_lines(fit)
    for b in report.budgets:
        lines += _budget_lines(b, fit.domains)
    poorly = [(b.budget, b.warnings) for b in report.budgets if b.warnings]
    if poorly:
        lines.append("\nPOORLY DETERMINED OPTIMUM (the objective is flat or the fit uncertain there):")
        lines += [f"  N = {budget:g}: " + "; ".join(why) for budget, why in poorly]
    notes = [(d.name, n) for d in fit.diagnostics for n in d.notes]
    if notes:
        lines += ["\nDiagnostics:"] + [f"  {name}: {note}" for name, note in notes]
    poor = [d.name for d in fit.diagnostics if d.poorly_identified]
    if poor:
        lines.append(f"  POORLY IDENTIFIED: {', '.join(poor)} (treat their weights with care)")
    return "\n".join(lines)


def predictions(fit: Fit, path: str) -> dict:
    """``{"domains", "targets", "losses"}``: the fit's loss of every domain then target for
    every run of the table at ``path``, in its row order, None where a domain has no law."""
    other = read_run_table(path, require_losses=False)
    losses = predict(fit, other.tokens, other.domains)
    return {"domains": list(fit.domains), "targets": list(fit.targets),
            "losses": [[None if np.isnan(v) else float(v) for v in row] for row in losses]}


def _objective(args: argparse.Namespace, table) -> np.ndarray:
    """The objective's weights (P,) over the table's domains and targets."""
    k = len(table.domains)
    if args.objective is not None:
        given = per_domain_values(args.objective, table.outputs, "--objective")
        return objective_importance(table.outputs, k, table.measured, given)
    importance = _per_domain(args.importance, table.domains, "--importance")
    if importance is None:
        return objective_importance(table.outputs, k, table.measured)
    return np.concatenate([importance, np.zeros(len(table.targets))])


def _constraints(args: argparse.Namespace, table) -> Constraints:
    names = table.domains
    importance = _objective(args, table)
    available = _per_domain(args.available, names, "--available")
    if available is not None and args.max_epochs is not None:
        available = [a * args.max_epochs for a in available]
    return Constraints.create(
        len(names), lower=_per_domain(args.lower, names, "--lower"), upper=_per_domain(args.upper, names, "--upper"),
        available=available, importance=importance,
    )


def _print(args: argparse.Namespace, report: MixtureReport, predicted: dict | None, proposals: np.ndarray | None, per_example=None,
           objective: dict[str, float] | None = None) -> None:
    fit = report.fit
    if args.export:
        print(export_weights(args.export, fit.domains, {b.budget: b.weights for b in report.budgets}, seed=args.seed, tokens_per_example=per_example))
    elif args.json:
        out = report.to_dict() | {"config": fit.config.to_dict(), "objective": objective}
        if fit.scores:
            out["family"] = {"chosen": fit.family, "scores": fit.scores, "candidates": list(fit.candidates), "notes": list(fit.notes)}
        if predicted is not None:
            out["predictions"] = predicted
        if proposals is not None:
            out["proposals"] = {"budget": proposals[0], "weights": proposals[1].tolist()}
        print(json.dumps(out))
    else:
        print(f"Objective: minimise {' + '.join(f'{s:g} x loss.{n}' for n, s in (objective or {}).items() if s)}")
        if fit.targets:
            print(f"Targets (loss columns without a tokens column: no run trains on them): {', '.join(fit.targets)}")
        print()
        print(format_report(report))
        if predicted is not None:
            print(f"\nPredicted losses for {args.predict} (one row per run):")
            print("  " + " ".join(f"{n:>10}" for n in predicted["domains"] + predicted["targets"]))
            for row in predicted["losses"]:
                print("  " + " ".join(f"{'-':>10}" if v is None else f"{v:10.4f}" for v in row))
        if proposals is not None:
            print(f"\nRuns to train next at N = {proposals[0]:g} (the base run's budget): the optima at N = {args.budget[0]:g} of plausible laws drawn at random")
            for w in proposals[1]:
                print("  " + ", ".join(f"{n}={x:.3f}" for n, x in zip(fit.domains, w)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        for note in check_flags(args):
            print(f"mixjax.fit: {note}", file=sys.stderr)
        table = read_run_table(args.runs)
        per_example = export_tokens_per_example(args.export, table.domains, args.tokens_per_example)
        constraints = _constraints(args, table)
        check_budgets(args.budget)
        cfg = fit_config(args)
        enable_compilation_cache()
        key = jax.random.key(args.seed)  # the pipeline's keys: fit.json + --fit-config give its weights
        grid_step = 0.05 if args.grid_step is None else args.grid_step
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = optimise_mixture(table, args.budget, constraints, cfg, key, grid_step or None)
            predicted = predictions(report.fit, args.predict) if args.predict else None
            proposals = None
            if args.propose:
                base = float(np.median(table.tokens.sum(axis=1)))  # the base run's budget (a 4k+1 design's median run)
                target = float(args.budget[0])  # the plausible laws' optima at the (first) target budget, trained at the base budget
                proposals = (base, propose_runs(report.fit, target, constraints, args.propose, jax.random.fold_in(key, 3)))
    except (RunTableError, ValueError) as err:
        print(f"mixjax.fit: error: {err}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"mixjax.fit: warning: {w.message}", file=sys.stderr)
    objective = dict(zip(table.outputs, np.asarray(constraints.importance).tolist()))
    _print(args, report, predicted, proposals, per_example, objective)
    return 0


if __name__ == "__main__":
    sys.exit(main())
