"""The experiment report: report.md, summary.json and plots, from plain inputs
(:class:`ReportInputs`); it knows nothing of the stages or the run store.

Plots: the fitted law against the measured points per domain; optimal weights against
the budget; for k = 3, the predicted total loss over the simplex with the optimum and
the validated mixtures; validation total loss against step for every run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mixjax.io import write_json_atomic  # noqa: E402
import csv  # noqa: E402

from mixjax.mixing.fit.result import Fit, predict  # noqa: E402
from mixjax.mixing.law import LawParams, total_loss  # noqa: E402
from mixjax.mixing.runs import domain_data, read_run_table  # noqa: E402
from mixjax.mixing.solve import Constraints, solve_sweep  # noqa: E402
from mixjax.pipeline.paired import mean_sd, paired_difference  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ReportInputs:
    name: str
    domains: tuple[str, ...]
    fit: Fit
    solution: dict
    runs_csv: Path
    target_budgets: tuple[int, ...]
    validate_budget: int
    constraints: Constraints
    # label -> (weights, {seed: measured per-domain losses}); every mixture at every validation seed
    measured: Mapping[str, tuple[Sequence[float], Mapping[int, Sequence[float]]]]
    skipped: Mapping[str, str]  # label -> why it was not trained
    histories: Mapping[str, list[dict]]  # run name -> result.json history
    base_model: str | None = None
    failed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    selection: dict | None = None  # selection.json: the probe runs' choice of fit variant
    solution_final: dict | None = None  # solution_final.json: the solve after the refit with the probes
    answer: str = "solution.json"  # which recorded file is the experiment's answer (RunStore.answer)


def read_validation(path: Path, names: Sequence[str], targets: Sequence[str] = ()) -> dict[str, tuple[list[float], dict[int, list[float]]]]:
    """validation.csv as ``{label: (weights, {seed: losses of the domains then the targets})}``
    (what the validate stage recorded; :meth:`mixjax.pipeline.store.RunStore.write_table`)."""
    measured: dict[str, tuple[list[float], dict[int, list[float]]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            weights, by_seed = measured.setdefault(row["label"], ([float(row[f"weight.{n}"]) for n in names], {}))
            by_seed[int(row["seed"])] = [float(row[f"loss.{n}"] or "nan") for n in (*names, *targets)]  # empty: not measured
    return measured


def plot_fits(runs_csv: Path, fit: Fit, path) -> None:
    """Per domain: the fitted law along that domain's tokens (others at the base run) and
    the measured runs (those perturbing it, and the others)."""
    table = read_run_table(runs_csv)
    data = {d.name: d for d in domain_data(table)}
    names = [n for n in fit.domains if n in data]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4 * max(1, len(names)), 3.2), squeeze=False)
    if not names:
        axes[0][0].text(0.5, 0.5, "no training domain was measured", ha="center", va="center")
    base = table.base_tokens
    for ax, name in zip(axes[0], names):
        d, i = data[name], fit.domains.index(name)
        x = np.geomspace(max(table.tokens[:, i][table.tokens[:, i] > 0].min(), 1e-9) * 0.5, table.tokens[:, i].max() * 2, 100)
        grid = np.repeat(base[None], len(x), 0)
        grid[:, i] = x
        ax.plot(x, predict(fit, grid)[:, i], label="fitted law")
        ax.scatter(d.in_domain, d.loss, color="C1", zorder=3, label="runs perturbing it")
        if d.cross_loss.size:
            ax.scatter(d.cross_in_domain, d.cross_loss, color="C2", marker="x", zorder=3, label="others perturbed")
        ax.set_xscale("log")
        ax.set_title(f"{name}: beta={float(fit.params.beta[i]):.3g}, alpha={float(fit.params.alpha[i]):.2f}")
        ax.set_xlabel(f"{name} tokens")
        ax.set_ylabel("validation loss")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_weights_vs_budget(target_budgets: Sequence[int], constraints: Constraints, fit: Fit, path) -> None:
    budgets = np.geomspace(min(target_budgets) / 10, max(target_budgets) * 10, 40)
    feasible = budgets[budgets <= constraints.available.sum() * 0.999]
    weights = solve_sweep(fit.params, feasible, constraints, fit.domains)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, name in enumerate(fit.domains):
        ax.plot(feasible, weights[:, i], label=name)
    for b in target_budgets:
        ax.axvline(b, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("total budget N (tokens)")
    ax.set_ylabel("optimal weight")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_simplex(fit: Fit, budget, optimum, validated: dict[str, np.ndarray], path, importance=None) -> None:
    """Ternary map of the predicted objective, ``sum_i s_i L_i`` with the solve's importance
    ``s`` (k = 3)."""
    n = 120
    grid = np.clip([(i / n, j / n, 1 - (i + j) / n) for i in range(n + 1) for j in range(n + 1 - i)], 0.0, 1.0)
    with jax.enable_x64(True):
        s_i = None if importance is None else np.asarray(importance, np.float64)
        values = np.asarray(jax.vmap(lambda w: total_loss(w, fit.params, float(budget), s_i))(grid))
    # The law diverges where a domain gets no data and no transfer; colour by the finite range.
    finite = np.isfinite(values)
    values = np.where(finite, values, np.max(values[finite]))
    values = np.minimum(values, np.percentile(values, 98))
    xy = lambda w: (w[..., 1] + 0.5 * w[..., 2], np.sqrt(3) / 2 * w[..., 2])
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    tri = ax.tricontourf(*xy(grid), values, levels=30, cmap="viridis")
    fig.colorbar(tri, ax=ax, label="predicted total validation loss")
    for label, w in validated.items():
        if label != "optimal":
            ax.scatter(*xy(np.asarray(w)), color="white", edgecolor="black", s=25 if label.startswith("grid") else 60, zorder=3)
            if not label.startswith("grid"):
                ax.annotate(label, xy(np.asarray(w)), fontsize=7, color="white", xytext=(4, 4), textcoords="offset points")
    ax.scatter(*xy(np.asarray(optimum)), marker="*", color="red", s=200, zorder=4, label="recommended")
    names = fit.domains
    for (x, y), name in zip([(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)], names):
        ax.annotate(name, (x, y), ha="center", va="top" if y == 0 else "bottom", fontsize=9)
    ax.set_axis_off()
    ax.set_title(f"predicted total loss at N = {budget:,.0f}", pad=20)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(histories: Mapping[str, list[dict]], path) -> None:
    """Validation total loss against step for every run (perturbation runs solid,
    validation runs dashed)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (name, history) in enumerate(sorted(histories.items())):
        if not history:
            continue
        steps = [h["step"] for h in history]
        totals = [h["total"] for h in history]
        dashed = name.startswith("validate-")
        ax.plot(steps, totals, ls="--" if dashed else "-", lw=1, color=f"C{i % 10}", label=name.removeprefix("validate-")[:24])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation total loss")
    ax.set_title("training curves (solid: perturbation runs, dashed: validation runs)", fontsize=9)
    if len(histories) <= 16:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grid_metrics(rows: Mapping[str, dict], names: Sequence[str]) -> dict | None:
    """The paper's grid metric and friends, when the optimum and grid points were measured.

    paper_metric: mean over domains of optimised / best-in-grid per-domain loss - 1;
    total_regret: (optimised total - best grid total) / best grid total;
    rank: the optimised mixture's place (1 = best) among grid points and baselines by measured total.
    """
    grid = {k: v for k, v in rows.items() if k.startswith("grid-")}
    if not grid or "optimal" not in rows:
        return None
    optimal = rows["optimal"]
    best = np.min([v["measured"] for v in grid.values()], axis=0)
    ratio = np.asarray(optimal["measured"]) / best - 1
    best_total = min(v["measured_total"] for v in grid.values())
    rank = 1 + sum(v["measured_total"] < optimal["measured_total"] for k, v in rows.items() if k != "optimal")
    return {
        "paper_metric": float(ratio.mean()),
        "per_domain": dict(zip(names, ratio.tolist())),
        "total_regret": float((optimal["measured_total"] - best_total) / best_total),
        "rank": int(rank),
        "size": len(grid),
        "compared": len(rows) - 1,
    }


