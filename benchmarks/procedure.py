"""A ground-truth benchmark of the whole procedure: known per-domain loss functions, the
paper's 4k+1 design observed with multiplicative per-run noise, a recommendation at 10x
the base run's budget, scored against the truth.

    python benchmarks/procedure.py [--truths 4] [--ks 3 5] [--noise 0.003 0.01 0.02] [--previous REV] [--adaptive]
                                   [--design 4k+1 swarm swarm2x]

Score of a mixture w: the fraction of uniform's excess total loss (over the true optimum)
that w recovers (truths where uniform is within 0.2% of the optimum are drawn again), (L(uniform) - L(w)) / (L(uniform) - L(opt)): 1 is the true optimum, 0 is
uniform, < 0 is worse than uniform; "harmful" is < -0.1. Truth forms (random parameters
per truth, none of them mixjax's fitting code):

- ``paper``: the paper's law, ``e + c (x_i + g M^a)^-b``;
- ``interference``: the paper's law plus a penalty that grows with the share of the other
  domains' data, ``h M / (x_i + M)``;
- ``harmful``: each domain gains from some others (``x_i + sum_j a_ij x_j``) and is hurt
  by one (``+ h log(1 + x_j)``);
- ``saturation``: the data's value saturates beyond a scale ``X``:
  ``e + c (X (1 - exp(-x_eff / X)) + 0.1)^-b``;
- ``regmix`` (k = 13, ``--regmix``): the transfer-matrix law fitted to all 512 runs of
  RegMix 1M (13 measured Pile domains; data in benchmarks/data, MIT), each domain's
  exponent perturbed per truth.

Comparators in the same run: mixjax's recommendation (the default), the chosen law's
optimum (the previous default's weights; ``--previous REV`` also runs ``mixjax.fit`` of
that git revision on every table), the paper's procedure (two-stage, reference stage-1
statistic, alpha at the prior), the best observed run's mixture, uniform (0 by
definition). ``--adaptive``: the recommendation after +k and +2k proposed runs
(``mixjax.fit --propose``) against as many random Dirichlet(1) runs, at 1% noise.
``--design``: the runs observed, each design on the same truths: ``4k+1`` (the paper's,
the default), ``swarm`` (as many runs, 4k+1, of a Dirichlet swarm around uniform shares at
the base run's budget of k units: :func:`mixjax.mixing.design.swarm_mixtures`) or
``swarm2x`` (twice as many); the paper's procedure needs the 4k+1 series (NaN, "-", on a
swarm), the adaptive runs are for 4k+1 only.
Prints the load average; times compare only within a run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parents[1]
SCALES = (0.25, 0.5, 2.0, 3.0)


def design(k: int) -> np.ndarray:
    """The paper's 4k+1 runs with one token unit per domain in the base run."""
    from mixjax.mixing.design import perturbation_runs

    return perturbation_runs(np.ones(k), SCALES)


DESIGNS = ("4k+1", "swarm", "swarm2x")


def design_tokens(name: str, k: int, rng: np.random.Generator) -> np.ndarray:
    """The runs (R, k) of a design, each at the base run's budget of k token units."""
    from mixjax.mixing.design import swarm_mixtures

    if name == "4k+1":
        return design(k)
    runs = {"swarm": 4 * k + 1, "swarm2x": 2 * (4 * k + 1)}[name]
    return swarm_mixtures(np.full(k, 1.0 / k), runs, rng, max_weight=None) * k


def truth(form: str, k: int, rng: np.random.Generator):
    """A random truth: tokens (R, k) -> losses (R, k)."""
    b, c = rng.uniform(0.15, 0.6, k), rng.uniform(0.5, 2.0, k)
    g, a, e = rng.uniform(0.05, 0.5, k), rng.uniform(0.3, 0.8, k), rng.uniform(0.8, 2.0, k)

    def paper(x):
        m = x.sum(axis=1, keepdims=True) - x
        return e + c * (x + g * m**a) ** -b

    if form == "paper":
        return paper
    if form == "interference":
        h = rng.uniform(0.02, 0.12, k) * c
        return lambda x: paper(x) + h * (x.sum(axis=1, keepdims=True) - x) / x.sum(axis=1, keepdims=True)
    if form == "harmful":
        help_ = rng.uniform(0.0, 0.4, (k, k)) * (1 - np.eye(k))
        hurt = np.zeros((k, k))
        for i in range(k):
            j = rng.choice([j for j in range(k) if j != i])
            help_[i, j], hurt[i, j] = 0.0, rng.uniform(0.01, 0.04) * c[i]
        return lambda x: e + c * (x + x @ help_.T) ** -b + np.log1p(x) @ hurt.T
    if form == "saturation":
        scale = rng.uniform(2.0, 15.0, k)
        return lambda x: e + c * (scale * (1 - np.exp(-(x + g * (x.sum(axis=1, keepdims=True) - x) ** a) / scale)) + 0.1) ** -b
    raise ValueError(form)


