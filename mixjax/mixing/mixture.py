"""From measured runs to recommended weights: fit, solve per budget, baselines, diagnostics.

The one entry point shared by ``python -m mixjax.fit`` and the pipeline's fit/solve stages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from mixjax.mixing.analysis import bootstrap_weights, check_convexity, weight_jacobians
from mixjax.mixing.baselines import (
    feasible_mask,
    grid_search,
    infeasibility,
    proportional_weights,
    grid_candidates,
    uniform_weights,
)
from mixjax.mixing.fit import FitConfig, FitResult
from mixjax.mixing.fit.table import fit_run_table
from mixjax.mixing.runs import RunTable
from mixjax.mixing.law import AnyLawParams, evaluate, mixture_losses, total_loss
from mixjax.mixing.solve import Constraints, check_feasible, host_weight_bounds, solve_sweep


@dataclasses.dataclass(frozen=True)
class BudgetReport:
    budget: float
    weights: np.ndarray
    predicted_losses: np.ndarray  # per domain, at the optimum
    baselines: dict[str, np.ndarray]  # name -> weights
    baseline_objective: dict[str, float]  # name -> predicted objective
    objective: float
    d_weights_d_budget: np.ndarray
    d_weights_d_params: dict[str, np.ndarray]  # field -> (k, k) [weight, domain]
    min_hessian_eigenvalue: float
    convex: bool
    interval: tuple[np.ndarray, np.ndarray] | None  # bootstrap percentile interval
    # Baselines that violate the constraints at this budget: name -> why (not in baselines).
    infeasible_baselines: dict[str, str] = dataclasses.field(default_factory=dict)
    grid_skipped: int = 0  # grid points skipped as infeasible at this budget
    grid_kind: str = ""  # what the grid baseline searched (lattice, or random mixtures at large k)
    uniform_gap: float = float("nan")  # predicted objective(uniform) - objective(optimum)
    warnings: tuple[str, ...] = ()  # why the optimum is poorly determined here


@dataclasses.dataclass(frozen=True)
class MixtureReport:
    fit: FitResult
    budgets: tuple[BudgetReport, ...]

    @property
    def poorly_determined(self) -> bool:
        return any(b.warnings for b in self.budgets)

    def to_dict(self) -> dict[str, Any]:
        rows = self.budgets
        key = lambda b: f"{b.budget:g}"
        return {
            "domains": list(self.fit.domains),
            "params": self.fit.params_dict(),
            "weights": {key(b): b.weights.tolist() for b in rows},
            "predicted_losses": {key(b): b.predicted_losses.tolist() for b in rows},
            "baselines": {
                key(b): {
                    name: {"weights": w.tolist(), "objective": b.baseline_objective[name]}
                    for name, w in b.baselines.items()
                }
                for b in rows
            },
            "infeasible_baselines": {key(b): b.infeasible_baselines for b in rows},
            "grid_skipped": {key(b): b.grid_skipped for b in rows},
            "grid_kind": {key(b): b.grid_kind for b in rows},
            "poorly_determined": {key(b): list(b.warnings) for b in rows},
            "uniform_gap": {key(b): b.uniform_gap for b in rows},
            "validation": self.fit.validation,
            "diagnostics": {
                "domains": {d.name: d.to_dict() for d in self.fit.diagnostics},
                "budgets": {
                    key(b): {
                        "objective": b.objective,
                        "convex": b.convex,
                        "min_hessian_eigenvalue": b.min_hessian_eigenvalue,
                        "d_weights_d_budget": b.d_weights_d_budget.tolist(),
                        "d_weights_d_params": {f: v.tolist() for f, v in b.d_weights_d_params.items()},
                        "interval": None if b.interval is None else [b.interval[0].tolist(), b.interval[1].tolist()],
                    }
                    for b in rows
                },
            },
        }


def objective_value(params: AnyLawParams, weights, budget, importance) -> float:
    """``sum_i s_i L_i(w, N)`` (nats) in float64, as a Python float."""
    return float(evaluate(total_loss, weights, params, budget, importance))


def report_for_params(
    fit: FitResult,
    budgets: Sequence[float],
    constraints: Constraints,
    key: jax.Array,
    grid_step: float | None = 0.05,
    *,
    jump: float = 0.2,
    max_interval: float = 0.1,
) -> MixtureReport:
    """Solve, compare with the feasible baselines and analyse the weights for each budget.

    Baselines that violate the constraints at a budget are left out of ``baselines`` and
    named in ``infeasible_baselines`` (an infeasible mixture may predict a lower loss than
    the constrained optimum); infeasible grid points are skipped and counted.
    """
    k = len(fit.domains)
    weights = solve_sweep(fit.params, budgets, constraints, fit.domains)  # checks feasibility
    full_grid, grid_kind = (
        grid_candidates(k, grid_step, constraints.lower, constraints.upper) if grid_step else (np.zeros((0, k)), "")
    )
    rows = []
    for budget, w, subkey in zip(budgets, weights, jax.random.split(key, len(budgets))):
        budget = float(budget)
        candidates = {"uniform": uniform_weights(k)}
        if np.all(np.isfinite(constraints.available)):
            candidates["proportional"] = proportional_weights(constraints.available)
        baselines, infeasible = {}, {}
        for name, b in candidates.items():
            if feasible_mask(b[None], budget, constraints)[0]:
                baselines[name] = b
            else:
                infeasible[name] = infeasibility(b, budget, constraints, fit.domains)
        grid_skipped = 0
        if len(full_grid):
            ok = feasible_mask(full_grid, budget, constraints)
            grid_skipped = int((~ok).sum())
            if ok.any():
                baselines["grid"] = grid_search(fit.params, budget, full_grid[ok], constraints.importance)[0]
        d_params, d_budget = weight_jacobians(fit.params, budget, constraints)
        convexity = check_convexity(fit.params, budget, w, subkey, constraints.importance)
        interval = None
        if fit.bootstrap_params is not None:
            ci = bootstrap_weights(fit.bootstrap_params, budget, constraints)
            interval = (ci.low, ci.high)
        predicted = evaluate(mixture_losses, fit.params, w, budget)
        objective = objective_value(fit.params, w, budget, constraints.importance)
        rows.append(
            BudgetReport(
                budget=budget,
                weights=w,
                predicted_losses=predicted,
                baselines=baselines,
                baseline_objective={n: objective_value(fit.params, b, budget, constraints.importance) for n, b in baselines.items()},
                objective=objective,
                d_weights_d_budget=d_budget,
                d_weights_d_params=d_params._asdict(),
                min_hessian_eigenvalue=convexity.min_eigenvalue,
                convex=convexity.convex,
                interval=interval,
                infeasible_baselines=infeasible,
                grid_skipped=grid_skipped,
                grid_kind=grid_kind,
                uniform_gap=objective_value(fit.params, uniform_weights(k), budget, constraints.importance) - objective,
            )
        )
    return MixtureReport(fit=fit, budgets=tuple(_with_warnings(rows, constraints, fit.domains, jump, max_interval)))


def _with_warnings(rows, constraints: Constraints, domains, jump: float, max_interval: float) -> list[BudgetReport]:
    """Say where the optimum is poorly determined: a weight at a bound, a jump of more than
    ``jump`` between adjacent budgets, or a bootstrap interval wider than ``max_interval``."""
    order = sorted(range(len(rows)), key=lambda r: rows[r].budget)
    out = list(rows)
    for pos, r in enumerate(order):
        b = rows[r]
        lo, hi = host_weight_bounds(constraints, b.budget)
        why = []
        for i, name in enumerate(domains):
            if b.weights[i] <= lo[i] + 1e-6 and lo[i] == 0:
                why.append(f"{name} at 0")
            elif b.weights[i] <= lo[i] + 1e-6:
                why.append(f"{name} at its lower bound {lo[i]:.3g}")
            elif b.weights[i] >= hi[i] - 1e-6:
                why.append(f"{name} at its upper bound {hi[i]:.3g}")
        if pos > 0:
            prev = rows[order[pos - 1]]
            moved = np.abs(b.weights - prev.weights)
            for i in np.flatnonzero(moved > jump):
                why.append(f"{domains[i]} moves {prev.weights[i]:.2f} -> {b.weights[i]:.2f} from N={prev.budget:g}")
        if b.interval is not None:
            width = b.interval[1] - b.interval[0]
            for i in np.flatnonzero(width > max_interval):
                why.append(f"{domains[i]} bootstrap interval [{b.interval[0][i]:.2f}, {b.interval[1][i]:.2f}] wider than {max_interval:g}")
        if why:
            why.append(f"predicted total-loss gain of the optimum over uniform: {b.uniform_gap:.2e}")
        out[r] = dataclasses.replace(b, warnings=tuple(why))
    return out


def optimise_mixture(
    table: RunTable,
    budgets: Sequence[float],
    constraints: Constraints | None = None,
    cfg: FitConfig = FitConfig(),
    key: jax.Array | None = None,
    grid_step: float | None = 0.05,
) -> MixtureReport:
    """Fit the run table, then solve and analyse at every budget: what ``mixjax.fit`` does
    (same fit, same keys: ``key`` drives both the fit and the analysis).

    Raises:
      ValueError: a table of fewer than 2 domains, an infeasible budget (both before the
        fit) or a table the fit cannot use.
    """
    if len(table.domains) < 2:
        raise ValueError(f"{table.source}: {len(table.domains)} domain ({', '.join(table.domains)}): a mixture needs at least 2")
    key = jax.random.key(0) if key is None else key
    constraints = constraints or Constraints.create(len(table.domains), importance=table.measured.astype(float))
    for budget in budgets:  # fail before the (slow) fit
        check_feasible(constraints, float(budget), list(table.domains))
    fit = fit_run_table(table, key, cfg)
    return report_for_params(fit, budgets, constraints, key, grid_step)
