"""The experiment report: report.md, summary.json and plots.

Plots: the fitted law against the measured points per domain; optimal weights against
the budget; for k = 3, the predicted total loss over the simplex with the optimum and
the validated mixtures.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mixjax.io import write_json_atomic  # noqa: E402
from mixjax.mixing.law import domain_loss, mixture_losses, total_loss  # noqa: E402
from mixjax.mixing.runs import domain_data, read_run_table  # noqa: E402
from mixjax.mixing.solve import solve_sweep  # noqa: E402

if TYPE_CHECKING:
    from mixjax.pipeline.stages import Experiment


def plot_fits(exp: "Experiment", fit, path) -> None:
    data = domain_data(read_run_table(exp.dir / "runs.csv"))
    fig, axes = plt.subplots(1, len(data), figsize=(4 * len(data), 3.2), squeeze=False)
    for i, (ax, d) in enumerate(zip(axes[0], data)):
        p = jax.tree.map(lambda a: a[i], fit.params)
        x = np.geomspace(d.in_domain.min() * 0.5, d.in_domain.max() * 2, 100)
        with jax.enable_x64(True):
            ax.plot(x, np.asarray(domain_loss(p, x, d.other)), label="fitted law")
        ax.scatter(d.in_domain, d.loss, color="C1", zorder=3, label="runs perturbing it")
        if d.cross_loss.size:
            ax.scatter(d.cross_in_domain, d.cross_loss, color="C2", marker="x", zorder=3, label="others perturbed")
        ax.set_xscale("log")
        ax.set_title(f"{d.name}: beta={float(p.beta):.3g}, alpha={float(p.alpha):.2f}")
        ax.set_xlabel(f"{d.name} tokens")
        ax.set_ylabel("validation loss")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_weights_vs_budget(exp: "Experiment", fit, path) -> None:
    budgets = np.geomspace(min(exp.config.target_budgets) / 10, max(exp.config.target_budgets) * 10, 40)
    constraints = exp.constraints()
    feasible = budgets[budgets <= constraints.available.sum() * 0.999]
    weights = solve_sweep(fit.params, feasible, constraints, fit.domains)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, name in enumerate(fit.domains):
        ax.plot(feasible, weights[:, i], label=name)
    for b in exp.config.target_budgets:
        ax.axvline(b, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("total budget N (tokens)")
    ax.set_ylabel("optimal weight")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_simplex(exp: "Experiment", fit, budget, optimum, validated: dict[str, np.ndarray], path) -> None:
    """Ternary map of the predicted total loss (k = 3)."""
    n = 120
    grid = np.clip([(i / n, j / n, 1 - (i + j) / n) for i in range(n + 1) for j in range(n + 1 - i)], 0.0, 1.0)
    with jax.enable_x64(True):
        values = np.asarray(jax.vmap(lambda w: total_loss(w, fit.params, float(budget)))(grid))
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
    ax.scatter(*xy(np.asarray(optimum)), marker="*", color="red", s=200, zorder=4, label="optimum")
    names = fit.domains
    for (x, y), name in zip([(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)], names):
        ax.annotate(name, (x, y), ha="center", va="top" if y == 0 else "bottom", fontsize=9)
    ax.set_axis_off()
    ax.set_title(f"predicted total loss at N = {budget:,.0f}", pad=20)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def validation_summary(exp: "Experiment", fit) -> dict:
    names, budget = exp.config.domain_names, exp.validate_budget
    rows = {}
    for spec in exp.validation_specs():
        result = exp.finished(spec.name)
        if result is None:
            continue
        w = np.array([spec.weights[n] for n in names])
        with jax.enable_x64(True):
            predicted = np.asarray(mixture_losses(fit.params, w, float(budget)))
        measured = np.array([result["best_losses"][n] for n in names])
        rows[spec.name.removeprefix("validate-").rsplit("-", 1)[0]] = {
            "weights": w.tolist(), "measured": measured.tolist(), "predicted": predicted.tolist(),
            "measured_total": float(measured.sum()), "predicted_total": float(predicted.sum()),
        }
    summary: dict = {"budget": budget, "mixtures": rows}
    grid = {k: v for k, v in rows.items() if k.startswith("grid-")}
    if grid and "optimal" in rows:
        best = np.min([v["measured"] for v in grid.values()], axis=0)
        ratio = np.asarray(rows["optimal"]["measured"]) / best - 1
        summary["paper_metric"] = {
            "mean_relative_gap_to_best_grid": float(ratio.mean()),
            "per_domain": dict(zip(names, ratio.tolist())),
            "grid_points": len(grid),
        }
    if "optimal" in rows:
        summary["optimal_vs"] = {k: rows[k]["measured_total"] - rows["optimal"]["measured_total"] for k in rows if k != "optimal" and not k.startswith("grid-")}
    return summary


def write_report(exp: "Experiment") -> None:
    from mixjax.mixing.fit import FitResult

    fit = FitResult.from_dict(json.loads((exp.dir / "fit.json").read_text()))
    solution = json.loads((exp.dir / "solution.json").read_text())
    names = fit.domains
    plot_fits(exp, fit, exp.dir / "fit_curves.png")
    plot_weights_vs_budget(exp, fit, exp.dir / "weights_vs_budget.png")
    validation = validation_summary(exp, fit)
    plots = ["fit_curves.png", "weights_vs_budget.png"]
    if len(names) == 3:
        optimum = solution["weights"][f"{exp.validate_budget:g}"]
        mixtures = {k: v["weights"] for k, v in validation.get("mixtures", {}).items()}
        plot_simplex(exp, fit, exp.validate_budget, optimum, mixtures, exp.dir / "simplex.png")
        plots.append("simplex.png")
    summary = {"experiment": exp.config.name, "domains": list(names), "solution": solution, "validation": validation}
    write_json_atomic(exp.dir / "summary.json", summary)

    lines = [f"# mixjax report: {exp.config.name}", "", "## Optimal mixture", ""]
    lines.append("| budget (tokens) | " + " | ".join(names) + " | predicted total loss |")
    lines.append("|---|" + "---|" * (len(names) + 1))
    for budget, w in solution["weights"].items():
        objective = solution["diagnostics"]["budgets"][budget]["objective"]
        lines.append(f"| {float(budget):,.0f} | " + " | ".join(f"{x:.3f}" for x in w) + f" | {objective:.4f} |")
    lines += ["", "## Fitted law", "", "| domain | beta | c | gamma | alpha | e | rmse | LOO max | notes |", "|---|---|---|---|---|---|---|---|---|"]
    for i, d in enumerate(fit.diagnostics):
        p = jax.tree.map(lambda a: float(a[i]), fit.params)
        lines.append(
            f"| {d.name} | {p.beta:.4g} | {p.c:.4g} | {p.gamma:.4g} | {p.alpha:.3f} | {p.e:.4g} | {d.rmse:.2e} |"
            f" {d.loo_max_rel_error:.2%} | {'; '.join(d.notes) or '-'} |"
        )
    if validation.get("mixtures"):
        lines += ["", f"## Validation at N = {validation['budget']:,} tokens (best checkpoint of each run)", ""]
        lines.append("| mixture | weights | measured total | predicted total | " + " | ".join(f"{n} meas/pred" for n in names) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(names))
        for label, row in sorted(validation["mixtures"].items(), key=lambda kv: kv[1]["measured_total"]):
            cells = " | ".join(f"{m:.4f} / {p:.4f}" for m, p in zip(row["measured"], row["predicted"]))
            lines.append(f"| {label} | {', '.join(f'{x:.2f}' for x in row['weights'])} | {row['measured_total']:.4f} | {row['predicted_total']:.4f} | {cells} |")
        if "optimal_vs" in validation:
            lines += [""] + [f"- {k}: measured total loss {v:+.4f} relative to the optimal mixture" for k, v in validation["optimal_vs"].items()]
        if "paper_metric" in validation:
            m = validation["paper_metric"]
            lines += ["", f"Paper metric (mean over domains of optimal / best-in-grid per-domain loss - 1, {m['grid_points']} grid points): **{m['mean_relative_gap_to_best_grid']:.2%}** (paper: 0.66%)"]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    (exp.dir / "report.md").write_text("\n".join(lines) + "\n")
    exp.log(f"report: {exp.dir / 'report.md'}")