def grid_metrics_over_seeds(rows: Mapping[str, dict], names: Sequence[str]) -> dict | None:
    """:func:`grid_metrics` at every seed where the optimum and a grid point were measured
    (mean and sd over seeds, and each seed's value), plus the optimum's rank by mean total."""
    per_seed = {}
    for seed in sorted(rows["optimal"]["per_seed"]) if "optimal" in rows else []:
        at = {
            k: {"measured": v["per_seed"][seed]["measured"], "measured_total": v["per_seed"][seed]["total"]}
            for k, v in rows.items() if seed in v["per_seed"]
        }
        if (g := grid_metrics(at, names)) is not None:
            per_seed[seed] = g
    of_means = grid_metrics(rows, names)
    if not per_seed or of_means is None:
        return None
    out = {"seeds": len(per_seed), "size": of_means["size"], "compared": of_means["compared"], "rank": of_means["rank"]}
    for key in ("paper_metric", "total_regret"):
        mean, sd = mean_sd([g[key] for g in per_seed.values()])
        out[key], out[f"{key}_sd"] = float(mean), float(sd)
    out["rank_per_seed"] = [g["rank"] for g in per_seed.values()]
    out["per_seed"] = {str(s): g for s, g in per_seed.items()}
    out["of_means"] = of_means
    return out


