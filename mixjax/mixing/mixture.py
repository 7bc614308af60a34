"""From measured runs to recommended weights, the one orchestration: fit -> select ->
solve -> analyse.

- :func:`fit_table`: every law family fitted (:func:`mixjax.mixing.fit.table.fit_families`),
  one kept (:func:`mixjax.mixing.selection.choose`);
- :func:`decide`: the optimum at every budget, the baselines, the analysis of the weights
  (Jacobians, convexity, bootstrap intervals) and, where the tied families disagree, the
  probe mixtures that would settle it;
- :func:`optimise_mixture`: both; :func:`settle_with_probes`: the refit once probe runs
  are measured.

``python -m mixjax.fit``, the pipeline's fit / solve / validate stages and the Python API
call these; they only parse and write.
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
from mixjax.mixing import selection
from mixjax.mixing.decision import Decision, decide_weights
from mixjax.mixing.fit.config import FitConfig
from mixjax.mixing.fit.result import Fit, predict
from mixjax.mixing.fit.table import fit_families
from mixjax.mixing.law import evaluate, mixture_losses, objective_value
from mixjax.mixing.objective import objective_importance
from mixjax.mixing.runs import RunTable
from mixjax.mixing.solve import Constraints, check_feasible, host_weight_bounds, solve_sweep


@dataclasses.dataclass(frozen=True)
class BudgetReport:
    budget: float
    weights: np.ndarray  # the recommendation (decision.weights)
    predicted_losses: np.ndarray  # per domain, at the recommendation
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
    # Where the tied families' optima differ (selection.variant_disagreement), with the
    # probe mixtures that would settle it under "probes"; None where they agree.
    disagreement: dict[str, Any] | None = None
    optimum: np.ndarray | None = None  # the chosen law's optimum
    optimum_predicted_losses: np.ndarray | None = None
    optimum_objective: float = float("nan")
    decision: Decision | None = None  # how sure, and the recommendation (mixjax.mixing.decision)


@dataclasses.dataclass(frozen=True)
class MixtureReport:
    fit: Fit
    budgets: tuple[BudgetReport, ...]

    @property
    def poorly_determined(self) -> bool:
        return any(b.warnings for b in self.budgets)

    def to_dict(self) -> dict[str, Any]:
        rows = self.budgets
        key = lambda b: f"{b.budget:g}"
        return {
            "domains": list(self.fit.domains),
            "targets": list(self.fit.targets),
            "params": self.fit.params_dict(),
            "weights": {key(b): b.weights.tolist() for b in rows},
            "predicted_losses": {key(b): b.predicted_losses.tolist() for b in rows},
            "optimum": {key(b): b.optimum.tolist() for b in rows},
            "optimum_predicted_losses": {key(b): b.optimum_predicted_losses.tolist() for b in rows},
            "decision": {key(b): b.decision.to_dict() for b in rows},
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
            "disagreement": {key(b): b.disagreement for b in rows if b.disagreement is not None},
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


def _baselines(fit: Fit, budget: float, constraints: Constraints, grid: np.ndarray) -> tuple[dict, dict, int]:
    """(feasible baselines name -> weights, infeasible name -> why, grid points skipped)."""
    k = len(fit.domains)
    candidates = {"uniform": uniform_weights(k)}
    if np.all(np.isfinite(constraints.available)):
        candidates["proportional"] = proportional_weights(constraints.available)
    baselines, infeasible = {}, {}
    for name, b in candidates.items():
        if feasible_mask(b[None], budget, constraints)[0]:
            baselines[name] = b
        else:
            infeasible[name] = infeasibility(b, budget, constraints, fit.domains)
    skipped = 0
    if len(grid):
        ok = feasible_mask(grid, budget, constraints)
        skipped = int((~ok).sum())
        if ok.any():
            baselines["grid"] = grid_search(fit.params, budget, grid[ok], constraints.importance)[0]
    return baselines, infeasible, skipped


def _budget_report(fit: Fit, budget: float, w: np.ndarray, constraints: Constraints, grid, grid_kind: str, key) -> BudgetReport:
    """The optimum ``w`` at ``budget`` against the baselines, with its sensitivities."""
    objective = lambda weights: objective_value(fit.params, weights, budget, constraints.importance)
    baselines, infeasible, skipped = _baselines(fit, budget, constraints, grid)
    d_params, d_budget = weight_jacobians(fit.params, budget, constraints)
    convexity = check_convexity(fit.params, budget, w, key, constraints.importance)
    interval = None
    if fit.bootstrap_params is not None:
        ci = bootstrap_weights(fit.bootstrap_params, budget, constraints)
        interval = (ci.low, ci.high)
    decision = decide_weights(fit, budget, constraints, w)
    recommended = decision.weights
    return BudgetReport(
        budget=budget, weights=recommended, predicted_losses=evaluate(mixture_losses, fit.params, recommended, budget),
        optimum=w, optimum_predicted_losses=evaluate(mixture_losses, fit.params, w, budget), decision=decision, optimum_objective=objective(w),
        baselines=baselines, baseline_objective={n: objective(b) for n, b in baselines.items()}, objective=objective(recommended),
        d_weights_d_budget=d_budget, d_weights_d_params=d_params._asdict(), min_hessian_eigenvalue=convexity.min_eigenvalue,
        convex=convexity.convex, interval=interval, infeasible_baselines=infeasible, grid_skipped=skipped, grid_kind=grid_kind,
        uniform_gap=objective(uniform_weights(len(fit.domains))) - objective(w),
    )


def _disagreement(fit: Fit, budget: float, constraints: Constraints, key: jax.Array) -> dict[str, Any] | None:
    """Where the tied families' optima differ at ``budget``: their report and the probes."""
    if len(fit.candidates) < 2:
        return None
    report = selection.variant_disagreement(fit, budget, constraints)
    if not report["disagree"]:
        return None
    probes = selection.propose_probes(fit, budget, constraints, selection.probe_key(key), report)
    return report | {"probes": {n: np.asarray(w).tolist() for n, w in probes.items()}}


def decide(
    fit: Fit,
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
    the constrained optimum); infeasible grid points are skipped and counted. ``key``
    drives the convexity check and (:func:`mixjax.mixing.selection.probe_key`) the probes.

    Raises:
      ValueError: an infeasible budget, or degenerate parameters.
    """
    k = len(fit.domains)
    weights = solve_sweep(fit.params, budgets, constraints, fit.domains)  # checks feasibility
    grid, grid_kind = grid_candidates(k, grid_step, constraints.lower, constraints.upper) if grid_step else (np.zeros((0, k)), "")
    rows = [_budget_report(fit, float(b), w, constraints, grid, grid_kind, subkey)
            for b, w, subkey in zip(budgets, weights, jax.random.split(key, len(budgets)))]
    rows = [dataclasses.replace(r, disagreement=_disagreement(fit, r.budget, constraints, key)) for r in rows]
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
            why.append(f"predicted gain of the optimum over uniform in the objective: {b.uniform_gap:.2e} nats")
        out[r] = dataclasses.replace(b, warnings=tuple(why))
    return out


def fit_table(table: RunTable, key: jax.Array, cfg: FitConfig = FitConfig()) -> Fit:
    """Fit every law family to ``table`` and keep the one ``cfg`` asks for (fit -> select).

    Raises:
      RunTableError / ValueError: a table the fit cannot use.
    """
    return selection.choose(fit_families(table, key, cfg))


def optimise_mixture(
    table: RunTable,
    budgets: Sequence[float],
    constraints: Constraints | None = None,
    cfg: FitConfig = FitConfig(),
    key: jax.Array | None = None,
    grid_step: float | None = 0.05,
) -> MixtureReport:
    """Fit the run table, then solve and analyse at every budget: what ``mixjax.fit`` does
    (``key`` drives the fit, the analysis and the probes).

    Raises:
      ValueError: a table of fewer than 2 domains, an infeasible budget (both before the
        fit) or a table the fit cannot use.
    """
    if len(table.domains) < 2:
        raise ValueError(f"{table.source}: {len(table.domains)} domain ({', '.join(table.domains)}): a mixture needs at least 2")
    key = jax.random.key(0) if key is None else key
    constraints = constraints or Constraints.create(
        len(table.domains), importance=objective_importance(table.outputs, len(table.domains), table.measured))
    for budget in budgets:  # fail before the (slow) fit
        check_feasible(constraints, float(budget), list(table.domains))
    return decide(fit_table(table, key, cfg), budgets, constraints, key, grid_step)


def _rows(table: RunTable, keep: np.ndarray) -> RunTable:
    return dataclasses.replace(table, tokens=table.tokens[keep], losses=table.losses[keep],
                               lines=tuple(np.asarray(table.lines)[keep].tolist()))


def _concat(a: RunTable, b: RunTable) -> RunTable:
    return RunTable(domains=a.domains, tokens=np.concatenate([a.tokens, b.tokens]),
                    losses=np.concatenate([a.losses, b.losses]), lines=tuple(a.lines) + tuple(b.lines),
                    source=f"{a.source}+{b.source}", targets=a.targets)


def _aligned(probes: RunTable, train: RunTable) -> RunTable:
    """``probes`` with ``train``'s domains and targets in ``train``'s order (a target the
    probes did not measure: NaN)."""
    missing = [d for d in train.domains if d not in probes.domains]
    if missing:
        raise ValueError(f"{probes.source}: probe runs lack domains {missing}")
    order = [probes.domains.index(d) for d in train.domains]
    nan = np.full((len(probes.losses), 1), np.nan)
    losses = [probes.losses[:, [probes.outputs.index(o)]] if o in probes.outputs else nan for o in train.outputs]
    return dataclasses.replace(probes, domains=train.domains, targets=train.targets, tokens=probes.tokens[:, order],
                               losses=np.concatenate(losses, axis=1))


def _leave_one_probe_out(fit: Fit, train: RunTable, probes: RunTable, cfg: FitConfig, key: jax.Array) -> dict[str, np.ndarray]:
    """Each family refitted on train + the other probe mixtures predicts the held-out one
    (every seed of it): the other probes calibrate the level at the probes' budget, so the
    error is about the shape near the optima, which is what moves the weights."""
    families = tuple(fit.variants)
    errors = {v: np.full(probes.losses.shape, np.nan) for v in families}
    quick = dataclasses.replace(cfg, family="auto", families=dataclasses.replace(cfg.families, scored=families),
                                folds=dataclasses.replace(cfg.folds, enabled=False))
    mixtures = np.unique(probes.tokens, axis=0)
    for mixture, subkey in zip(mixtures, jax.random.split(key, len(mixtures))):
        held = np.all(np.isclose(probes.tokens, mixture[None], rtol=1e-12), axis=1)
        if held.all():
            continue
        refit = fit_table(_concat(train, _rows(probes, ~held)), subkey, quick)
        for v in families:
            errors[v][held] = predict(refit, probes.tokens[held], family=v) - probes.losses[held]
    return errors


def settle_with_probes(fit: Fit, train: RunTable, probes: RunTable, cfg: FitConfig, key: jax.Array) -> tuple[Fit, dict]:
    """Score the families of ``fit`` (the recorded fit of ``train``) on the measured probe
    runs, choose, refit the chosen one on train + probes.

    Every extrapolating family is scored by its leave-one-probe-out RMSE (nats, over the
    probes' measured cells); ``"level_rmse"``: ``fit``'s own RMSE on the probes (the level
    at an extrapolated budget included).

    Returns:
      (the final Fit, {"scores": {family: RMSE}, "level_rmse", "chosen", "margin" (runner-up
      score / chosen score), "candidates"}).
    Raises:
      ValueError: if the probe table lacks one of the training table's domains or has no
        measured loss on a domain with a law.
    """
    probes = _aligned(probes, train)
    measured = ~np.isnan(probes.losses) & fit.has_law[None]
    if not measured.any():
        raise ValueError(f"{probes.source}: no measured loss on a domain with a law")
    level = {v: float(np.sqrt(np.mean((predict(fit, probes.tokens, family=v) - probes.losses)[measured] ** 2))) for v in fit.variants}
    scores = dict(level)
    if len(np.unique(probes.tokens, axis=0)) >= 2:
        errors = _leave_one_probe_out(fit, train, probes, cfg, key)
        scored = measured & np.isfinite(errors[next(iter(errors))])
        if scored.any():
            scores = {v: float(np.sqrt(np.mean(errors[v][scored] ** 2))) for v in errors}
    chosen = min(scores, key=scores.get)
    ranked = sorted(scores.values())
    final = fit_table(_concat(train, probes), jax.random.fold_in(key, 1), dataclasses.replace(cfg, family=chosen))
    report = {"scores": scores, "level_rmse": level, "chosen": chosen,
              "margin": ranked[1] / max(ranked[0], 1e-300) if len(ranked) > 1 else float("nan"),
              "candidates": list(fit.candidates)}
    return final, report
