"""Choosing the law the weights come from: out-of-fold scores, ties, and the runs that
settle a tie.

- :func:`score`: out-of-fold (or test) scores of predictions against measured losses.
- :func:`equivalent`: the families the runs cannot tell from the best one.
- :func:`choose`: the family a fit keeps (``FitConfig.family``: "auto" is the
  extrapolating family with the lowest out-of-fold RMSE), as a :class:`Fit`.
- :func:`variant_disagreement` / :func:`propose_probes`: where the tied families' optima
  differ at a budget, and the probe mixtures that would settle it (every candidate's
  optimum and the mixture where their predictions differ most).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from mixjax.mixing.fit.families import FAMILIES, GBM_SCORE, exp_params, law_params
from mixjax.mixing.fit.result import DomainDiagnostics, Fit, predict, unmeasured
from mixjax.mixing.law import objective_value
from mixjax.mixing.solve import Constraints, host_weight_bounds, solve_sweep
from mixjax.mixing.stats import spearman

MAX_DISTANCE = 0.05  # half-L1 between candidate optima
MAX_REGRET = 0.005  # relative regret of one candidate's optimum under another


def score(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Scores of predictions (R, D) against measured losses (R, D; NaN: not measured), nats:
    ``rmse`` (every measured cell), ``total_rmse`` / ``total_spearman`` (per-run sums over
    fully measured runs), ``domain_spearman`` (mean over domains)."""
    ok = ~np.isnan(measured)
    err = (predicted - measured)[ok]
    full_rows = np.all(ok, axis=1)
    total_m, total_p = measured[full_rows].sum(axis=1), predicted[full_rows].sum(axis=1)
    rhos = [spearman(measured[ok[:, d], d], predicted[ok[:, d], d]) for d in range(measured.shape[1])]
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "total_rmse": float(np.sqrt(np.mean((total_p - total_m) ** 2))) if full_rows.any() else float("nan"),
        "total_spearman": spearman(total_m, total_p),
        "domain_spearman": float(np.nanmean(rhos)) if np.any(np.isfinite(rhos)) else float("nan"),
    }


