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
from mixjax.mixing.export import FORMATS, export_tokens_per_example, export_weights
from mixjax.mixing.families import FamilyFitResult
from mixjax.mixing.fit import ALPHA_MODES, PROCEDURES, FitConfig
from mixjax.mixing.fit.types import FAMILY_CHOICES
from mixjax.mixing.fit.table import predict_table
from mixjax.mixing.mixture import MixtureReport, optimise_mixture
from mixjax.mixing.runs import RunTableError, read_run_table
from mixjax.mixing.selection import probe_key, propose_probes, variant_disagreement
from mixjax.mixing.solve import Constraints


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
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--importance", nargs="*", metavar="D=S", help="per-domain loss weight s_i (default 1)")
    p.add_argument("--available", nargs="*", metavar="D=TOKENS", help="tokens available per domain")
    p.add_argument("--lower", nargs="*", metavar="D=W", help="lower bound on a weight")
    p.add_argument("--upper", nargs="*", metavar="D=W", help="upper bound on a weight")
    p.add_argument("--grid-step", type=float, default=0.05, help="step of the grid baseline (0: off)")
    p.add_argument("--fit-config", metavar="JSON", help="the fit's config: a pipeline's fit.json or a JSON of FitConfig fields")
    p.add_argument("--family", choices=FAMILY_CHOICES,
                   help=f"law family: auto (the extrapolating family with the lowest out-of-fold error), paper, transfer, exp, or two-stage (the paper's own procedure, with bootstrap intervals); default {FitConfig.family}")
    p.add_argument("--starts", type=int, help=f"random starts of the two-stage fit (default {FitConfig.num_starts})")
    p.add_argument("--bootstrap", type=int, help=f"bootstrap refits for weight intervals, two-stage fit only (default {FitConfig.bootstrap_samples})")
    p.add_argument("--procedure", choices=PROCEDURES,
                   help=f"stage-1 statistic: mixjax (log of the ratio of differences) or paper (the reference code's ratio of logs); default {FitConfig.procedure}")
    p.add_argument("--alpha-mode", choices=ALPHA_MODES,
                   help=f"alpha at the prior (own series), fitted (every run), or auto: by leave-one-run-out error; default {FitConfig.alpha_mode}")
    p.add_argument("--alpha-prior", type=float, default=None, help="hold alpha at this value (implies --alpha-mode prior)")
    p.add_argument("--predict", metavar="TABLE", help="also predict every run of this table (tokens.<domain> columns; losses optional)")
    p.add_argument("--export", choices=FORMATS, help="print the weights in this tool's format instead of the tables")
    p.add_argument("--tokens-per-example", nargs="*", metavar="D=T",
                   help="mean tokens per example of each domain: --export maxtext|llama-factory|hf-datasets sample examples and need them")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def variant_reports(fit, budgets, constraints: Constraints, key: jax.Array) -> dict[float, dict]:
    """Per budget where the law variants within out-of-fold noise disagree: their optima,
    mutual regrets and the probe mixtures that would settle it (README, "Law families")."""
    if not isinstance(fit, FamilyFitResult) or len(fit.candidates) < 2:
        return {}
    out = {}
    for budget in budgets:
        report = variant_disagreement(fit, float(budget), constraints)
        if report["disagree"]:  # the pipeline's probe key: the same probes at its validation budget
            probes = propose_probes(fit, float(budget), constraints, probe_key(key), report)
            out[float(budget)] = report | {"probes": {n: np.asarray(w).tolist() for n, w in probes.items()}}
    return out


