"""Every law family fitted to a run table, scored on the same folds, the best one kept
(:func:`fit_table`)."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from mixjax.mixing.families.engine import compile_group, fit_group, run_folds
from mixjax.mixing.families.result import BETA_BOUNDS, EXTRAPOLATES, FAMILIES, LAW_FIXED, FamilyFitResult, predict_losses
from mixjax.mixing.fit import DomainDiagnostics, FitConfig, fit_law, spearman
from mixjax.mixing.fit.diagnostics import unmeasured_diagnostics
from mixjax.mixing.law import NO_LAW, AnyLawParams, LawParams, TransferLawParams, rescale_units
from mixjax.mixing.runs import RunTable, RunTableError, domain_data

Array = jax.Array


def _gbm_oof(tokens, losses, measured_cols, folds, num_folds, seed: int) -> np.ndarray:
    """Out-of-fold LightGBM predictions on the proportions (a reference only; never solved)."""
    import lightgbm

    r = tokens / tokens.sum(axis=1, keepdims=True)
    d_idx = np.flatnonzero(measured_cols)
    oof = np.full((len(r), len(d_idx)), np.nan)
    for col, d in enumerate(d_idx):
        ok = ~np.isnan(losses[:, d])
        for f in range(num_folds):
            train, test = ok & (folds != f), folds == f
            # min_child_samples: LightGBM's default 20 makes no split at all on small tables.
            model = lightgbm.LGBMRegressor(n_estimators=1000, learning_rate=0.01, num_leaves=31, random_state=seed,
                                           min_child_samples=int(max(2, min(20, train.sum() // 5))), verbose=-1, n_jobs=2)
            model.fit(r[train], losses[train, d])
            oof[test, col] = model.predict(r[test])
    return oof


def score(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Out-of-fold (or test) scores of predictions (R, D) against measured losses (R, D, NaN: not measured)."""
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


