"""Fit the mixing law to your own runs and print the optimal weights.

    python -m mixjax.fit --runs runs.csv --budget 5 20 200 [--json]

The table has one row per training run with ``tokens.<domain>`` and ``loss.<domain>``
columns (see mixjax/mixing/runs.py). Budgets are in the table's token units.
Exit code 2 on bad input, with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import jax
import numpy as np

from mixjax.mixing.fit import FitConfig
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
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap refits for weight intervals")
    p.add_argument("--alpha-prior", type=float, default=0.5, help="alpha when only one M is observed")
    p.add_argument("--cross-runs", action="store_true", help="also fit alpha on runs that perturb the other domains")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def format_report(report: MixtureReport) -> str:
    fit, names = report.fit, report.fit.domains
    width = max(8, *(len(n) for n in names))
    lines = ["Fitted parameters (L = c (x + gamma M^alpha)^-beta + e):"]
    lines.append(f"  {'domain':<{width}} {'beta':>9} {'c':>9} {'gamma':>9} {'alpha':>7} {'e':>9} {'rmse':>9} {'LOO max':>8}")
    for i, (name, diag) in enumerate(zip(names, fit.diagnostics)):
        p = fit.params
        lines.append(
            f"  {name:<{width}} {p.beta[i]:9.4g} {p.c[i]:9.4g} {p.gamma[i]:9.4g} {p.alpha[i]:7.3f}"
            f" {p.e[i]:9.4g} {diag.rmse:9.2e} {diag.loo_max_rel_error:8.2%}"
        )
    for b in report.budgets:
        lines.append(f"\nBudget N = {b.budget:g}   (predicted total loss, lower is better)")
        lines.append(f"  {'mixture':<12} " + " ".join(f"{n:>{max(7, len(n))}}" for n in names) + f" {'total':>9}")
        rows = [("optimal", b.weights, b.objective)] + [(n, w, b.baseline_objective[n]) for n, w in b.baselines.items()]
        for label, w, obj in rows:
            lines.append(f"  {label:<12} " + " ".join(f"{x:>{max(7, len(n))}.4f}" for x, n in zip(w, names)) + f" {obj:9.5f}")
        if b.interval is not None:
            lo, hi = b.interval
            lines.append("  90% bootstrap interval: " + ", ".join(f"{n} [{l:.3f}, {h:.3f}]" for n, l, h in zip(names, lo, hi)))
        lines.append("  dw/dN: " + ", ".join(f"{n} {d:+.2e}" for n, d in zip(names, b.d_weights_d_budget)))
        if not b.convex:
            lines.append(f"  WARNING: objective not convex here (min Hessian eigenvalue {b.min_hessian_eigenvalue:.3g})")
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
        cfg = FitConfig(
            num_starts=args.starts,
            bootstrap_samples=args.bootstrap,
            alpha_prior=args.alpha_prior,
            use_cross_runs=args.cross_runs,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = optimise_mixture(domains, args.budget, constraints, cfg, jax.random.key(args.seed), args.grid_step or None)
    except (RunTableError, ValueError) as err:
        print(f"mixjax.fit: error: {err}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"mixjax.fit: warning: {w.message}", file=sys.stderr)
    print(json.dumps(report.to_dict()) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