def equivalent(errors: dict[str, np.ndarray], best: str, z: float = 2.0, tolerance: float = 0.0) -> list[str]:
    """Families the data cannot tell from ``best``: their out-of-fold RMSE (errors (R, D))
    is within ``tolerance`` (a fraction) of best's, a difference the runs' noise cannot
    resolve, or their per-run squared error is not worse than best's by more than ``z``
    standard errors, paired over runs."""
    out = []
    base = np.nansum(errors[best] ** 2, axis=1)
    rmse = lambda e: float(np.sqrt(np.nanmean(e**2)))
    for name, e in errors.items():
        d = np.nansum(e**2, axis=1) - base
        se = np.std(d, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
        if name == best or np.mean(d) <= z * se or rmse(e) <= (1 + tolerance) * rmse(errors[best]):
            out.append(name)
    return out


def _chosen_family(cfg, scores: dict, extrapolating: list[str], num_folds: int) -> str:
    if cfg.family != "auto":
        return cfg.family
    if not num_folds:
        return "transfer" if "transfer" in extrapolating else extrapolating[0]
    return min(extrapolating, key=lambda f: scores[f]["rmse"])


def _comparator_note(scores, errors, chosen: str, families) -> list[str]:
    """A note when a family that cannot extrapolate predicts held-out runs clearly better."""
    others = [f for f in families if not FAMILIES[f].extrapolates]
    if not others:
        return []
    best = min(others, key=lambda f: scores[f]["rmse"])
    if chosen in equivalent({chosen: errors[chosen], best: errors[best]}, best) or scores[best]["rmse"] >= scores[chosen]["rmse"]:
        return []
    return [f"the {best!r} family (no budget dependence: it cannot extrapolate in N) predicts held-out runs clearly"
            f" better (out-of-fold RMSE {scores[best]['rmse']:.4g} vs {scores[chosen]['rmse']:.4g}); weights at"
            " budgets far from the table's are the extrapolating law's"]


def choose(fits) -> Fit:
    """The :class:`Fit` of :func:`mixjax.mixing.fit.table.fit_families`' output: the family
    ``fits.config.family`` asks for (auto: the extrapolating one with the lowest
    out-of-fold RMSE), the families within out-of-fold noise of it (``candidates``), every
    family's scores and the chosen fit's per-domain diagnostics."""
    if fits.two_stage is not None:
        return fits.two_stage
    fits, target_notes = _targets_on_their_own_family(fits)
    cfg, table, measured = fits.config, fits.table, fits.measured
    target = table.losses[:, measured]
    scores = {f: score(target, ff.oof) | {"extrapolates": FAMILIES[f].extrapolates, "seconds": ff.seconds} for f, ff in fits.fits.items()}
    if fits.gbm is not None:
        scores[GBM_SCORE] = score(target, fits.gbm.oof) | {"extrapolates": False, "seconds": fits.gbm.seconds, "reference_only": True}
    errors = {f: ff.oof - target for f, ff in fits.fits.items()}
    extrapolating = [f for f in fits.fits if FAMILIES[f].extrapolates]
    chosen = _chosen_family(cfg, scores, extrapolating, fits.num_folds)
    tolerance = cfg.decision.equivalence
    candidates = tuple(equivalent({f: errors[f] for f in extrapolating}, chosen, tolerance=tolerance)) if fits.num_folds else (chosen,)
    notes = _comparator_note(scores, errors, chosen, fits.fits) if fits.num_folds else []
    auto = cfg.family == "auto" and fits.num_folds
    notes.insert(0, f"law family: {chosen!r}" + (f" (lowest out-of-fold RMSE of the families that extrapolate in N, {fits.num_folds} folds)" if auto else ""))
    law_of = lambda f, theta: law_params("transfer" if table.targets else f, theta, measured, fits.scale, fits.sources)
    variants = {f: law_of(f, fits.fits[f].theta) for f in extrapolating}
    fit = Fit(
        domains=tuple(table.domains), targets=tuple(table.targets), params=variants[chosen], family=chosen, scores=scores, variants=variants,
        candidates=candidates, exp_params=exp_params(fits.fits["exp"].theta, measured) if "exp" in fits.fits else None,
        notes=tuple(notes), config=cfg,
        validation={"oof_rmse": scores[chosen]["rmse"], "oof_spearman": scores[chosen]["domain_spearman"],
                    "num_points": int((~np.isnan(target)).sum()), "folds": int(fits.num_folds)},
        diagnostics=tuple(unmeasured(d) if not m else DomainDiagnostics(d) for d, m in zip(table.outputs, measured)),
        samples={f: _stacked([law_of(f, theta) for theta in fits.fits[f].samples])
                 for f in extrapolating if fits.fits[f].samples is not None and len(fits.fits[f].samples)},
    )
    diagnostics = _diagnostics(fit, table, errors[chosen], measured)
    diagnostics = tuple(dataclasses.replace(d, notes=[*target_notes[d.name], *d.notes]) if d.name in target_notes else d for d in diagnostics)
    return dataclasses.replace(fit, diagnostics=diagnostics)


def _targets_on_their_own_family(fits):
    """Each target's law from the extrapolating family with the lowest out-of-fold RMSE on
    that target, in every family's fit (the family choice is the domains'; a target has no
    own-domain term, and the paper's law makes its loss a function of the budget alone).
    Returns (the fits with the targets' rows replaced, {target: [note]})."""
    table, measured = fits.table, fits.measured
    k = len(table.domains)
    rows = np.flatnonzero(measured)
    extrapolating = [f for f in fits.fits if FAMILIES[f].extrapolates]
    if not table.targets or not fits.num_folds or len(extrapolating) < 2:
        return fits, {}
    replaced = {f: ff for f, ff in fits.fits.items()}
    notes = {}
    for row, i in enumerate(rows):
        if i < k:
            continue
        measured_i = ~np.isnan(table.losses[:, i])
        rmse = {f: float(np.sqrt(np.mean((fits.fits[f].oof[measured_i, row] - table.losses[measured_i, i]) ** 2))) for f in extrapolating}
        best = min(rmse, key=rmse.get)
        name = table.outputs[i]
        notes[name] = [f"target: its law is the {best!r} family's (out-of-fold RMSE " + ", ".join(f"{f} {v:.3g}" for f, v in rmse.items()) + ")"]
        if best == "paper":
            notes[name].append("under the paper's law a target's loss depends on the budget only: it does not move the weights")
        for f in extrapolating:
            replaced[f] = _with_row(replaced[f], fits.fits[best], row)
    return dataclasses.replace(fits, fits=replaced), notes


def _with_row(fit, source, row: int):
    """``fit`` (a FamilyFit) with measured output ``row`` taken from ``source``."""
    def take(a, b, axis: int):
        if a is None or b is None:
            return None
        out, at = np.array(a), (slice(None),) * axis + (row,)
        out[at] = b[at]
        return out

    return dataclasses.replace(fit, theta=take(fit.theta, source.theta, 0), oof=take(fit.oof, source.oof, 1),
                               fitted=take(fit.fitted, source.fitted, 1), samples=take(fit.samples, source.samples, 1))


def _stacked(laws: list):
    """Parameters of several laws stacked on a leading axis."""
    return type(laws[0])(*(np.stack(fields) for fields in zip(*laws)))


def _diagnostics(fit: Fit, table, oof: np.ndarray, measured_cols: np.ndarray) -> tuple[DomainDiagnostics, ...]:
    """One entry per output of the table (domains then targets); unmeasured ones say they
    have no law. ``oof``: out-of-fold errors (R, D) of the measured outputs (NaN without folds)."""
    pred = predict(fit, table.tokens)
    bounds = fit.config.families.beta_bounds
    limit = fit.config.checks.max_oof_rel_error
    out = [unmeasured(d) for d in table.outputs]
    for col, i in enumerate(np.flatnonzero(measured_cols)):
        ok = ~np.isnan(table.losses[:, i])
        res = pred[ok, i] - table.losses[ok, i]
        err = oof[ok, col]
        rel = np.abs(err) / table.losses[ok, i]
        oof_max = float(np.nanmax(rel)) if np.any(np.isfinite(rel)) else float("nan")
        notes = []
        beta = float(fit.params.beta[i])
        if not bounds[0] * 1.01 < beta < bounds[1] * 0.99:
            notes.append(f"beta={beta:.3g} is at its bound: the runs barely constrain the curve's shape, so"
                         " predictions far from the table's budgets are extrapolations")
        if np.isfinite(oof_max) and oof_max > limit:
            notes.append(f"leave-one-out error {oof_max:.2%} exceeds {limit:.2%}")
        k = len(table.domains)
        if i >= k and ok.sum() < k + 4:  # a target's law: about k + 3 identifiable parameters (level, exponent, floor, rho, k - 1 transfer weights)
            notes.append(f"measured in {int(ok.sum())} runs, too few for a law of {k} domains' tokens (about {k + 3} parameters):"
                         f" its weights are not determined by the runs; measure it in at least {k + 4}")
        out[i] = DomainDiagnostics(
            name=table.outputs[i], residuals=res.tolist(), rmse=float(np.sqrt(np.mean(res**2))),
            max_abs_residual=float(np.max(np.abs(res))), oof_errors=err.tolist(), oof_max_rel_error=oof_max,
            oof_rmse=float(np.sqrt(np.nanmean(err**2))) if np.any(np.isfinite(err)) else float("nan"),
            oof_spearman=spearman(table.losses[ok, i], table.losses[ok, i] + err), num_runs=int(ok.sum()),
            notes=notes, poorly_identified=bool(notes),
        )
    return tuple(out)


# --------------------------------------------------------------------------- ties at a budget


def _importance(fit: Fit, constraints: Constraints) -> np.ndarray:
    return np.asarray(constraints.importance, np.float64) * fit.has_law


def variant_disagreement(fit: Fit, budget: float, constraints: Constraints) -> dict[str, Any]:
    """Each candidate family's optimum at ``budget`` and the mutual regrets.

    Returns:
      ``{"candidates": [...], "weights": {v: [k]}, "half_l1": {a: {b: d}}, "regret": {a: {b: r}}``
      (relative regret of a's optimum under b's law), ``"disagree": bool``, ``"message": str}``;
      ``disagree`` is False (and the maps hold one entry) with fewer than two candidates.
    """
    names = [c for c in fit.candidates if c in fit.variants]
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
    return {"candidates": names, "weights": {v: w.tolist() for v, w in weights.items()}, "half_l1": half_l1,
            "regret": regret, "disagree": disagree, "message": "\n".join(lines)}


def probe_key(key: jax.Array) -> jax.Array:
    """The key of :func:`propose_probes`' discriminating draw, from the fit's key (one rule
    for ``mixjax.fit`` and the pipeline, so both propose the same probes)."""
    return jax.random.fold_in(key, 1)


def propose_probes(fit: Fit, budget: float, constraints: Constraints, key: jax.Array,
                   disagreement: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Probe mixtures (name -> weights in fit.domains order) that discriminate the candidate
    families; {} when they agree.

    The probes are every candidate's optimum at ``budget`` (``"optimum:<family>"``) and the
    feasible mixture, among 4096 Dirichlet(1) draws (from ``key``), where the candidates'
    predicted per-domain losses differ most (``"discriminating"``). ``disagreement``:
    :func:`variant_disagreement` at this budget, when already computed.
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
        preds = np.stack([predict(fit, draws * budget, family=v) for v in report["candidates"]])
        spread = np.nansum(np.nanmax(preds, axis=0) - np.nanmin(preds, axis=0), axis=1)
        probes["discriminating"] = draws[int(np.argmax(spread))]
    return probes
