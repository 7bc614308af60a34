"""The jitted multi-start fit: every domain x alpha variant x start x fold x bootstrap sample
in one vmapped call of one compiled function.

Stage 1 (beta and A = gamma M^alpha from the own series' quads), then stages 2 and 3 in one
multistart (half the starts hold beta at stage 1's value, half fit all five parameters); the
minimiser is :func:`mixjax.mixing.optim.multistart` (projected Levenberg-Marquardt). Folds and
bootstrap refits run in a second call warm-started from the full fits. Source: arXiv
2508.11953, Sec. 3.2.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.cache import cached_call, options_for
from mixjax.mixing.fit.two_stage.objectives import (
    linear_c_e,
    predict,
    ratio_design,
    relative_spread,
    stage1_residuals,
    stage2_params,
    stage2_residuals,
)
from mixjax.mixing.fit.config import FoldConfig, TwoStageConfig
from mixjax.mixing.fit.folds import run_folds
from mixjax.mixing.law import LawParams, domain_loss, evaluate
from mixjax.mixing.runs import DomainData
from mixjax.mixing.optim import multistart

Array = jax.Array


def _unit(x: np.ndarray, m: np.ndarray) -> float:
    """The token unit a domain is fitted in: the median of its positive in-domain tokens."""
    positive = x[x > 0]
    return float(np.median(positive if len(positive) else m[m > 0]))


def pack(domains: Sequence[DomainData], cfg: TwoStageConfig, folds: FoldConfig, rng: np.random.Generator) -> tuple[dict, int, np.ndarray]:
    """Normalised, padded arrays for the jitted fit; returns (arrays, number of folds, scales).

    Folds: :func:`~mixjax.mixing.fit.folds.run_folds` over each domain's runs."""
    pts = [d.points() for d in domains]
    p_max = max(len(p[0]) for p in pts)
    designs = [ratio_design(len(d.in_domain)) if d.has_series else (np.zeros((0, 2), np.int32),) * 2 for d in domains]
    q2 = max(1, max(len(p) for p, _ in designs))
    q4 = max(1, max(len(q) for _, q in designs))
    scales = np.array([1.0 if cfg.procedure == "paper" else _unit(x, m) for x, m, _ in pts], np.float64)
    num_folds = 0
    out: dict[str, list] = {k: [] for k in ("x", "m", "loss", "valid", "series", "other1", "pairs", "pair_ok", "quads", "quad_ok", "fold")}
    for d, (x, m, loss), (pairs, quads), scale in zip(domains, pts, designs, scales):
        n, pad = len(x), p_max - len(x)
        out["x"].append(np.pad(x / scale, (0, pad), constant_values=1.0))
        out["m"].append(np.pad(m / scale, (0, pad), constant_values=1.0))
        out["loss"].append(np.pad(loss, (0, pad), constant_values=float(np.mean(loss))))
        out["valid"].append(np.arange(p_max) < n)
        out["series"].append(np.arange(p_max) < (len(d.in_domain) if d.has_series else 0))
        out["other1"].append(d.other / scale if d.has_series else 1.0)
        out["pairs"].append(np.pad(pairs, ((0, q2 - len(pairs)), (0, 0))))
        out["pair_ok"].append(np.arange(q2) < len(pairs))
        out["quads"].append(np.pad(quads, ((0, q4 - len(quads)), (0, 0))))
        out["quad_ok"].append(np.arange(q4) < len(quads))
        fold = np.full(p_max, -1)
        ids, count = run_folds(n, folds, rng)
        fold[:n] = ids if count else -1
        num_folds = max(num_folds, count)
        out["fold"].append(fold)
    return {k: np.stack(v) for k, v in out.items()}, num_folds, scales


def _joint_starts(u, d, mask, loss, fit_alpha, cfg: TwoStageConfig, log_beta1, lo_q, hi_q, warm):
    """Starts and boxes of the stage-2/3 multistart over q = (log beta, log c, A_ref / cap,
    alpha, log e): a quarter of the starts hold beta at stage 1's value (box lo = hi:
    stage 2; c, e are then nearly linear), half fit all five jointly (stage 3). Returns
    (starts, lo, hi, fixed mask)."""
    dtype = d["x"].dtype
    num_starts = u.shape[0]
    fmask = mask.astype(dtype)

    def initial_q(log_beta, frac, alpha):
        phi = jnp.stack([0.0, frac, alpha, 0.0]).astype(dtype)
        _, transfer_ref, alpha, _, m_ref = stage2_params(phi, d, mask, fit_alpha, cfg)
        c, e = linear_c_e(jnp.exp(log_beta), transfer_ref * (d["m"] / m_ref) ** alpha, d["x"], loss, fmask)
        return jnp.clip(jnp.stack([log_beta, jnp.log(c), frac, phi[2], jnp.log(e)]), lo_q, hi_q)

    half, joint_n = max(1, num_starts // 4), max(2, num_starts // 2)
    random_log_beta = np.log(1e-2) + (np.log(2.0) - np.log(1e-2)) * u[:joint_n, 4]
    log_betas = jnp.concatenate([jnp.full(half, log_beta1), random_log_beta.at[0].set(log_beta1)])
    fracs = jnp.concatenate([u[:half, 2], u[:joint_n, 5]])
    alphas = jnp.concatenate([u[:half, 3], u[:joint_n, 6]])
    starts = jax.vmap(initial_q)(log_betas, fracs, alphas)
    if warm is not None:
        starts = starts.at[half + 1].set(jnp.where(jnp.isnan(warm["q3"]), starts[half + 1], warm["q3"]))
    fixed = jnp.arange(half + joint_n) < half
    lo = jnp.where(fixed[:, None], lo_q.at[0].set(log_beta1), lo_q)
    hi = jnp.where(fixed[:, None], hi_q.at[0].set(log_beta1), hi_q)
    return starts, lo, hi, fixed


def _fit_one(u, d, mask, loss, fit_alpha, cfg: TwoStageConfig, warm=None):
    """Fit one domain on the points in ``mask`` (normalised units). Pure and vmappable.

    ``u``: uniform draws (num_starts, 7) for the random starts (drawn outside the jitted
    function: the in-graph PRNG would dominate its compile time). ``warm`` (a previous
    fit's output, NaN for none) replaces the first start of every stage.
    """
    dtype = d["x"].dtype
    has_series = jnp.sum(mask & d["series"]) >= 3
    lo_b, hi_b = np.log(cfg.beta_bounds[0]), np.log(cfg.beta_bounds[1])
    keep_warm = lambda start, w: jnp.where(jnp.isnan(w), start, w)

    # Stage 1: beta and A / M from the own series.
    lo1, hi1 = jnp.array([lo_b, 1e-6], dtype), jnp.array([hi_b, 1.0], dtype)
    starts1 = lo1 + (hi1 - lo1) * u[:, :2]
    if warm is not None:
        starts1 = starts1.at[0].set(keep_warm(starts1[0], warm["theta1"]))
    residuals1 = lambda t: stage1_residuals(t, d, mask, loss, cfg)
    thetas, values1, best1 = multistart(residuals1, starts1, lo1, hi1, cfg.maxiter, cfg.huber_delta_ratio)
    theta1 = thetas[best1]
    beta1 = jnp.where(has_series, jnp.exp(theta1[0]), 0.3)
    betas, fractions = jnp.exp(thetas[:, 0]), thetas[:, 1]
    near = values1 <= values1[best1] * (1 + 1e-3) + 1e-9

    # Stages 2 and 3 in one multistart (_joint_starts).
    lo_q = jnp.array([lo_b, -30.0, 1e-6, 0.0, -30.0], dtype)
    hi_q = jnp.stack([hi_b, 30.0, 1.0, 1.0, jnp.log(jnp.max(jnp.where(mask, loss, -jnp.inf)))]).astype(dtype)
    log_beta1 = jnp.log(beta1)
    starts, lo, hi, fixed = _joint_starts(u, d, mask, loss, fit_alpha, cfg, log_beta1, lo_q, hi_q, warm)
    residuals = lambda q: stage2_residuals(q[1:], jnp.exp(q[0]), d, mask, loss, fit_alpha, cfg)
    qs, values, _ = multistart(residuals, starts, lo, hi, cfg.maxiter, cfg.huber_delta_loss)
    values2 = jnp.where(fixed, values, jnp.inf)
    values3 = jnp.where(fixed, jnp.inf, values)
    best2, best3 = jnp.argmin(values2), jnp.argmin(values3)
    q2 = qs[best2]

    # Which one is kept (see the module docstring).
    residual = jnp.abs(predict(q2[1:], beta1, d, mask, fit_alpha, cfg) - loss)
    spread = jnp.max(jnp.where(mask, loss, -jnp.inf)) - jnp.min(jnp.where(mask, loss, jnp.inf))
    on_bound = (log_beta1 <= lo_b + np.log(10.0)) | (log_beta1 >= hi_b - 0.1)
    misfit = jnp.max(jnp.where(mask, residual, 0.0)) > cfg.refine_residual * spread
    if cfg.procedure == "paper":
        refine = ~has_series
    else:
        refine = on_bound | misfit | fit_alpha | ~has_series
    use3 = refine & (values3[best3] < values2[best2])
    q = jnp.where(use3, qs[best3], q2)
    phi, beta = q[1:], jnp.exp(q[0])

    c, transfer_ref, alpha, e, m_ref = stage2_params(phi, d, mask, fit_alpha, cfg)
    return dict(
        beta=beta,
        c=c,
        gamma=transfer_ref / m_ref**alpha,
        alpha=alpha,
        e=e,
        stage1_objective=jnp.where(has_series, values1[best1], jnp.nan),
        objective=jnp.where(use3, values3[best3], values2[best2]),
        beta_spread=jnp.where(has_series, relative_spread(betas, near, betas[best1]), 0.0),
        transfer_spread=jnp.where(has_series, relative_spread(fractions, near, jnp.ones_like(betas[best1])), 0.0),
        transferred_fraction=jnp.where(has_series, theta1[1], phi[1]),
        stage1_beta=beta1,
        refined=use3 & has_series,
        has_series=has_series,
        theta1=theta1,
        q3=q,
    )


def law_params(out) -> LawParams:
    """The law parameters of a fit output dict (any leading batch axes)."""
    return LawParams(*(out[f] for f in LawParams._fields))


def _warm_start(out) -> dict[str, Array]:
    return {"theta1": out["theta1"], "q3": out["q3"]}


def _fit_batch(draws, packed, fit_alpha, masks, losses, warm, *, cfg):
    """``_fit_one`` vmapped over a flat batch of instances (domain x variant x fold/sample).

    One compile serves the full fits, the out-of-fold refits and the bootstrap refits:
    the instances differ only in their data, point masks, losses and warm starts. (One
    flat vmap traces several times faster than nested vmaps over the three axes.)
    """

    def one(u, d, alpha_flag, mask, loss, w):
        return _fit_one(u, d, mask, loss, alpha_flag, cfg, warm=w)  # NaN warm: random start

    return jax.vmap(one)(draws, packed, fit_alpha, masks, losses, warm)


def fit_instances(packed, variants, num_folds, cfg: TwoStageConfig, key_fit, key_boot) -> dict[str, dict[str, np.ndarray]]:
    """Full fits, out-of-fold refits and bootstrap refits, as numpy arrays [domain, variant, ...].

    Two calls: the full fits (``num_starts`` random starts), then every fold and bootstrap
    refit warm-started from its full fit with ``bootstrap_starts`` starts.
    """
    num_d, p = packed["x"].shape
    num_v, num_b = len(variants), cfg.bootstrap_samples
    valid, series = packed["valid"], packed["series"]
    prior = np.where((series.sum(axis=1) >= 3)[:, None], series, valid)
    base_mask = np.stack([valid if v else prior for v in variants], axis=1)  # (D, V, P)
    numerics = cfg.numerics()
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key_fit)).ravel()[-1])

    def run(masks, losses, warm, num_starts):
        """``masks``/``losses`` (D, V, I, P); ``warm``: dict of (D, V, ...) or None."""
        shape = masks.shape[:3]
        flat = lambda a: np.ascontiguousarray(np.reshape(a, (-1, *a.shape[3:])))
        expand = lambda a: np.broadcast_to(a[:, None, None], (*shape, *a.shape[1:]))
        if warm is None:
            warm = {"theta1": np.full((*shape, 2), np.nan), "q3": np.full((*shape, 5), np.nan)}
        else:
            warm = {k: np.broadcast_to(a[:, :, None], (*shape, *a.shape[2:])) for k, a in warm.items()}
        args = (
            flat(rng.uniform(size=(*shape, num_starts, 7))),
            {k: flat(expand(v)) for k, v in packed.items()},
            flat(np.broadcast_to(np.asarray(variants)[None, :, None], shape)),
            flat(masks),
            flat(losses),
            {k: flat(v) for k, v in warm.items()},
        )
        work = args[0].shape[0] * num_starts * args[3].shape[1]  # instances x starts x points
        out = cached_call("fit", functools.partial(_fit_batch, cfg=numerics), args, compiler_options=options_for(work))
        return jax.tree.map(lambda a: np.asarray(a).reshape(*shape, *a.shape[1:]), out)

    losses = np.broadcast_to(packed["loss"][:, None, None], (num_d, num_v, 1, p))
    full = jax.tree.map(lambda a: a[:, :, 0], run(base_mask[:, :, None], losses, None, cfg.num_starts))
    result = {"full": full}
    if not (num_folds or num_b):
        return result
    fold_masks = base_mask[:, :, None] & (packed["fold"][:, None, None] != np.arange(num_folds)[None, None, :, None])
    masks = [fold_masks]
    refit_losses = [np.broadcast_to(packed["loss"][:, None, None], (num_d, num_v, num_folds, p))]
    if num_b:
        # Residual bootstrap around the full fit.
        pred = evaluate(domain_loss, law_params(jax.tree.map(lambda a: a[..., None], full)), *np.broadcast_arrays(packed["x"][:, None], packed["m"][:, None]))
        resid = packed["loss"][:, None] - pred  # (D, V, P)
        boot_rng = np.random.default_rng(np.asarray(jax.random.key_data(key_boot)).ravel()[-1])
        boot = np.empty((num_d, num_v, num_b, p))
        for d in range(num_d):
            for v in range(num_v):
                picks = boot_rng.choice(np.flatnonzero(base_mask[d, v]), (num_b, p))
                boot[d, v] = pred[d, v][None] + resid[d, v][picks]
        masks.append(np.repeat(base_mask[:, :, None], num_b, 2))
        refit_losses.append(boot)
    out = run(np.concatenate(masks, axis=2), np.concatenate(refit_losses, axis=2), _warm_start(full),
              max(2, min(cfg.bootstrap_starts, cfg.num_starts)))  # >= 2: the warm start and one more
    if num_folds:
        result["folds"] = jax.tree.map(lambda a: a[:, :, :num_folds], out)
    if num_b:
        result["boot"] = jax.tree.map(lambda a: a[:, :, num_folds:], out)
    return result

