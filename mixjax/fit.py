"""Fit the mixing law to your own runs and print the optimal weights.

    python -m mixjax.fit --runs runs.csv --budget 5 20 200 [--json | --export FORMAT]

The table has one row per training run with ``tokens.<domain>`` and ``loss.<domain>``
columns (see mixjax/mixing/runs.py): the paper's 4k+1 design, a random swarm of
mixtures, or both. Budgets are in the table's token units. Compiled code is cached
across calls (``MIXJAX_CACHE_DIR`` moves the cache, an empty value turns it off).
Exit code 2 on bad input, with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import jax
import numpy as np

from mixjax.cache import enable_compilation_cache
from mixjax.mixing.export import FORMATS, export_weights
from mixjax.mixing.fit import ALPHA_MODES, PROCEDURES, FitConfig
from mixjax.mixing.mixture import MixtureReport, optimise_mixture
from mixjax.mixing.runs import RunTableError, domain_data, read_run_table
from mixjax.mixing.solve import Constraints


def _per_domain(values: list[str] | None, domains: tuple[str, ...], flag: str) -> list[float] | None:
    """Parse ``name=value`` pairs into a per-domain list (None if not given)."""
    if not values:
        return None
    out: dict[str, float] = {}
    for item in values:
        name, _, value = item.partition("=")
        if name not in domains:
            raise ValueError(f"{flag}: unknown domain {name!r} (domains: {', '.join(domains)})")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"{flag}: {item!r} is not name=number") from None
    missing = [d for d in domains if d not in out]
    if flag == "--available" and missing:
        raise ValueError(f"--available: missing domains {', '.join(missing)}")
    default = {"--lower": 0.0, "--upper": 1.0, "--importance": 1.0}.get(flag, np.inf)
    return [out.get(d, default) for d in domains]


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
    p.add_argument("--starts", type=int, default=32, help="random starts per fit")
    p.add_argument("--bootstrap", type=int, default=32, help="bootstrap refits for weight intervals (0: off)")
    p.add_argument("--procedure", choices=PROCEDURES, default="mixjax",
                   help="stage-1 statistic: mixjax (log of the ratio of differences) or paper (the reference code's ratio of logs)")
    p.add_argument("--alpha-mode", choices=ALPHA_MODES, default="auto",
                   help="alpha at the prior (own series), fitted (every run), or auto: by leave-one-run-out error")
    p.add_argument("--alpha-prior", type=float, default=None, help="hold alpha at this value (implies --alpha-mode prior)")
    p.add_argument("--cross-runs", action="store_true", help="fit alpha on every run (same as --alpha-mode fitted)")
    p.add_argument("--export", choices=FORMATS, help="print the weights in this tool's format instead of the tables")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def format_report(report: MixtureReport) -> str:
    fit, names = report.fit, report.fit.domains
    width = max(8, *(len(n) for n in names))
    procedure = fit.diagnostics[0].procedure if fit.diagnostics else "mixjax"
    lines = [f"Fitted parameters (L = c (x + gamma M^alpha)^-beta + e; procedure {procedure}):"]
    lines.append(
        f"  {'domain':<{width}} {'beta':>9} {'c':>9} {'gamma':>9} {'alpha':>7} {'e':>9} {'runs':>4} {'rmse':>9}"
        f" {'OOF rmse':>9} {'LOO max':>8} {'alpha':>7}"
    )
    for i, (name, diag) in enumerate(zip(names, fit.diagnostics)):
        p = fit.params
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
        if b.grid_skipped:
            lines.append(f"  grid: {b.grid_skipped} infeasible grid points skipped")
        if b.interval is not None:
            lo, hi = b.interval
            lines.append("  90% bootstrap interval: " + ", ".join(f"{n} [{l:.3f}, {h:.3f}]" for n, l, h in zip(names, lo, hi)))
        lines.append("  dw/dN: " + ", ".join(f"{n} {d:+.2e}" for n, d in zip(names, b.d_weights_d_budget)))
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        table = read_run_table(args.runs)
        domains = domain_data(table)
        names = table.domains
        constraints = Constraints.create(
            len(names),
            lower=_per_domain(args.lower, names, "--lower"),
            upper=_per_domain(args.upper, names, "--upper"),
            available=_per_domain(args.available, names, "--available"),
            importance=_per_domain(args.importance, names, "--importance"),
        )
        if any(b <= 0 for b in args.budget):
            raise ValueError(f"--budget must be positive, got {args.budget}")
        alpha_mode = "fitted" if args.cross_runs else ("prior" if args.alpha_prior is not None else args.alpha_mode)
        cfg = FitConfig(
            num_starts=args.starts,
            bootstrap_samples=args.bootstrap,
            alpha_prior=0.5 if args.alpha_prior is None else args.alpha_prior,
            alpha_mode=alpha_mode,
            procedure=args.procedure,
        )
        enable_compilation_cache()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = optimise_mixture(domains, args.budget, constraints, cfg, jax.random.key(args.seed), args.grid_step or None)
    except (RunTableError, ValueError) as err:
        print(f"mixjax.fit: error: {err}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"mixjax.fit: warning: {w.message}", file=sys.stderr)
    if args.export:
        print(export_weights(args.export, names, {b.budget: b.weights for b in report.budgets}, seed=args.seed))
    else:
        print(json.dumps(report.to_dict()) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