def validation_summary(r: ReportInputs) -> dict:
    """Per mixture: mean and sd over seeds of every domain's (and target's) measured loss and
    of the total (the objective: ``sum_o s_o L_o`` with the solve's weights ``s``), the law's
    prediction; for each non-grid mixture, the paired difference optimal - it over the seeds
    both were measured at (t interval, verdict); the grid metrics over seeds."""
    rows = {}
    s = np.asarray(r.constraints.importance, np.float64)
    objective = lambda losses: float(np.nansum(np.asarray(losses, np.float64) * s))
    for label, (weights, by_seed) in r.measured.items():
        w = np.asarray(weights, np.float64)
        predicted = predict(r.fit, (w * float(r.validate_budget))[None])[0]
        seeds = sorted(by_seed)
        losses = np.asarray([by_seed[s] for s in seeds], np.float64)  # (S, k)
        mean, sd = mean_sd(losses)
        total_mean, total_sd = mean_sd(np.array([objective(row) for row in losses]))
        rows[label] = {
            "weights": w.tolist(), "seeds": seeds, "measured": mean.tolist(), "measured_sd": sd.tolist(),
            "measured_total": float(total_mean), "measured_total_sd": float(total_sd),
            "predicted": predicted.tolist(), "predicted_total": objective(predicted),
            "per_seed": {seed: {"measured": by_seed[seed], "total": objective(by_seed[seed])} for seed in seeds},
        }
    summary: dict = {"budget": r.validate_budget, "seeds": sorted({s for v in rows.values() for s in v["seeds"]}), "mixtures": rows, "skipped": dict(r.skipped)}
    grid = grid_metrics_over_seeds(rows, r.domains)
    if grid is not None:
        summary["grid"] = grid
    if "optimal" in rows:
        opt = rows["optimal"]
        summary["optimal_vs"] = {}
        for label, row in rows.items():
            if label == "optimal" or label.startswith("grid-"):
                continue
            common = [s for s in opt["seeds"] if s in row["per_seed"]]
            diff = paired_difference([opt["per_seed"][s]["total"] for s in common], [row["per_seed"][s]["total"] for s in common])
            predicted = opt["predicted_total"] - row["predicted_total"]
            summary["optimal_vs"][label] = {**diff.to_dict(), "predicted": predicted, "predicted_relative": predicted / row["predicted_total"]}
    for row in rows.values():  # JSON keys are strings
        row["per_seed"] = {str(s): v for s, v in row["per_seed"].items()}
    return summary


