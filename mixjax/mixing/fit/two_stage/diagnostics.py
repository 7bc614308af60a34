"""From the jitted fit's raw outputs to a :class:`~mixjax.mixing.fit.result.Fit`: the chosen alpha variant per
domain, user-unit parameters, residuals, out-of-fold errors and the notes that say when a
domain is poorly identified (arXiv 2508.11953, Sec. 3.2; README "Where mixjax departs").
"""

from __future__ import annotations

import jax
import numpy as np

from mixjax.mixing.fit.config import FitConfig
from mixjax.mixing.fit.result import DomainDiagnostics, Fit, TwoStageDiagnostics
from mixjax.mixing.fit.two_stage.engine import law_params
from mixjax.mixing.law import LawParams, domain_loss, evaluate, rescale_units
from mixjax.mixing.stats import spearman


def _law_at(params: LawParams, x, m) -> np.ndarray:
    return evaluate(domain_loss, LawParams(*params), *np.broadcast_arrays(x, m))


def assemble(domains, cfg: FitConfig, packed, out, scales, variants, m_varies) -> Fit:
    """The :class:`Fit` of the paper's law over ``domains`` (each domain's alpha variant
    chosen by leave-one-run-out error)."""
    params, diags, boots, pooled = [], [], [], ([], [])
    for i, data in enumerate(domains):
        x, m, loss = data.points()
        n = len(x)
        xs, ms = packed["x"][i, :n], packed["m"][i, :n]
        series = packed["series"][i, :n]
        prior_mask = series if series.sum() >= 3 else np.ones(n, bool)
        take = lambda tree, v: jax.tree.map(lambda a: a[i, v], tree)
        oof, loo_rmse = {}, {}
        for v, fit_alpha in enumerate(variants):
            if "folds" in out:
                folds = law_params(take(out["folds"], v))
                fold = packed["fold"][i, :n]
                pred = _law_at(LawParams(*(a[fold] for a in folds)), xs, ms)
                oof[fit_alpha] = pred - loss
                loo_rmse[fit_alpha] = float(np.sqrt(np.mean(oof[fit_alpha] ** 2)))
        if len(variants) == 1:
            chosen = variants[0]
        elif not m_varies[i]:
            chosen = False
        elif loo_rmse:
            chosen = bool(loo_rmse[True] < loo_rmse[False])
        else:
            chosen = False
        v = variants.index(chosen)
        full = take(out["full"], v)
        p = law_params(full)
        residuals = _law_at(p, xs, ms) - loss
        fitted_mask = np.ones(n, bool) if chosen else prior_mask
        errors = oof.get(chosen, np.full(n, np.nan))
        if np.all(np.isfinite(errors)):
            pooled[0].append(loss)
            pooled[1].append(loss + errors)
        params.append(jax.tree.map(float, rescale_units(p, scales[i])))
        if "boot" in out:
            boots.append(jax.tree.map(np.asarray, rescale_units(law_params(take(out["boot"], v)), scales[i])))
        diags.append(
            diagnose(data, cfg, full, residuals, fitted_mask, errors, bool(chosen) and m_varies[i], chosen,
                      loo_rmse, spearman(loss, loss + errors))
        )
    stack = lambda *xs: np.stack(xs, axis=-1)
    validation = None
    if pooled[0]:
        measured, predicted = np.concatenate(pooled[0]), np.concatenate(pooled[1])
        validation = {
            "oof_rmse": float(np.sqrt(np.mean((predicted - measured) ** 2))),
            "oof_spearman": spearman(measured, predicted),
            "num_points": int(len(measured)),
            "folds": int(out["folds"]["beta"].shape[2]) if "folds" in out else 0,
        }
    return Fit(
        domains=tuple(d.name for d in domains),
        family="paper",
        params=LawParams(*(np.asarray(a, np.float64) for a in jax.tree.map(stack, *params))),
        diagnostics=tuple(diags),
        bootstrap_params=jax.tree.map(stack, *boots) if boots else None,
        validation=validation,
        config=cfg,
    )


def diagnose(data, cfg: FitConfig, out, residuals, fitted_mask, errors, alpha_identified, chosen, loo_rmse, rho) -> DomainDiagnostics:
    """One domain's diagnostics with its two-stage record and the notes that flag it."""
    checks, cfg = cfg.checks, cfg.two_stage
    has_series = bool(out["has_series"])
    beta = float(out["stage1_beta"])
    fraction = float(out["transferred_fraction"])
    _, _, loss = data.points()
    rel = np.abs(errors) / loss
    loo_max = float(np.nanmax(rel)) if np.any(np.isfinite(rel)) else float("nan")
    notes, serious = [], []
    refined = bool(out["refined"])
    at_bound = has_series and (beta <= cfg.beta_bounds[0] * 10 or beta >= cfg.beta_bounds[1] * 0.9)
    if refined:
        notes.append(
            f"stage 1 gave beta={beta:.3g}; all parameters refitted jointly (beta={float(out['beta']):.3g})"
        )
    elif at_bound:
        serious.append(f"beta={beta:.3g} is at its bound")
    if fraction < 1e-3 or fraction > 0.999:
        notes.append(f"transferred data A/M={fraction:.3g} is at its bound (the transfer constraint binds)")
    if has_series and float(out["beta_spread"]) > checks.max_start_spread and not refined:
        serious.append(f"starts with near-best stage-1 objective disagree on beta by {float(out['beta_spread']):.0%}")
    if has_series and float(out["transfer_spread"]) > checks.max_start_spread and not refined:
        serious.append(f"starts with near-best stage-1 objective disagree on A/M by {float(out['transfer_spread']):.0%}")
    if np.isfinite(loo_max) and loo_max > checks.max_oof_rel_error:
        serious.append(f"leave-one-out error {loo_max:.2%} exceeds {checks.max_oof_rel_error:.2%}")
    if len(loo_rmse) == 2:
        notes.append(
            f"alpha {'fitted on every run' if chosen else f'held at {cfg.alpha_prior} (own series)'}:"
            f" leave-one-run-out RMSE {loo_rmse[False]:.2e} (alpha at prior) vs {loo_rmse[True]:.2e} (alpha fitted)"
        )
    elif not alpha_identified:
        notes.append(
            f"one other-domain size observed: gamma/alpha split not identified, alpha held at {cfg.alpha_prior}"
        )
    fr = residuals[fitted_mask]
    record = TwoStageDiagnostics(
        procedure=cfg.procedure, stage1_objective=float(out["stage1_objective"]), beta_start_spread=float(out["beta_spread"]),
        transfer_start_spread=float(out["transfer_spread"]), transferred_fraction=fraction, alpha_identified=alpha_identified,
        alpha_choice="fitted" if chosen else "prior", refined=refined,
        loo_rmse_prior=loo_rmse.get(False, float("nan")), loo_rmse_fitted=loo_rmse.get(True, float("nan")),
    )
    return DomainDiagnostics(
        name=data.name, residuals=[float(r) for r in residuals], rmse=float(np.sqrt(np.mean(fr**2))),
        max_abs_residual=float(np.max(np.abs(fr))), oof_errors=[float(r) for r in errors], oof_max_rel_error=loo_max,
        oof_rmse=float(np.sqrt(np.mean(errors**2))), oof_spearman=rho, num_runs=len(residuals),
        notes=notes + serious, poorly_identified=bool(serious), two_stage=record,
    )