def _within_noise(errors: dict[str, np.ndarray], best: str, z: float = 2.0) -> list[str]:
    """Families whose per-run squared error is not worse than ``best``'s by more than ``z``
    standard errors (paired over runs): the data cannot tell them apart."""
    out = []
    base = np.nansum(errors[best] ** 2, axis=1)
    for name, e in errors.items():
        d = np.nansum(e**2, axis=1) - base
        se = np.std(d, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
        if name == best or np.mean(d) <= z * se:
            out.append(name)
    return out


def _to_law(family: str, theta: np.ndarray, measured_cols: np.ndarray, scale: float) -> AnyLawParams:
    """Stacked per-domain vectors -> k-entry law params in the table's token units."""
    k = len(measured_cols)
    beta, c, gamma, alpha, e = (np.full(k, NO_LAW[f]) for f in LawParams._fields)
    rho = np.ones(k)
    t = np.ones((k, k)) - np.eye(k)
    for row, i in enumerate(np.flatnonzero(measured_cols)):
        th = theta[row]
        c[i], beta[i], gamma[i], alpha[i], e[i] = np.exp(th[0]), np.exp(th[1]), np.exp(th[2]), th[3], np.exp(th[4])
        rho[i] = th[5]
        u = np.where(np.arange(k) == i, -np.inf, th[LAW_FIXED:])
        w = np.exp(u - u.max())
        t[i] = w / (w.sum() / (k - 1))
    if family == "paper":
        law = LawParams(beta, c, gamma, alpha, e)
    else:
        law = TransferLawParams(beta, c, gamma, alpha, e, t, rho)
    return rescale_units(law, scale)


def fit_table(table: RunTable, key: Array, cfg: FitConfig = FitConfig()) -> FamilyFitResult:
    """Fit every law family to a run table, score them on the same folds, keep the best.

    Args:
      table: runs (R, k) of tokens (>= 0, any unit; a 0 is a domain left out of a run) and
        losses (nats; NaN where not measured). A domain never measured gets no law.
      key: PRNG key (starts and folds).
      cfg: ``family`` ("auto" or one of :data:`FAMILIES`), ``families`` (scored),
        ``transfer_prior`` (std of log t), ``max_folds``/``kfold`` (folds),
        ``num_family_starts``, ``family_iterations``, ``huber_delta_loss``, ``reference_gbm``.
    Returns:
      :class:`FamilyFitResult` with the chosen family's parameters (table units), every
      family's out-of-fold scores, the extrapolating families' fits and notes.
    Raises:
      ValueError: negative or non-finite tokens, a run with no tokens, no domain with >= 3
        measured runs, or an unknown family.
    """
    tokens = np.asarray(table.tokens, np.float64)
    losses = np.asarray(table.losses, np.float64)
    families = tuple(cfg.families)
    for f in families + ((cfg.family,) if cfg.family != "auto" else ()):
        if f not in FAMILIES:
            raise ValueError(f"unknown law family {f!r}; choose from {FAMILIES}")
    if cfg.family != "auto" and cfg.family not in families:
        families = families + (cfg.family,)
    if np.any(tokens < 0) or not np.all(np.isfinite(tokens)):
        raise ValueError(f"{table.source}: tokens must be finite and >= 0")
    if np.any(tokens.sum(axis=1) <= 0):
        raise ValueError(f"{table.source}: a run has no tokens")
    counts = np.sum(~np.isnan(losses), axis=0)
    few = [(d, int(c)) for d, c in zip(table.domains, counts) if 0 < c < 3]
    if few:
        raise ValueError(f"{table.source}: domain {few[0][0]} has {few[0][1]} runs with a measured loss; the fit needs >= 3")
    measured_cols = counts >= 3
    if not measured_cols.any():
        raise ValueError(f"{table.source}: no domain has a measured loss")
    notes = []  # an unmeasured domain says so once, in its diagnostics (unmeasured_diagnostics)
    scale = float(np.median(tokens.sum(axis=1)))
    x = tokens / scale
    key_fold, key_fit = jax.random.split(key)
    rng_fold = np.random.default_rng(np.asarray(jax.random.key_data(key_fold)).ravel())
    rng_fit = np.random.default_rng(np.asarray(jax.random.key_data(key_fit)).ravel())
    folds, num_folds = run_folds(len(x), cfg, rng_fold) if cfg.leave_one_out else (np.zeros(len(x), int), 0)
    target = losses[:, measured_cols]
    # The paper's law first: its residuals set the noise scale of the transfer law's
    # prior (an empirical-Bayes ridge: the worse the lumped law fits, the more freedom).
    order = [f for f in ("paper", "transfer", "exp") if f in families or (f == "paper" and "transfer" in families)]
    fulls, scores, errors = {}, {}, {}
    with ThreadPoolExecutor(max_workers=1) as ahead, jax.enable_x64(True):
        # Compile the families' programs (paper and transfer share one) while the two-stage
        # start runs: XLA compiles without the GIL, and compiling is most of a first call.
        compiling = [ahead.submit(compile_group, group, x, losses, measured_cols, folds, num_folds, cfg)
                     for group in dict.fromkeys(("exp",) if f == "exp" else ("paper",) for f in order)]
        warm, noise = _two_stage_start(table, measured_cols, scale, key_fit, cfg)
        for family in order:
            start = time.perf_counter()
            full, oof, fitted = fit_group((family,), x, losses, measured_cols, folds, num_folds, cfg, rng_fit, noise, warm)[family]
            seconds = time.perf_counter() - start
            if family == "paper":  # its residual RMS per domain (nats)
                noise = np.sqrt(np.nanmean((fitted - target) ** 2, axis=0))
            if family not in families:
                continue
            fulls[family] = full
            scores[family] = score(target, oof) | {"extrapolates": EXTRAPOLATES[family], "seconds": seconds}
            errors[family] = oof - target
        for job in compiling:
            job.result()  # a compile that failed in the thread (its fit compiled it again) is not lost
        scores = {f: scores[f] for f in families}
    if cfg.reference_gbm and num_folds:
        start = time.perf_counter()
        oof = _gbm_oof(x, losses, measured_cols, folds, num_folds, int(rng_fit.integers(2**31)))
        scores["gbm"] = score(target, oof) | {"extrapolates": False, "seconds": time.perf_counter() - start,
                                              "reference_only": True}
    extrapolating = [f for f in families if EXTRAPOLATES[f]]
    if not extrapolating:
        raise ValueError(f"families {families}: none extrapolates in N, so none can be solved (the exp family is a comparator)")
    if cfg.family != "auto":
        chosen = cfg.family
    elif not num_folds:
        chosen = "transfer" if "transfer" in extrapolating else extrapolating[0]
    else:
        chosen = min(extrapolating, key=lambda f: scores[f]["rmse"])
    candidates = tuple(_within_noise({f: errors[f] for f in extrapolating}, chosen)) if num_folds and chosen in extrapolating else (chosen,)
    if num_folds:
        others = [f for f in families if not EXTRAPOLATES[f]]
        if others:
            best_other = min(others, key=lambda f: scores[f]["rmse"])
            if chosen in errors and chosen not in _within_noise({chosen: errors[chosen], best_other: errors[best_other]}, best_other) \
                    and scores[best_other]["rmse"] < scores[chosen]["rmse"]:
                notes.append(
                    f"the {best_other!r} family (no budget dependence: it cannot extrapolate in N) predicts held-out runs clearly"
                    f" better (out-of-fold RMSE {scores[best_other]['rmse']:.4g} vs {scores[chosen]['rmse']:.4g}); weights at"
                    " budgets far from the table's are the extrapolating law's"
                )
    notes.insert(0, f"law family: {chosen!r}" + (f" (lowest out-of-fold RMSE of the families that extrapolate in N, {num_folds} folds)" if cfg.family == "auto" and num_folds else ""))
    variants = {f: _to_law(f, fulls[f], measured_cols, scale) for f in extrapolating}
    exp_params = None
    if "exp" in fulls:
        th = fulls["exp"]
        k = len(measured_cols)
        exp_params = {"c": np.zeros(k), "log_k": np.full(k, -np.inf), "t": np.zeros((k, k))}
        rows = np.flatnonzero(measured_cols)
        exp_params["c"][rows], exp_params["log_k"][rows], exp_params["t"][rows] = th[:, 0], th[:, 1], th[:, 2:]
    params = variants.get(chosen) if chosen in variants else _to_law("paper", np.zeros((0, 0)), np.zeros(len(measured_cols), bool), 1.0)
    result = FamilyFitResult(
        domains=tuple(table.domains),
        params=params,
        diagnostics=(),
        validation={"oof_rmse": scores[chosen]["rmse"], "oof_spearman": scores[chosen]["domain_spearman"],
                    "num_points": int((~np.isnan(target)).sum()), "folds": int(num_folds)},
        family=chosen,
        scores=scores,
        variants=variants,
        candidates=candidates,
        exp_params=exp_params,
        measured=tuple(bool(m) for m in measured_cols),
        notes=tuple(notes),
        config=cfg,
    )
    diagnostics = _diagnostics(result, table, errors.get(chosen), measured_cols)
    return dataclasses.replace(result, diagnostics=diagnostics)


def _two_stage_start(table: RunTable, measured_cols: np.ndarray, scale: float, key: Array, cfg: FitConfig):
    """The paper's two-stage fit (:func:`mixjax.mixing.fit.fit_law`) as the first start of the
    paper and transfer fits (t = 1, rho = 1: the same law), in the normalised units, when
    every measured domain has an own series (a 4k+1 design): the joint fit of five
    parameters from few runs is ill-conditioned, stage 1's ratios are not. Returns (starts
    (D, n), its residual RMS per domain (nats): the noise scale of the paper fit's priors),
    or (None, None)."""
    try:
        data = [d for d in domain_data(table) if d.name in np.asarray(table.domains)[measured_cols]]
    except RunTableError:
        return None, None
    if len(data) != int(measured_cols.sum()) or not all(d.has_series for d in data):
        return None, None
    fit = fit_law(data, key, dataclasses.replace(cfg, leave_one_out=False, bootstrap_samples=0))
    p = rescale_units(fit.params, 1.0 / scale)
    k = len(table.domains)
    fixed = np.stack([np.log(np.maximum(p.c, 1e-300)), np.log(p.beta), np.log(np.maximum(p.gamma, 1e-300)), p.alpha,
                      np.log(np.maximum(p.e, 1e-300)), np.ones_like(p.beta)], axis=1)
    return np.concatenate([fixed, np.zeros((len(data), k))], axis=1), np.array([d.rmse for d in fit.diagnostics])


def _diagnostics(fit: FamilyFitResult, table: RunTable, oof, measured_cols) -> tuple[DomainDiagnostics, ...]:
    """One entry per domain of the table (table order); unmeasured ones say they have no law."""
    pred = predict_losses(fit, table.tokens)
    out = [unmeasured_diagnostics(d) for d in table.domains]
    for col, i in enumerate(np.flatnonzero(measured_cols)):
        ok = ~np.isnan(table.losses[:, i])
        res = pred[ok, i] - table.losses[ok, i]
        err = oof[ok, col] if oof is not None else np.full(ok.sum(), np.nan)
        rel = np.abs(err) / table.losses[ok, i]
        loo_max = float(np.nanmax(rel)) if np.any(np.isfinite(rel)) else float("nan")
        notes = []
        beta = float(fit.params.beta[i])
        if not BETA_BOUNDS[0] * 1.01 < beta < BETA_BOUNDS[1] * 0.99:
            notes.append(f"beta={beta:.3g} is at its bound: the runs barely constrain the curve's shape, so"
                         " predictions far from the table's budgets are extrapolations")
        if np.isfinite(loo_max) and loo_max > fit.config.max_loo_rel_error:
            notes.append(f"leave-one-out error {loo_max:.2%} exceeds {fit.config.max_loo_rel_error:.2%}")
        out[i] = (DomainDiagnostics(
            name=table.domains[i], residuals=res.tolist(), rmse=float(np.sqrt(np.mean(res**2))),
            max_abs_residual=float(np.max(np.abs(res))), loo_errors=err.tolist(),
            loo_max_rel_error=loo_max,
            stage1_objective=float("nan"), beta_start_spread=0.0, transfer_start_spread=0.0,
            transferred_fraction=float("nan"), alpha_identified=True, refined=False, notes=notes, poorly_identified=bool(notes),
            procedure=f"family:{fit.family}", alpha_choice="fitted",
            oof_rmse=float(np.sqrt(np.nanmean(err**2))) if np.any(np.isfinite(err)) else float("nan"),
            oof_spearman=spearman(table.losses[ok, i], table.losses[ok, i] + err), num_runs=int(ok.sum()),
        ))
    return tuple(out)