def regmix_truth(rng: np.random.Generator):
    """The transfer law fitted to RegMix 1M's 512 training runs (its 13 measured domains),
    each domain's beta scaled by a random factor in [0.8, 1.25]; tokens in units of the
    base run's per-domain share."""
    from mixjax.mixing.law import evaluate, token_losses

    sub, unit = regmix_law()
    sub = sub._replace(beta=sub.beta * rng.uniform(0.8, 1.25, len(sub.beta)))
    return lambda x: evaluate(token_losses, sub, x * unit)


@functools.cache
def regmix_law():
    """(the transfer law of RegMix 1M's 13 measured domains, the token unit): one fit per
    process (it is deterministic: key 0)."""
    import jax

    from mixjax.mixing.fit import FitConfig, FoldConfig
    from mixjax.mixing.mixture import fit_table
    from mixjax.mixing.runs import read_run_table

    table = read_run_table(ROOT / "benchmarks" / "data" / "regmix_1m_train.csv")
    keep = table.measured
    fit = fit_table(table, jax.random.key(0), FitConfig(family="transfer", folds=FoldConfig(enabled=False)))
    params = jax.tree.map(np.asarray, fit.params)
    idx = np.flatnonzero(keep)
    sub = type(params)(*(p[idx][:, idx] if p.ndim == 2 else p[idx] for p in params))
    return sub, float(np.median(table.tokens.sum(axis=1))) / len(idx)


def observe(f, tokens, noise, rng):
    return f(tokens) * (1 + noise * rng.standard_normal(tokens.shape))


def true_optimum(f, k: int, budget: float, rng) -> tuple[np.ndarray, float]:
    total = lambda w: float(f(np.asarray(w)[None] * budget).sum())
    draws = rng.dirichlet(np.ones(k), 4000)
    values = f(draws * budget).sum(axis=1)
    best = (None, np.inf)
    for start in draws[np.argsort(values)[:4]]:
        res = minimize(total, start, method="SLSQP", bounds=[(0, 1)] * k,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}], options={"ftol": 1e-12, "maxiter": 500})
        w = np.clip(res.x, 0, 1)
        w /= w.sum()
        if total(w) < best[1]:
            best = (w, total(w))
    return best


def write_table(path: Path, tokens, losses) -> None:
    k = tokens.shape[1]
    names = [f"d{i}" for i in range(k)]
    with open(path, "w") as out:
        out.write(",".join([f"tokens.{n}" for n in names] + [f"loss.{n}" for n in names]) + "\n")
        for t, l in zip(tokens, losses):
            out.write(",".join(repr(float(v)) for v in [*t, *l]) + "\n")


def fit_weights(tokens, losses, budget, key_seed=0, cfg=None, propose=0):
    """(recommendation, law optimum, proposals at the base budget) from the Python API."""
    import jax

    from mixjax.mixing.decision import propose_runs
    from mixjax.mixing.fit import FitConfig
    from mixjax.mixing.mixture import optimise_mixture
    from mixjax.mixing.runs import RunTable
    from mixjax.mixing.solve import Constraints

    k = tokens.shape[1]
    table = RunTable(tuple(f"d{i}" for i in range(k)), np.asarray(tokens, np.float64), np.asarray(losses, np.float64),
                     tuple(range(2, len(tokens) + 2)), "truth")
    report = optimise_mixture(table, [budget], None, cfg or FitConfig(), jax.random.key(key_seed), grid_step=None)
    b = report.budgets[0]
    proposals = propose_runs(report.fit, budget, Constraints.create(k), propose, jax.random.key(key_seed + 1)) if propose else None
    return b.weights, b.optimum, proposals


