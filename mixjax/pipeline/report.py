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
from mixjax.mixing.fit import FitResult  # noqa: E402
from mixjax.mixing.law import LawParams, mixture_losses, total_loss  # noqa: E402
from mixjax.mixing.fit.table import predict_table  # noqa: E402
from mixjax.mixing.runs import domain_data, read_run_table  # noqa: E402
from mixjax.mixing.solve import Constraints, solve_sweep  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ReportInputs:
    name: str
    domains: tuple[str, ...]
    fit: FitResult
    solution: dict
    runs_csv: Path
    target_budgets: tuple[int, ...]
    validate_budget: int
    constraints: Constraints
    measured: Mapping[str, tuple[Sequence[float], Sequence[float]]]  # label -> (weights, measured losses)
    skipped: Mapping[str, str]  # label -> why it was not trained
    histories: Mapping[str, list[dict]]  # run name -> result.json history
    base_model: str | None = None
    failed: Mapping[str, str] = dataclasses.field(default_factory=dict)


def plot_fits(runs_csv: Path, fit: FitResult, path) -> None:
    """Per domain: the fitted law along that domain's tokens (others at the base run) and
    the measured runs (those perturbing it, and the others)."""
    table = read_run_table(runs_csv)
    data = {d.name: d for d in domain_data(table)}
    names = [n for n in fit.domains if n in data]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    base = table.base_tokens
    for ax, name in zip(axes[0], names):
        d, i = data[name], fit.domains.index(name)
        x = np.geomspace(max(table.tokens[:, i][table.tokens[:, i] > 0].min(), 1e-9) * 0.5, table.tokens[:, i].max() * 2, 100)
        grid = np.repeat(base[None], len(x), 0)
        grid[:, i] = x
        ax.plot(x, predict_table(fit, fit.domains, grid)[:, i], label="fitted law")
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


def plot_weights_vs_budget(target_budgets: Sequence[int], constraints: Constraints, fit: FitResult, path) -> None:
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


def plot_simplex(fit: FitResult, budget, optimum, validated: dict[str, np.ndarray], path) -> None:
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


def validation_summary(r: ReportInputs) -> dict:
    rows = {}
    for label, (weights, measured) in r.measured.items():
        w = np.asarray(weights, np.float64)
        with jax.enable_x64(True):
            predicted = np.asarray(mixture_losses(r.fit.params, w, float(r.validate_budget)))
        measured = np.asarray(measured, np.float64)
        rows[label] = {
            "weights": w.tolist(), "measured": measured.tolist(), "predicted": predicted.tolist(),
            "measured_total": float(measured.sum()), "predicted_total": float(predicted.sum()),
        }
    summary: dict = {"budget": r.validate_budget, "mixtures": rows, "skipped": dict(r.skipped)}
    grid = grid_metrics(rows, r.domains)
    if grid is not None:
        summary["grid"] = grid
    if "optimal" in rows:
        summary["optimal_vs"] = {k: rows[k]["measured_total"] - rows["optimal"]["measured_total"] for k in rows if k != "optimal" and not k.startswith("grid-")}
    return summary


def write_report(r: ReportInputs, out: Path) -> dict:
    fit, solution, names = r.fit, r.solution, r.domains
    plot_fits(r.runs_csv, fit, out / "fit_curves.png")
    plot_weights_vs_budget(r.target_budgets, r.constraints, fit, out / "weights_vs_budget.png")
    plot_training_curves(r.histories, out / "training_curves.png")
    validation = validation_summary(r)
    plots = ["fit_curves.png", "weights_vs_budget.png", "training_curves.png"]
    if len(names) == 3:
        optimum = solution["weights"][f"{r.validate_budget:g}"]
        mixtures = {k: v["weights"] for k, v in validation["mixtures"].items()}
        plot_simplex(fit, r.validate_budget, optimum, mixtures, out / "simplex.png")
        plots.append("simplex.png")
    summary = {
        "experiment": r.name, "domains": list(names), "base_model": r.base_model, "solution": solution,
        "validation": validation, "failed_runs": dict(r.failed),
    }
    write_json_atomic(out / "summary.json", summary)

    lines = [f"# mixjax report: {r.name}", "", f"Base model: {r.base_model or 'none (randomly initialised)'}", "", "## Optimal mixture", ""]
    lines.append("| budget (tokens) | " + " | ".join(names) + " | predicted total loss |")
    lines.append("|---|" + "---|" * (len(names) + 1))
    for budget, w in solution["weights"].items():
        objective = solution["diagnostics"]["budgets"][budget]["objective"]
        lines.append(f"| {float(budget):,.0f} | " + " | ".join(f"{x:.3f}" for x in w) + f" | {objective:.4f} |")
    lines += ["", "## Fitted law", "", "| domain | beta | c | gamma | alpha | e | rmse | LOO max | notes |", "|---|---|---|---|---|---|---|---|---|"]
    for i, d in enumerate(fit.diagnostics):
        p = LawParams(*(float(getattr(fit.params, f)[i]) for f in LawParams._fields))
        lines.append(
            f"| {d.name} | {p.beta:.4g} | {p.c:.4g} | {p.gamma:.4g} | {p.alpha:.3f} | {p.e:.4g} | {d.rmse:.2e} |"
            f" {d.loo_max_rel_error:.2%} | {'; '.join(d.notes) or '-'} |"
        )
    if hasattr(fit, "score_table"):
        lines += ["", "Law families, out-of-fold on the same folds (* = used):", "", "```", fit.score_table(), "```", ""]
        lines += [f"- {note}" for note in fit.notes]
    if validation["mixtures"]:
        lines += ["", f"## Validation at N = {validation['budget']:,} tokens (best checkpoint of each run)", ""]
        lines.append("| mixture | weights | measured total | predicted total | " + " | ".join(f"{n} meas/pred" for n in names) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(names))
        for label, row in sorted(validation["mixtures"].items(), key=lambda kv: kv[1]["measured_total"]):
            cells = " | ".join(f"{m:.4f} / {p:.4f}" for m, p in zip(row["measured"], row["predicted"]))
            lines.append(f"| {label} | {', '.join(f'{x:.2f}' for x in row['weights'])} | {row['measured_total']:.4f} | {row['predicted_total']:.4f} | {cells} |")
        if "optimal_vs" in validation:
            lines += [""] + [f"- {k}: measured total loss {v:+.4f} relative to the optimal mixture" for k, v in validation["optimal_vs"].items()]
        if "grid" in validation:
            g = validation["grid"]
            lines += [
                "", f"Grid search ({g['size']} grid points):",
                f"- paper metric (mean over domains of optimal / best-in-grid per-domain loss - 1): **{g['paper_metric']:.2%}** (paper: 0.66%)",
                f"- total regret ((optimal total - best grid total) / best grid total): **{g['total_regret']:.2%}**",
                f"- rank of the optimal mixture by measured total among {g['compared'] + 1} grid points and baselines: **{g['rank']}**",
            ]
    if validation["skipped"]:
        lines += ["", "Skipped (infeasible) mixtures:", ""] + [f"- {k}: {v}" for k, v in validation["skipped"].items()]
    if r.failed:
        lines += ["", "## Failed runs", ""] + [f"- {k}: {v}" for k, v in r.failed.items()]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary
