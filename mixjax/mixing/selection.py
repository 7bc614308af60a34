"""When the runs cannot choose between law variants, say so and settle it with probe runs
(issue #14, item 4).

The variants are the extrapolating law families of :func:`mixjax.mixing.families.fit_table`
(the paper's law and its transfer-matrix extension). Those within out-of-fold noise of the
best (``FamilyFitResult.candidates``) are equally supported by the table; when their
optima at the target budget differ (half-L1 > ``max_distance``) or one's optimum has a
relative regret > ``max_regret`` under another, the weights are not determined by the
data, and the runs that decide are mixtures where the variants' predictions differ most:
at least every candidate's optimum (:func:`propose_probes`). :func:`settle_with_probes`
scores every variant on the trained probes and refits the winner on all runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from mixjax.mixing.families import FamilyFitResult, fit_table, predict_losses
from mixjax.mixing.fit import FitConfig, FitResult
from mixjax.mixing.mixture import objective_value
from mixjax.mixing.runs import RunTable
from mixjax.mixing.solve import Constraints, host_weight_bounds, solve_sweep

MAX_DISTANCE = 0.05  # half-L1 between candidate optima
MAX_REGRET = 0.005  # relative regret of one candidate's optimum under another


def _importance(fit: FitResult, constraints: Constraints) -> np.ndarray:
    return np.asarray(constraints.importance, np.float64) * fit.has_law


def variant_disagreement(fit: FitResult, budget: float, constraints: Constraints) -> dict[str, Any]:
    """Each candidate variant's optimum at ``budget`` and the mutual regrets.

    Returns:
      ``{"candidates": [...], "weights": {v: [k]}, "half_l1": {a: {b: d}}, "regret": {a: {b: r}}``
      (relative regret of a's optimum under b's law), ``"disagree": bool``, ``"message": str}``;
      ``disagree`` is False (and the maps hold one entry) with fewer than two candidates.
    """
    names = [c for c in getattr(fit, "candidates", ()) if c in getattr(fit, "variants", {})]
    constraints = constraints._replace(importance=_importance(fit, constraints))
    weights = {v: solve_sweep(fit.variants[v], [budget], constraints, fit.domains)[0] for v in names}
    half_l1 = {a: {b: float(0.5 * np.abs(weights[a] - weights[b]).sum()) for b in names} for a in names}
    best = {b: objective_value(fit.variants[b], weights[b], budget, constraints.importance) for b in names}
    regret = {
        a: {b: (objective_value(fit.variants[b], weights[a], budget, constraints.importance) - best[b]) / abs(best[b]) for b in names}
        for a in names
    }
    disagree = any(half_l1[a][b] > MAX_DISTANCE or regret[a][b] > MAX_REGRET for a in names for b in names)
    lines = []
    if disagree:
        lines.append(
            f"the runs cannot choose between the law variants {names} (out-of-fold errors within noise) and their"
            f" optima at N={budget:g} differ:"
        )
        for a in names:
            w = ", ".join(f"{d}={x:.3f}" for d, x in zip(fit.domains, weights[a]))
            rg = ", ".join(f"under {b}: {regret[a][b]:+.2%}" for b in names if b != a)
            lines.append(f"  {a}: {w}; regret {rg}; half-L1 to others {max(half_l1[a].values()):.3f}")
        lines.append("  train the proposed probe mixtures (at least each variant's optimum) and refit with them")
    return {
        "candidates": names,
        "weights": {v: w.tolist() for v, w in weights.items()},
        "half_l1": half_l1,
        "regret": regret,
        "disagree": disagree,
        "message": "\n".join(lines),
    }


def probe_key(key: jax.Array) -> jax.Array:
    """The key of :func:`propose_probes`' discriminating draw, from the fit's key (one rule
    for ``mixjax.fit`` and the pipeline, so both propose the same probes)."""
    return jax.random.fold_in(key, 1)


def propose_probes(
    fit: FitResult, budget: float, constraints: Constraints, key: jax.Array, disagreement: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Probe mixtures (name -> weights in fit.domains order) that discriminate the fit variants within
    out-of-fold noise of the best one; {} when the variants agree.

    The probes are every candidate's optimum at ``budget`` (``"optimum:<variant>"``) and
    the feasible mixture, among 4096 Dirichlet(1) draws (from ``key``), where the
    candidates' predicted per-domain losses differ most (``"discriminating"``).
    ``disagreement``: :func:`variant_disagreement` at this budget, when already computed.
    """
    report = disagreement or variant_disagreement(fit, budget, constraints)
    if not report["disagree"]:
        return {}
    probes = {f"optimum:{v}": np.asarray(w) for v, w in report["weights"].items()}
    k = len(fit.domains)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    draws = rng.dirichlet(np.ones(k), 4096)
    lo, hi = host_weight_bounds(constraints, budget)
    draws = draws[np.all((draws >= lo - 1e-12) & (draws <= hi + 1e-12), axis=1)]
    if len(draws):
        preds = np.stack([predict_losses(dataclasses.replace(fit, family=v, params=fit.variants[v]), draws * budget)
                          for v in report["candidates"]])
        spread = np.nansum(np.nanmax(preds, axis=0) - np.nanmin(preds, axis=0), axis=1)
        probes["discriminating"] = draws[int(np.argmax(spread))]
    return probes