def previous_weights(rev_dir: Path, table: Path, budget: float) -> np.ndarray:
    cache = Path(tempfile.gettempdir()) / "mixjax-procedure-previous-cache"  # warm compiles across its calls
    env = dict(os.environ, PYTHONPATH=str(rev_dir), JAX_PLATFORMS="cpu", MIXJAX_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-m", "mixjax.fit", "--runs", str(table), "--budget", f"{budget:g}", "--json", "--grid-step", "0"],
                         capture_output=True, text=True, env=env, cwd=rev_dir, check=True)
    return np.asarray(json.loads(out.stdout)["weights"][f"{budget:g}"])


def score(f, w, uniform_total, best_total, budget) -> float:
    return (uniform_total - float(f(np.asarray(w)[None] * budget).sum())) / (uniform_total - best_total)


def draw_truth(form, k, budget, rng):
    """A truth where uniform is not within 0.2% of the optimum (those say nothing of a
    method): (f, uniform's total, the optimum's total)."""
    for _ in range(20):
        f = regmix_truth(rng) if form == "regmix" else truth(form, k, rng)
        _, best_total = true_optimum(f, k, budget, rng)
        uniform_total = float(f(np.full((1, k), budget / k)).sum())
        if uniform_total - best_total >= 0.002 * best_total:
            break
    return f, uniform_total, best_total


def one_case(form, k, noise, seed, args, rev_dir, tmp) -> list[dict]:
    """One truth, observed through every design of ``args.design``: a row per design.
    4k+1 draws its noise from the truth's generator (as before designs existed); a swarm
    draws its mixtures and noise from its own, so the truth is the same for every design."""
    rng = np.random.default_rng(seed)
    budget = 10.0 * k
    f, uniform_total, best_total = draw_truth(form, k, budget, rng)
    s = lambda w: score(f, w, uniform_total, best_total, budget)
    rows = []
    for name in args.design:
        own = rng if name == "4k+1" else np.random.default_rng([seed, DESIGNS.index(name)])
        tokens = design_tokens(name, k, own)
        losses = observe(f, tokens, noise, own)
        row = {"form": form, "k": k, "noise": noise, "seed": seed, "design": name, "runs": len(tokens),
               "excess": (uniform_total - best_total) / best_total}
        row |= design_case(f, tokens, losses, budget, k, noise, seed, args, rev_dir, tmp, own, s, name == "4k+1")
        rows.append(row)
    return rows


def design_case(f, tokens, losses, budget, k, noise, seed, args, rev_dir, tmp, rng, s, series: bool) -> dict:
    """The comparators' scores on one observed table (``series``: a 4k+1 design)."""
    from mixjax.mixing.fit import FitConfig, TwoStageConfig

    adaptive_here = args.adaptive and series
    rec, opt, proposals = fit_weights(tokens, losses, budget, 0, propose=k if adaptive_here else 0)  # key 0: mixjax.fit's default --seed
    paper = float("nan")
    if series:  # the paper's two-stage procedure needs every domain's own series
        paper_cfg = FitConfig(family="paper", paper_fit="two-stage", two_stage=TwoStageConfig(procedure="paper", alpha_mode="prior"))
        paper = s(fit_weights(tokens, losses, budget, 0, paper_cfg)[1])
    observed = tokens[np.argmin(losses.sum(axis=1))]
    row = {"default": s(rec), "optimum": s(opt), "paper": paper, "best observed": s(observed / observed.sum())}
    if rev_dir is not None:
        path = tmp / f"case{seed}.csv"
        write_table(path, tokens, losses)
        row["previous"] = s(previous_weights(rev_dir, path, budget))
    if adaptive_here and noise == 0.01 and seed < 1000:  # the first truth of each form and k
        row |= adaptive(f, tokens, losses, proposals, budget, k, noise, seed, rng, s)
    return row


def adaptive(f, tokens, losses, proposals, budget, k, noise, seed, rng, s) -> dict:
    """The recommendation after +k and +2k runs at the base budget: proposed vs random."""
    out = {}
    t_a, l_a, props = tokens, losses, proposals
    t_r, l_r = tokens, losses
    for step in (1, 2):
        new = props * k  # the base run's budget: k units
        t_a, l_a = np.concatenate([t_a, new]), np.concatenate([l_a, observe(f, new, noise, rng)])
        rec, _, props = fit_weights(t_a, l_a, budget, step, propose=k)
        out[f"proposed +{step}k"] = s(rec)
        rand = rng.dirichlet(np.ones(k), k) * k
        t_r, l_r = np.concatenate([t_r, rand]), np.concatenate([l_r, observe(f, rand, noise, rng)])
        out[f"random +{step}k"] = s(fit_weights(t_r, l_r, budget, step)[0])
    return out