def _pm(mean: float, sd: float, fmt: str = ".4f") -> str:
    return f"{mean:{fmt}}" if not np.isfinite(sd) else f"{mean:{fmt}} ± {sd:{fmt}}"


def validation_lines(validation: dict, names: Sequence[str]) -> list[str]:
    """report.md's validation section: mean ± sd over seeds, paired differences, grid metrics."""
    seeds = validation["seeds"]
    lines = [
        "", f"## Validation at N = {validation['budget']:,} tokens (best checkpoint of each run)", "",
        f"Every mixture trained at {len(seeds)} seed(s) ({', '.join(map(str, seeds))}; a seed selects other examples in"
        " another order, from the same base model); measured: mean ± sd over seeds.", "",
        "| mixture | weights | measured total | predicted total | " + " | ".join(f"{n} meas / pred" for n in names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for label, row in sorted(validation["mixtures"].items(), key=lambda kv: kv[1]["measured_total"]):
        cells = " | ".join(f"{_pm(m, s)} / {p:.4f}" for m, s, p in zip(row["measured"], row["measured_sd"], row["predicted"]))
        lines.append(
            f"| {label} | {', '.join(f'{x:.2f}' for x in row['weights'])} | {_pm(row['measured_total'], row['measured_total_sd'])} |"
            f" {row['predicted_total']:.4f} | {cells} |"
        )
    if validation.get("optimal_vs"):
        lines += [
            "", "Optimal minus each mixture, total loss paired by seed (negative: the optimum is better), 95% t interval:", "",
            "| vs | seeds | mean difference | relative | 95% interval | verdict | predicted difference (relative) |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, d in validation["optimal_vs"].items():
            interval = "-" if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
            lines.append(
                f"| {label} | {d['n']} | {d['mean']:+.4f} | {d['relative']:+.2%} | {interval} | **{d['verdict']}** |"
                f" {d['predicted']:+.4f} ({d['predicted_relative']:+.2%}) |"
            )
    if "grid" in validation:
        g = validation["grid"]
        lines += [
            "", f"Grid search ({g['size']} grid points, {g['seeds']} seed(s); mean ± sd over seeds):",
            f"- paper metric (mean over domains of optimal / best-in-grid per-domain loss - 1): **{_pm(g['paper_metric'], g['paper_metric_sd'], '.2%')}** (paper: 0.66%)",
            f"- total regret ((optimal total - best grid total) / best grid total): **{_pm(g['total_regret'], g['total_regret_sd'], '.2%')}**",
            f"- rank of the optimal mixture by mean measured total among {g['compared'] + 1} grid points and baselines: **{g['rank']}**"
            f" (per seed: {', '.join(map(str, g['rank_per_seed']))})",
        ]
    return lines


def selection_lines(selection: dict, solution: dict, final: dict | None, budget: int, names: Sequence[str]) -> list[str]:
    """report.md's section on the probe runs: the fit variants' errors on them, the choice, the refit's weights."""
    scores = sorted(selection.get("scores", {}).items(), key=lambda kv: kv[1])
    lines = ["", "## Probe runs: which fit variant the validation data favours", ""]
    lines.append(f"{selection.get('probe_runs', '?')} probe runs (every probe mixture at every seed) scored the fit variants"
                 f" (RMSE of predicted vs measured per-domain loss on the probes); chosen: **{selection.get('chosen')}**.")
    if scores:
        lines += ["", "| variant | probe RMSE | vs chosen |", "|---|---|---|"]
        best = scores[0][1]
        lines += [f"| {k} | {v:.4g} | {v / best - 1:+.1%} |" if best > 0 else f"| {k} | {v:.4g} | - |" for k, v in scores]
    if final is not None:
        key = f"{budget:g}"
        before, after = solution["weights"][key], final["weights"][key]
        lines += [
            "", f"Weights at N = {budget:,} before / after the refit on the perturbation and probe runs:", "",
            "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
            "| fit on the perturbation runs | " + " | ".join(f"{x:.3f}" for x in before) + " |",
            "| refit with the probes | " + " | ".join(f"{x:.3f}" for x in after) + " |",
        ]
    return lines


def write_report(r: ReportInputs, out: Path) -> dict:
    fit, solution, names = r.fit, r.solution, r.domains
    outputs = tuple(names) + tuple(fit.targets)
    plot_fits(r.runs_csv, fit, out / "fit_curves.png")
    plot_weights_vs_budget(r.target_budgets, r.constraints, fit, out / "weights_vs_budget.png")
    plot_training_curves(r.histories, out / "training_curves.png")
    validation = validation_summary(r)
    plots = ["fit_curves.png", "weights_vs_budget.png", "training_curves.png"]
    if len(names) == 3:
        optimum = solution["weights"][f"{r.validate_budget:g}"]
        mixtures = {k: v["weights"] for k, v in validation["mixtures"].items()}
        plot_simplex(fit, r.validate_budget, optimum, mixtures, out / "simplex.png", r.constraints.importance)
        plots.append("simplex.png")
    summary = {
        "experiment": r.name, "domains": list(names), "base_model": r.base_model, "answer": r.answer, "solution": solution,
        "validation": validation, "failed_runs": dict(r.failed),
    }
    write_json_atomic(out / "summary.json", summary)

    weighed = [f"{x:g} x {n}" for n, x in zip(outputs, np.asarray(r.constraints.importance, np.float64)) if x]
    lines = [f"# mixjax report: {r.name}", "", f"Base model: {r.base_model or 'none (randomly initialised)'}", "",
             f"Objective (the total below): {' + '.join(weighed)}" + (f"; targets: {', '.join(fit.targets)}" if fit.targets else ""), "", "## Optimal mixture", "",
             f"The answer: {r.answer}. The weights the validation runs trained (the solve of fit.json):", ""]
    lines.append("| budget (tokens) | " + " | ".join(names) + " | predicted total loss |")
    lines.append("|---|" + "---|" * (len(names) + 1))
    for budget, w in solution["weights"].items():
        objective = solution["diagnostics"]["budgets"][budget]["objective"]
        lines.append(f"| {float(budget):,.0f} | " + " | ".join(f"{x:.3f}" for x in w) + f" | {objective:.4f} |")
    lines += ["", "How sure, at each budget (over the plausible laws: the candidate families refitted on residual-bootstrap tables):", ""]
    for budget, d in solution.get("decision", {}).items():
        optimum = ", ".join(f"{n}={x:.3f}" for n, x in zip(names, d["optimum"]))
        lines.append(f"- N = {float(budget):,.0f}: {d['message']} (the law's optimum: {optimum})")
    lines += ["", "## Fitted law", "", "| domain | beta | c | gamma | alpha | e | rmse | out-of-fold max | notes |", "|---|---|---|---|---|---|---|---|---|"]
    for i, d in enumerate(fit.diagnostics):
        p = LawParams(*(float(getattr(fit.params, f)[i]) for f in LawParams._fields))
        lines.append(
            f"| {d.name} | {p.beta:.4g} | {p.c:.4g} | {p.gamma:.4g} | {p.alpha:.3f} | {p.e:.4g} | {d.rmse:.2e} |"
            f" {d.oof_max_rel_error:.2%} | {'; '.join(d.notes) or '-'} |"
        )
    if fit.scores:
        lines += ["", "Law families, out-of-fold on the same folds (* = used):", "", "```", fit.score_table(), "```", ""]
        lines += [f"- {note}" for note in fit.notes]
    if validation["mixtures"]:
        lines += validation_lines(validation, outputs)
    if r.selection is not None:
        lines += selection_lines(r.selection, solution, r.solution_final, r.validate_budget, names)
    if validation["skipped"]:
        lines += ["", "Skipped (infeasible) mixtures:", ""] + [f"- {k}: {v}" for k, v in validation["skipped"].items()]
    if r.failed:
        lines += ["", "## Failed runs", ""] + [f"- {k}: {v}" for k, v in r.failed.items()]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary
