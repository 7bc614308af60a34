"""The fit's objectives: stage-1 statistics on quads of loss differences, stages 2-3 on losses.

Inputs are one domain's packed arrays ``d`` (normalised token units, see
:func:`mixjax.mixing.fit.two_stage.engine.pack`), a point mask and the losses; every function is pure
and vmappable. Source: arXiv 2508.11953, Sec. 3.2 (the ratios of loss differences cancel
``c`` and ``e``).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing.fit.config import TwoStageConfig
from mixjax.mixing.law import safe_power

Array = jax.Array


def ratio_design(num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of points whose loss differences enter the ratios, and pairs of those pairs.

    For 5 points this is the paper's {(1,3),(1,4),(1,5),(2,4),(2,5),(3,5)} (pairs at
    least two scales apart) and all 15 pairs of them. Short series use every pair.
    """
    pairs = [(a, b) for a in range(num_points) for b in range(a + 2, num_points)]
    if len(pairs) < 3:
        pairs = list(itertools.combinations(range(num_points), 2))
    quads = list(itertools.combinations(range(len(pairs)), 2))
    return np.asarray(pairs, np.int32).reshape(-1, 2), np.asarray(quads, np.int32).reshape(-1, 2)


def masked_mean(values: Array, weight: Array) -> Array:
    return jnp.sum(jnp.where(weight > 0, weight * values, 0.0)) / jnp.maximum(jnp.sum(weight), 1.0)


def stage1_residuals(theta, d, mask, loss, cfg: TwoStageConfig):
    """theta = (log beta, A / M) on the own series -> (residual per quad, weight)."""
    beta, transfer = jnp.exp(theta[0]), d["other1"] * theta[1]
    f = (d["x"] + transfer) ** (-beta)
    i, j = d["pairs"][:, 0], d["pairs"][:, 1]
    d_model, d_obs = f[i] - f[j], loss[i] - loss[j]
    pair_ok = d["pair_ok"] & mask[i] & mask[j] & d["series"][i] & d["series"][j]
    q0, q1 = d["quads"][:, 0], d["quads"][:, 1]
    weight = d["quad_ok"] & pair_ok[q0] & pair_ok[q1]
    if cfg.procedure == "paper":
        usable = (d_obs[q0] > 0) & (d_obs[q1] > 0) & (d_model[q0] > 0) & (d_model[q1] > 0)
        safe_log = lambda v: jnp.log(jnp.where(usable, v, 0.5))
        residual = safe_log(d_model[q0]) / safe_log(d_model[q1]) - safe_log(d_obs[q0]) / safe_log(d_obs[q1])
    else:
        r_obs = d_obs[q0] / jnp.where(d_obs[q1] != 0, d_obs[q1], 1.0)
        usable = (r_obs > 0) & jnp.isfinite(r_obs) & (d_obs[q1] != 0)
        r_model = d_model[q0] / d_model[q1]
        residual = jnp.log(jnp.where(usable, r_model, 1.0)) - jnp.log(jnp.where(usable, r_obs, 1.0))
    return residual, (weight & usable).astype(theta.dtype)


def stage2_params(phi, d, mask, fit_alpha, cfg: TwoStageConfig):
    """phi = (log c, A_ref / cap, alpha, log e) -> (c, A_ref, alpha, e, M_ref).

    ``cap`` makes ``gamma M^alpha <= M`` hold at every observed M (``M_ref``: geometric
    mean of the fitted points' other-domain tokens).
    """
    m = d["m"]
    has_m = mask & (m > 0)  # M = 0 (a run of this domain alone) transfers nothing
    safe_m = jnp.where(has_m, m, 1.0)
    m_ref = jnp.exp(masked_mean(jnp.log(safe_m), has_m.astype(m.dtype)))
    alpha = jnp.where(fit_alpha, phi[2], jnp.asarray(cfg.alpha_prior, phi.dtype))
    cap = jnp.min(jnp.where(has_m, safe_m * (m_ref / safe_m) ** alpha, jnp.inf))
    return jnp.exp(phi[0]), cap * phi[1], alpha, jnp.exp(phi[3]), m_ref


def predict(phi, beta, d, mask, fit_alpha, cfg):
    c, transfer_ref, alpha, e, m_ref = stage2_params(phi, d, mask, fit_alpha, cfg)
    return c * (d["x"] + transfer_ref * safe_power(d["m"] / m_ref, alpha)) ** (-beta) + e


def stage2_residuals(phi, beta, d, mask, loss, fit_alpha, cfg):
    return predict(phi, beta, d, mask, fit_alpha, cfg) - loss, mask.astype(phi.dtype)


def linear_c_e(beta, transfer, x, loss, mask):
    """Least-squares c, e of ``loss = c f + e`` (f = (x + A)^-beta) under c, e > 0: stage-2 starts."""
    f = (x + transfer) ** (-beta)
    f_mean, l_mean = masked_mean(f, mask), masked_mean(loss, mask)
    cov = jnp.sum(mask * (f - f_mean) * (loss - l_mean))
    var = jnp.sum(mask * (f - f_mean) ** 2)
    c = cov / jnp.maximum(var, 1e-300)
    e = l_mean - c * f_mean
    c_origin = jnp.sum(mask * f * loss) / jnp.sum(mask * f * f)  # best c with e = 0
    ok = (c > 0) & (e > 0)
    return jnp.where(ok, c, c_origin), jnp.where(ok, e, 1e-8)


def relative_spread(values: Array, near: Array, reference: Array) -> Array:
    hi = jnp.max(jnp.where(near, values, -jnp.inf))
    lo = jnp.min(jnp.where(near, values, jnp.inf))
    return (hi - lo) / jnp.maximum(jnp.abs(reference), 1e-12)