def format_report(report: MixtureReport, disagreement: dict[float, dict] | None = None) -> str:
    disagreement = disagreement or {}
    fit, names = report.fit, report.fit.domains
    width = max(8, *(len(n) for n in names))
    lines = []
    if isinstance(fit, FamilyFitResult):
        lines += [f"Law families, out-of-fold over {fit.validation['folds']} folds of whole runs (* = used):"]
        lines += ["  " + row for row in fit.score_table().splitlines()]
        lines += [f"  {note}" for note in fit.notes] + [""]
        how = f"family {fit.family}" + ("; M_i = (sum_j t_ij x_j^rho_i)^(1/rho_i)" if fit.family == "transfer" else "")
    else:
        how = f"two-stage procedure, {fit.config.procedure} stage 1"
    lines.append(f"Fitted parameters (L = c (x + gamma M^alpha)^-beta + e; {how}):")
    lines.append(
        f"  {'domain':<{width}} {'beta':>9} {'c':>9} {'gamma':>9} {'alpha':>7} {'e':>9} {'runs':>4} {'rmse':>9}"
        f" {'OOF rmse':>9} {'LOO max':>8} {'alpha':>7}"
    )
    for i, (name, diag) in enumerate(zip(names, fit.diagnostics)):
        p = fit.params
        if not diag.measured:
            lines.append(f"  {name:<{width}} (trained, never measured: no law of its own)")
            continue
        lines.append(
            f"  {name:<{width}} {p.beta[i]:9.4g} {p.c[i]:9.4g} {p.gamma[i]:9.4g} {p.alpha[i]:7.3f}"
            f" {p.e[i]:9.4g} {diag.num_runs:4d} {diag.rmse:9.2e} {diag.oof_rmse:9.2e} {diag.loo_max_rel_error:8.2%}"
            f" {diag.alpha_choice:>7}"
        )
    if fit.validation:
        v = fit.validation
        lines.append(
            f"  out-of-fold ({v['folds']}-fold over runs, {v['num_points']} losses): RMSE {v['oof_rmse']:.2e},"
            f" Spearman {v['oof_spearman']:.3f}"
        )
    for b in report.budgets:
        lines.append(f"\nBudget N = {b.budget:g}   (predicted total loss, lower is better)")
        lines.append(f"  {'mixture':<12} " + " ".join(f"{n:>{max(7, len(n))}}" for n in names) + f" {'total':>9}")
        rows = [("optimal", b.weights, b.objective)] + [(n, w, b.baseline_objective[n]) for n, w in b.baselines.items()]
        for label, w, obj in rows:
            lines.append(f"  {label:<12} " + " ".join(f"{x:>{max(7, len(n))}.4f}" for x, n in zip(w, names)) + f" {obj:9.5f}")
        for name, why in b.infeasible_baselines.items():
            lines.append(f"  {name:<12} infeasible at this budget ({why}); not compared")
        if b.grid_kind:
            lines.append(f"  grid: {b.grid_kind}" + (f", {b.grid_skipped} infeasible points skipped" if b.grid_skipped else ""))
        if b.interval is not None:
            lo, hi = b.interval
            lines.append("  90% bootstrap interval: " + ", ".join(f"{n} [{l:.3f}, {h:.3f}]" for n, l, h in zip(names, lo, hi)))
        lines.append("  dw/dN: " + ", ".join(f"{n} {d:+.2e}" for n, d in zip(names, b.d_weights_d_budget)))
        if report_disagreement := disagreement.get(b.budget):
            lines += ["  " + line for line in report_disagreement["message"].splitlines()]
            for name, w in report_disagreement["probes"].items():
                lines.append(f"  probe {name}: " + ", ".join(f"{n}={x:.3f}" for n, x in zip(names, w)))
        if not b.convex:
            lines.append(f"  WARNING: objective not convex here (min Hessian eigenvalue {b.min_hessian_eigenvalue:.3g})")
    poorly = [(b.budget, b.warnings) for b in report.budgets if b.warnings]
    if poorly:
        lines.append("\nPOORLY DETERMINED OPTIMUM (the objective is flat or the fit uncertain there):")
        lines += [f"  N = {budget:g}: " + "; ".join(why) for budget, why in poorly]
    notes = [(d.name, n, d.poorly_identified) for d in fit.diagnostics for n in d.notes]
    if notes:
        lines.append("\nDiagnostics:")
        lines += [f"  {name}: {note}" for name, note, _ in notes]
    poor = [d.name for d in fit.diagnostics if d.poorly_identified]
    if poor:
        lines.append(f"  POORLY IDENTIFIED: {', '.join(poor)} (treat their weights with care)")
    return "\n".join(lines)


