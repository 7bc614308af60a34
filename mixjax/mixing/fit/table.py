"""Every law family of :data:`~mixjax.mixing.fit.families.FAMILIES` fitted to a run table
on the same folds (:func:`fit_families`); :func:`mixjax.mixing.selection.choose` then
keeps one. With ``FitConfig.paper_fit = "two-stage"`` the paper's own procedure is the
whole fit.

Speed: every fit of every domain x family x start x fold is one call of one jitted,
vmapped projected Levenberg-Marquardt minimiser (:mod:`mixjax.mixing.fit.engine`); fold
refits start from the full fit, and the paper and transfer fits start from the paper's
two-stage fit (:mod:`mixjax.mixing.fit.two_stage`).
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from mixjax.mixing.fit.config import FitConfig
from mixjax.mixing.fit.engine import compile_group, fit_group, refit_group, sources_of
from mixjax.mixing.fit.families import FAMILIES
from mixjax.mixing.fit.gbm import gbm_oof
from mixjax.mixing.fit.folds import run_folds
from mixjax.mixing.fit.result import Fit, unmeasured
from mixjax.mixing.fit.two_stage import fit_two_stage
from mixjax.mixing.law import NO_LAW, LawParams, rescale_units
from mixjax.mixing.runs import RunTable, RunTableError, domain_data

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FamilyFit:
    """One family's fit of every measured domain (D of them), in the fit's normalised units."""

    theta: np.ndarray  # (D, n) fitted vectors
    oof: np.ndarray  # (R, D) out-of-fold predictions (NaN without folds)
    fitted: np.ndarray  # (R, D) the full fit's predictions
    seconds: float
    samples: np.ndarray | None = None  # (B, D, n) refits on residual-bootstrap tables


@dataclasses.dataclass(frozen=True)
class FamilyFits:
    """What :func:`fit_families` measured: every family's fit and out-of-fold predictions."""

    table: RunTable
    config: FitConfig
    measured: np.ndarray  # (P,) bool: outputs (domains, then targets) with >= 3 measured runs (the others get no law)
    scale: float  # token unit of the fits (the median run's total tokens)
    num_folds: int
    fits: dict[str, FamilyFit]
    gbm: FamilyFit | None = None  # LightGBM's out-of-fold predictions (reference only)
    two_stage: Fit | None = None  # paper_fit="two-stage": the whole fit, over every domain
    sources: np.ndarray | None = None  # (P,): the columns that transfer (engine.sources_of)


def _check(table: RunTable, cfg: FitConfig) -> tuple[tuple[str, ...], np.ndarray]:
    """The families to fit and the measured-domain mask; ValueError on an unusable table."""
    tokens, losses = table.tokens, table.losses
    families = tuple(cfg.families.scored)
    for f in families + ((cfg.family,) if cfg.family != "auto" else ()):
        if f not in FAMILIES:
            raise ValueError(f"unknown law family {f!r}; choose from {tuple(FAMILIES)}")
    if cfg.family != "auto" and cfg.family not in families:
        families = families + (cfg.family,)
    if not any(FAMILIES[f].extrapolates for f in families):
        raise ValueError(f"families {families}: none extrapolates in N, so none can be solved (the exp family is a comparator)")
    if np.any(tokens < 0) or not np.all(np.isfinite(tokens)):
        raise ValueError(f"{table.source}: tokens must be finite and >= 0")
    if np.any(tokens.sum(axis=1) <= 0):
        raise ValueError(f"{table.source}: a run has no tokens")
    counts = np.sum(~np.isnan(losses), axis=0)
    kinds = ["domain"] * len(table.domains) + ["target"] * len(table.targets)
    few = [(f"{kind} {d}", int(c)) for kind, d, c in zip(kinds, table.outputs, counts) if 0 < c < 3]
    if few:
        raise ValueError(f"{table.source}: {few[0][0]} has {few[0][1]} runs with a measured loss; the fit needs >= 3")
    if not (counts >= 3).any():
        raise ValueError(f"{table.source}: no domain or target has a measured loss")
    return families, counts >= 3


def fit_families(table: RunTable, key: Array, cfg: FitConfig = FitConfig()) -> FamilyFits:
    """Fit every family of ``cfg.families.scored`` (and ``cfg.family``) on the same folds.

    Args:
      table: runs (R, k) of tokens (>= 0, any unit; a 0 is a domain left out of a run) and
        losses (R, k + T) of the domains and targets (nats; NaN where not measured). Each
        output is fitted as a law of the tokens; a target is one whose own tokens are 0 in
        every run (so its law is the transfer-only form). A domain never measured gets no law.
      key: PRNG key (starts and folds).
      cfg: the fit's configuration.
    Returns:
      :class:`FamilyFits`.
    Raises:
      ValueError / RunTableError: negative or non-finite tokens, a run with no tokens, a
        measured domain with fewer than 3 runs, no measured domain, an unknown family.
    """
    if cfg.two_stage_only:
        return _two_stage_fits(table, key, cfg)
    families, measured_cols = _check(table, cfg)
    losses = np.asarray(table.losses, np.float64)
    scale = float(np.median(table.tokens.sum(axis=1)))
    x = table.output_tokens / scale
    key_fold, key_fit = jax.random.split(key)
    rng_fold = np.random.default_rng(np.asarray(jax.random.key_data(key_fold)).ravel())
    rng_fit = np.random.default_rng(np.asarray(jax.random.key_data(key_fit)).ravel())
    folds, num_folds = run_folds(len(x), cfg.folds, rng_fold)
    target = losses[:, measured_cols]
    rng_samples = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(key, 7))).ravel())
    # The paper's law first: its residuals set the noise scale of the transfer law's
    # prior (an empirical-Bayes ridge: the worse the lumped law fits, the more freedom).
    order = [f for f in ("paper", "transfer", "exp") if f in families or (f == "paper" and "transfer" in families)]
    fits = {}
    with ThreadPoolExecutor(max_workers=1) as ahead, jax.enable_x64(True):
        # Compile the families' programs (paper and transfer share one) while the two-stage
        # start runs: XLA compiles without the GIL, and compiling is most of a first call.
        compiling = [ahead.submit(compile_group, group, x, losses, measured_cols, folds, num_folds, cfg.families)
                     for group in dict.fromkeys(("exp",) if f == "exp" else ("paper",) for f in order)]
        warm, noise = two_stage_start(table, measured_cols, scale, key_fit, cfg)
        for family in order:
            start = time.perf_counter()
            group = fit_group((family,), x, losses, measured_cols, folds, num_folds, cfg.families, rng_fit, noise, warm)
            theta, oof, fitted = group[family]
            samples = None
            if family in families and FAMILIES[family].extrapolates and cfg.decision.samples:
                residuals = bootstrap_residuals(fitted, oof, target, 5 if family == "paper" else 6)
                boot = resampled_losses(fitted, residuals, cfg.decision.samples, rng_samples)
                samples = refit_group(family, x, losses, measured_cols, boot, cfg.families, theta, noise)
            if family == "paper":  # its residual RMS per domain (nats)
                noise = np.sqrt(np.nanmean((fitted - target) ** 2, axis=0))
            if family in families:
                fits[family] = FamilyFit(theta, oof, fitted, time.perf_counter() - start, samples)
        for job in compiling:
            job.result()  # a compile that failed in the thread (its fit compiled it again) is not lost
    gbm = None
    if cfg.families.reference_gbm and num_folds:
        start = time.perf_counter()
        oof = gbm_oof(x, losses, measured_cols, folds, num_folds, int(rng_fit.integers(2**31)))
        gbm = FamilyFit(np.zeros((0, 0)), oof, np.full_like(oof, np.nan), time.perf_counter() - start)
    fits = {f: fits[f] for f in families}
    return FamilyFits(table, cfg, measured_cols, scale, num_folds, fits, gbm, sources=sources_of(x))


