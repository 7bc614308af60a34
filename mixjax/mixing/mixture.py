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
from mixjax.mixing.baselines import grid_search, proportional_weights, simplex_grid, uniform_weights
from mixjax.mixing.fit import DomainData, FitConfig, FitResult, fit_law
from mixjax.mixing.law import LawParams, mixture_losses, total_loss
from mixjax.mixing.solve import Constraints, check_feasible, solve_sweep


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


@dataclasses.dataclass(frozen=True)
class MixtureReport:
    fit: FitResult
    budgets: tuple[BudgetReport, ...]

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


def _objective(params: LawParams, weights, budget, importance) -> float:
    with jax.enable_x64(True):
        return float(total_loss(np.asarray(weights), jax.tree.map(np.asarray, params), budget, importance))


def report_for_params(
    fit: FitResult,
    budgets: Sequence[float],
    constraints: Constraints,
    key: jax.Array,
    grid_step: float | None = 0.05,
) -> MixtureReport:
    """Solve, compare with baselines and analyse the weights for each budget."""
    k = len(fit.domains)
    weights = solve_sweep(fit.params, budgets, constraints, fit.domains)  # checks feasibility
    rows = []
    for budget, w, subkey in zip(budgets, weights, jax.random.split(key, len(budgets))):
        budget = float(budget)
        baselines = {"uniform": uniform_weights(k)}
        if np.all(np.isfinite(constraints.available)):
            baselines["proportional"] = proportional_weights(constraints.available)
        if grid_step:
            grid = simplex_grid(k, grid_step, constraints.lower, constraints.upper)
            if len(grid):
                baselines["grid"] = grid_search(fit.params, budget, grid, constraints.importance)[0]
        d_params, d_budget = weight_jacobians(fit.params, budget, constraints)
        convexity = check_convexity(fit.params, budget, w, subkey, constraints.importance)
        interval = None
        if fit.bootstrap_params is not None:
            ci = bootstrap_weights(fit.bootstrap_params, budget, constraints)
            interval = (ci.low, ci.high)
        with jax.enable_x64(True):
            predicted = np.asarray(mixture_losses(jax.tree.map(np.asarray, fit.params), w, budget))
        rows.append(
            BudgetReport(
                budget=budget,
                weights=w,
                predicted_losses=predicted,
                baselines=baselines,
                baseline_objective={n: _objective(fit.params, b, budget, constraints.importance) for n, b in baselines.items()},
                objective=_objective(fit.params, w, budget, constraints.importance),
                d_weights_d_budget=d_budget,
                d_weights_d_params=d_params._asdict(),
                min_hessian_eigenvalue=convexity.min_eigenvalue,
                convex=convexity.convex,
                interval=interval,
            )
        )
    return MixtureReport(fit=fit, budgets=tuple(rows))


def optimise_mixture(
    domains: Sequence[DomainData],
    budgets: Sequence[float],
    constraints: Constraints | None = None,
    cfg: FitConfig = FitConfig(),
    key: jax.Array | None = None,
    grid_step: float | None = 0.05,
) -> MixtureReport:
    """Fit the law to the runs, then solve and analyse at every budget."""
    key = jax.random.key(0) if key is None else key
    fit_key, report_key = jax.random.split(key)
    constraints = constraints or Constraints.create(len(domains))
    for budget in budgets:  # fail before the (slow) fit
        check_feasible(constraints, float(budget), [d.name for d in domains])
    fit = fit_law(domains, fit_key, cfg)
    return report_for_params(fit, budgets, constraints, report_key, grid_step)