def _rows(table: RunTable, keep: np.ndarray) -> RunTable:
    return dataclasses.replace(table, tokens=table.tokens[keep], losses=table.losses[keep],
                               lines=tuple(np.asarray(table.lines)[keep].tolist()))


def _concat(a: RunTable, b: RunTable) -> RunTable:
    return RunTable(domains=a.domains, tokens=np.concatenate([a.tokens, b.tokens]),
                    losses=np.concatenate([a.losses, b.losses]), lines=tuple(a.lines) + tuple(b.lines),
                    source=f"{a.source}+{b.source}")


def _aligned(probes: RunTable, domains: tuple[str, ...]) -> RunTable:
    missing = [d for d in domains if d not in probes.domains]
    if missing:
        raise ValueError(f"{probes.source}: probe runs lack domains {missing}")
    order = [probes.domains.index(d) for d in domains]
    return dataclasses.replace(probes, domains=tuple(domains), tokens=probes.tokens[:, order], losses=probes.losses[:, order])


def settle_with_probes(train: RunTable, probes: RunTable, cfg: FitConfig, key: jax.Array) -> tuple[FitResult, dict]:
    """Refit the candidate variants on `train`, score each on the `probes` runs, choose, refit the chosen one
    on train + probes. Returns (final FitResult, report dict: {"scores": {variant: probe RMSE}, "chosen": str}).

    Every extrapolating variant (the candidates among them) is scored by its
    leave-one-probe-out RMSE (nats, over the probes' measured cells): refitted on train +
    the other probe mixtures, it predicts the held-out mixture at every seed it was trained
    at (the other probes calibrate the level at the probes' budget, so the score is about
    the shape near the optima). ``"level_rmse"``: the train-only fits' RMSE on the probes.
    The report also has ``"margin"`` (runner-up score / chosen score) and ``"candidates"``.

    Raises:
      ValueError: if the probe table lacks one of the training table's domains or has no measured loss.
    """
    probes = _aligned(probes, tuple(train.domains))
    key_fit, key_final = jax.random.split(key)
    fit = fit_table(train, key_fit, cfg)
    measured = ~np.isnan(probes.losses) & fit.has_law[None]
    if not measured.any():
        raise ValueError(f"{probes.source}: no measured loss on a domain with a law")
    variants = tuple(fit.variants)
    # Train-only fits predict every probe (the level at an extrapolated budget included).
    level = {}
    for v, law in fit.variants.items():
        error = predict_losses(dataclasses.replace(fit, family=v, params=law), probes.tokens) - probes.losses
        level[v] = float(np.sqrt(np.mean(error[measured] ** 2)))
    # Leave-one-probe-out: each variant refitted on train + the other probes predicts the
    # held-out probe, so the other probes calibrate it at the probes' budget and the score
    # is about the shape near the optima, which is what moves the weights.
    if len(np.unique(probes.tokens, axis=0)) >= 2:
        errors = {v: np.full(probes.losses.shape, np.nan) for v in variants}
        quick = dataclasses.replace(cfg, families=variants, family="auto", leave_one_out=False)
        # Leave out a whole mixture (every seed of it), so no copy of it stays in the refit.
        mixtures = np.unique(probes.tokens, axis=0)
        for mixture, subkey in zip(mixtures, jax.random.split(key_fit, len(mixtures))):
            held = np.all(np.isclose(probes.tokens, mixture[None], rtol=1e-12), axis=1)
            if held.all():
                continue
            refit = fit_table(_concat(train, _rows(probes, ~held)), subkey, quick)
            for v in variants:
                law = refit.variants[v]
                errors[v][held] = predict_losses(dataclasses.replace(refit, family=v, params=law), probes.tokens[held]) - probes.losses[held]
        scored = measured & np.isfinite(errors[variants[0]])
        scores = {v: float(np.sqrt(np.mean(errors[v][scored] ** 2))) for v in variants} if scored.any() else dict(level)
    else:
        scores = dict(level)
    chosen = min(scores, key=scores.get)
    ranked = sorted(scores.values())
    combined = _concat(train, probes)
    final = fit_table(combined, key_final, dataclasses.replace(cfg, family=chosen))
    report = {
        "scores": scores,
        "level_rmse": level,
        "chosen": chosen,
        "margin": ranked[1] / max(ranked[0], 1e-300) if len(ranked) > 1 else float("nan"),
        "candidates": list(getattr(fit, "candidates", ())),
    }
    return final, report


__all__ = ["propose_probes", "settle_with_probes", "variant_disagreement", "FamilyFitResult"]