def cell(values) -> str:
    """median, 10th percentile, harm rate (< -0.1) of the finite values; "-" if none."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return "-" if not len(v) else f"{np.median(v):6.2f} {np.percentile(v, 10):6.2f} {np.mean(v < -0.1):6.0%}"


def summarise(rows: list[dict]) -> None:
    methods = [m for m in ("default", "optimum", "previous", "paper", "best observed") if m in rows[0]]
    designs = list(dict.fromkeys(r["design"] for r in rows))
    print(f"\n{'design':>8} {'runs':>4} {'noise':>6} {'cases':>5} " + " ".join(f"{m:>22}" for m in methods))
    for design_name in designs:
        for noise in sorted({r["noise"] for r in rows}):
            sel = [r for r in rows if r["noise"] == noise and r["design"] == design_name]
            runs = "/".join(str(n) for n in sorted({r["runs"] for r in sel}))
            print(f"{design_name:>8} {runs:>4} {noise:6.3f} {len(sel):5d} " + " ".join(f"{cell([r[m] for r in sel]):>22}" for m in methods))
    print("(each cell: median, 10th percentile of the fraction recovered, harm rate < -0.1)")
    for design_name in designs:
        for form in sorted({r["form"] for r in rows}):
            sel = [r for r in rows if r["form"] == form and r["design"] == design_name]
            print(f"  {design_name:8s} {form:13s} " + " ".join(f"{m} {np.nanmedian([r[m] for r in sel]):+.2f}" for m in methods
                                                       if np.isfinite([r[m] for r in sel]).any()))
    extra = [r for r in rows if "proposed +1k" in r]
    if extra:
        print(f"\nadaptive runs at 1% noise ({len(extra)} cases): median fraction recovered")
        print("  4k+1: " + f"{np.median([r['default'] for r in extra]):.2f}")
        for step in (1, 2):
            print(f"  +{step}k proposed {np.median([r[f'proposed +{step}k'] for r in extra]):.2f}"
                  f"   +{step}k random {np.median([r[f'random +{step}k'] for r in extra]):.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--truths", type=int, default=4, help="random truths per form, k and noise level")
    p.add_argument("--ks", type=int, nargs="+", default=[3, 5])
    p.add_argument("--noise", type=float, nargs="+", default=[0.003, 0.01, 0.02])
    p.add_argument("--forms", nargs="+", default=["paper", "interference", "harmful", "saturation"])
    p.add_argument("--regmix", action="store_true", help="add the k = 13 RegMix-fitted truth (one per noise level per truth count)")
    p.add_argument("--previous", metavar="DIR", help="a checkout of the previous revision: its mixjax.fit on every table")
    p.add_argument("--adaptive", action="store_true", help="also +k, +2k proposed vs random runs at 1% noise")
    p.add_argument("--design", nargs="+", choices=DESIGNS, default=["4k+1"],
                   help="the runs observed, each design on the same truths (4k+1: the paper's; swarm: 4k+1 Dirichlet runs; swarm2x: twice as many)")
    p.add_argument("--out", type=Path, help="write every case as JSON lines here")
    args = p.parse_args()
    os.environ.setdefault("MIXJAX_CACHE_DIR", "")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    cases = [(form, k, noise, 1000 * i + 100 * k + int(noise * 1000)) for form in args.forms for k in args.ks
             for noise in args.noise for i in range(args.truths)]
    if args.regmix:
        cases += [("regmix", 13, noise, 7000 + i) for noise in args.noise for i in range(max(1, args.truths // 2))]
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n, case in enumerate(cases, 1):
            for r in one_case(*case, args, Path(args.previous) if args.previous else None, Path(tmp)):
                rows.append(r)
                print(f"[{n}/{len(cases)} {time.perf_counter() - start:6.0f} s load {os.getloadavg()[0]:.1f}] {r['form']:12s} k={r['k']:2d}"
                      f" noise={r['noise']:.3f} {r['design']:>7s} ({r['runs']} runs) excess {r['excess']:.2%}: "
                      + " ".join(f"{m} {v:+.2f}" for m, v in r.items() if isinstance(v, float) and m not in ("noise", "excess")),
                      flush=True)
                if args.out:
                    with open(args.out, "a") as out:
                        out.write(json.dumps(r) + "\n")
    summarise(rows)
    print(f"load average after: {os.getloadavg()[0]:.2f}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