def fit_config(args: argparse.Namespace) -> FitConfig:
    """FitConfig from ``--fit-config`` (or the defaults) with the flags that were given on top.

    Raises:
      ValueError: an unreadable config file or an unknown field.
    """
    cfg = FitConfig()
    if args.fit_config:
        try:
            recorded = json.loads(Path(args.fit_config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--fit-config {args.fit_config}: {err}") from None
        if "params" in recorded and recorded.get("config") is None:
            raise ValueError(f"--fit-config {args.fit_config}: this fit.json predates recorded fit configs; refit it")
        cfg = FitConfig.from_dict(recorded["config"] if "params" in recorded else recorded)
    changes = {
        "family": args.family, "num_starts": args.starts, "bootstrap_samples": args.bootstrap, "procedure": args.procedure,
        "alpha_mode": "prior" if args.alpha_prior is not None else args.alpha_mode, "alpha_prior": args.alpha_prior,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    if cfg.bootstrap_samples and cfg.family != "two-stage":
        raise ValueError("--bootstrap: bootstrap intervals come with the two-stage fit (--family two-stage)")
    return cfg


def predictions(fit, path: str) -> dict:
    """``{"domains", "losses"}``: the fit's loss for every run of the table at ``path``, in its
    row order, None where a domain has no law."""
    other = read_run_table(path, require_losses=False)
    losses = predict_table(fit, other.domains, other.tokens)
    return {"domains": list(fit.domains), "losses": [[None if np.isnan(v) else float(v) for v in row] for row in losses]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        table = read_run_table(args.runs)
        names = table.domains
        per_example = export_tokens_per_example(args.export, names, args.tokens_per_example)
        importance = _per_domain(args.importance, names, "--importance") or table.measured.astype(float).tolist()
        constraints = Constraints.create(
            len(names),
            lower=_per_domain(args.lower, names, "--lower"),
            upper=_per_domain(args.upper, names, "--upper"),
            available=_per_domain(args.available, names, "--available"),
            importance=importance,
        )
        check_budgets(args.budget)
        if any(b <= 0 for b in args.budget):
            raise ValueError(f"--budget must be positive, got {args.budget}")
        cfg = fit_config(args)
        enable_compilation_cache()
        key = jax.random.key(args.seed)  # the pipeline's keys: fit.json + --fit-config give its weights
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = optimise_mixture(table, args.budget, constraints, cfg, key, args.grid_step or None)
            fit = report.fit
            disagreement = variant_reports(fit, args.budget, constraints, key)
            predicted = predictions(fit, args.predict) if args.predict else None
    except (RunTableError, ValueError) as err:
        print(f"mixjax.fit: error: {err}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"mixjax.fit: warning: {w.message}", file=sys.stderr)
    if args.export:
        print(export_weights(args.export, names, {b.budget: b.weights for b in report.budgets}, seed=args.seed, tokens_per_example=per_example))
    elif args.json:
        out = report.to_dict()
        out["config"] = cfg.to_dict()
        if isinstance(fit, FamilyFitResult):
            out["family"] = {"chosen": fit.family, "scores": fit.scores, "candidates": list(fit.candidates), "notes": list(fit.notes)}
        out["disagreement"] = {f"{b:g}": r for b, r in disagreement.items()}
        if predicted is not None:
            out["predictions"] = predicted
        print(json.dumps(out))
    else:
        print(format_report(report, disagreement))
        if predicted is not None:
            print(f"\nPredicted losses for {args.predict} (one row per run):")
            print("  " + " ".join(f"{n:>10}" for n in predicted["domains"]))
            for row in predicted["losses"]:
                print("  " + " ".join(f"{'-':>10}" if v is None else f"{v:10.4f}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