def resampled_losses(fitted: np.ndarray, residuals: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` residual-bootstrap tables (B, R, D): the fit's predictions plus each
    domain's ``residuals`` resampled over its measured runs (Efron & Tibshirani 1993,
    ch. 9). ``fitted``/``residuals``: (R, D), NaN where not measured (kept NaN)."""
    out = np.repeat(np.where(np.isnan(residuals), np.nan, fitted)[None], count, axis=0)
    for d in range(residuals.shape[1]):
        rows = np.flatnonzero(~np.isnan(residuals[:, d]))
        out[:, rows, d] = fitted[rows, d][None] + rng.choice(residuals[rows, d], (count, len(rows)))
    return out


def bootstrap_residuals(fitted: np.ndarray, oof: np.ndarray, target: np.ndarray, num_params: int) -> np.ndarray:
    """The errors a bootstrap resamples: out-of-fold errors where the table has folds (they
    hold the law's misfit and its extrapolation error, not only the noise), else the
    in-sample residuals inflated by sqrt(n / (n - p)) for the p parameters fitted."""
    if np.all(np.isnan(oof) == np.isnan(target)) and np.any(np.isfinite(oof)):
        return oof - target
    n = np.sum(~np.isnan(target), axis=0)
    return (target - fitted) * np.sqrt(n / np.maximum(n - num_params, 1))


def two_stage_start(table: RunTable, measured_cols: np.ndarray, scale: float, key: Array, cfg: FitConfig):
    """The start strategy of the paper and transfer families: the paper's two-stage fit
    (t = 1, rho = 1: the same law), in the normalised units, when every measured domain has
    an own series (a 4k+1 design): the joint fit of five parameters from few runs is
    ill-conditioned, stage 1's ratios are not. Targets get no start (NaN rows: the engine's
    own) and the floor of the noise scale (NaN). Returns (starts (D, n), its residual RMS per
    output (nats): the noise scale of the paper fit's priors), or (None, None)."""
    k = len(table.domains)
    trained = measured_cols[:k]
    try:
        data = [d for d in domain_data(table) if d.name in np.asarray(table.domains)[trained]]
    except RunTableError:
        return None, None
    if not data or len(data) != int(trained.sum()) or not all(d.has_series for d in data):
        return None, None
    start_cfg = dataclasses.replace(cfg, folds=dataclasses.replace(cfg.folds, enabled=False))
    fit = fit_two_stage(data, key, start_cfg)
    p = rescale_units(fit.params, 1.0 / scale)
    fixed = np.stack([np.log(np.maximum(p.c, 1e-300)), np.log(p.beta), np.log(np.maximum(p.gamma, 1e-300)), p.alpha,
                      np.log(np.maximum(p.e, 1e-300)), np.ones_like(p.beta)], axis=1)
    starts = np.concatenate([fixed, np.zeros((len(data), len(table.outputs)))], axis=1)
    num_targets = int(measured_cols[k:].sum())
    starts = np.concatenate([starts, np.full((num_targets, starts.shape[1]), np.nan)])
    return starts, np.concatenate([[d.rmse for d in fit.diagnostics], np.full(num_targets, np.nan)])


def _two_stage_fits(table: RunTable, key: Array, cfg: FitConfig) -> FamilyFits:
    """``paper_fit="two-stage"``: the paper's procedure on every measured domain, over
    every domain of the table (a domain never measured gets :data:`NO_LAW` and says so).
    Raises ValueError for a table with targets (they have no series of their own)."""
    if table.targets:
        raise ValueError(f"{table.source}: targets ({', '.join(table.targets)}) have no series of their own for the paper's"
                         " two-stage procedure; fit them with the joint fit (--family auto, paper or transfer)")
    fit = fit_two_stage(domain_data(table), key, cfg)
    where = [table.domains.index(n) for n in fit.domains]

    def expand(params: LawParams | None) -> LawParams | None:
        if params is None:
            return None
        fields = []
        for f in LawParams._fields:
            a = np.asarray(getattr(params, f), np.float64)
            full = np.full((*a.shape[:-1], len(table.domains)), NO_LAW[f])
            full[..., where] = a
            fields.append(full)
        return LawParams(*fields)

    rows = dict(zip(fit.domains, fit.diagnostics))
    diagnostics = tuple(rows[n] if n in rows else unmeasured(n) for n in table.domains)
    fit = dataclasses.replace(fit, domains=table.domains, params=expand(fit.params), diagnostics=diagnostics,
                              bootstrap_params=expand(fit.bootstrap_params), variants={"paper": expand(fit.params)},
                              candidates=("paper",))
    measured = np.array([d.measured for d in diagnostics])
    return FamilyFits(table, cfg, measured, 1.0, int((fit.validation or {}).get("folds", 0)), {}, two_stage=fit)
