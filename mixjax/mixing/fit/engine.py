"""The family fits as jitted, vmapped programs: every domain x family x start x fold of one
family group in one call of the projected Levenberg-Marquardt minimiser
(:func:`mixjax.mixing.optim.box_lm`), with analytic Jacobians; fold refits start from the
full fit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.cache import compiled, options_for
from mixjax.mixing.fit.config import FamilyConfig
from mixjax.mixing.fit.families import LAW_FIXED
from mixjax.mixing.optim import box_lm

Array = jax.Array


def sources_of(tokens: np.ndarray) -> np.ndarray:
    """(P,) float: the token columns some run trains on (a target's column is all zero)."""
    return (np.asarray(tokens).sum(axis=0) > 0).astype(np.float64)


def _law_terms(theta: Array, tokens: Array, onehot: Array, sources: Array):
    """Shared pieces of the law and its Jacobian for one output (``onehot`` marks its own
    column; a target's column has no tokens). ``sources`` (P,): the columns that transfer."""
    c, beta, gamma, alpha, e = jnp.exp(theta[0]), jnp.exp(theta[1]), jnp.exp(theta[2]), theta[3], jnp.exp(theta[4])
    rho = theta[5]
    u = theta[LAW_FIXED:]
    off = (1.0 - onehot) * sources
    count = jnp.maximum(jnp.sum(off), 1.0)
    w = jnp.exp(u - jnp.max(jnp.where(off > 0, u, -jnp.inf))) * off
    t = w / (jnp.sum(w) / count)
    x = tokens @ onehot
    pos = tokens > 0
    safe_tokens = jnp.where(pos, tokens, 1.0)
    powered = jnp.where(pos, safe_tokens**rho, 0.0)  # x_j^rho (R, k)
    total = powered @ t  # S = sum_j t_j x_j^rho
    ok = total > 0
    log_s = jnp.log(jnp.where(ok, total, 1.0))
    m = jnp.where(ok, jnp.exp(log_s / rho), 0.0)
    log_m = log_s / rho
    transferred = jnp.where(ok, jnp.exp(alpha * log_m), 0.0)
    effective = x + gamma * transferred
    f = effective ** (-beta)
    return locals()


def _law_predict(theta: Array, tokens: Array, onehot: Array, sources: Array) -> Array:
    """The paper/transfer law of one output (``onehot`` marks it) on (R, P) tokens."""
    v = _law_terms(theta, tokens, onehot, sources)
    return v["c"] * v["f"] + v["e"]


def _law_jacobian(theta: Array, tokens: Array, onehot: Array, sources: Array) -> tuple[Array, Array]:
    """The law and its analytic Jacobian (R, n) in ``theta`` (a few (R, k) passes instead of
    n forward-mode ones)."""
    v = _law_terms(theta, tokens, onehot, sources)
    c, beta, gamma, alpha, rho, t, ok = v["c"], v["beta"], v["gamma"], v["alpha"], v["rho"], v["t"], v["ok"]
    cf = c * v["f"]
    d_eff = -beta * cf / v["effective"]  # d pred / d effective
    g = d_eff * gamma * v["transferred"]  # d pred / d log gamma
    d_log_m = jnp.where(ok, g * alpha, 0.0)  # d pred / d log M
    log_x = jnp.where(v["pos"], jnp.log(v["safe_tokens"]), 0.0)
    safe_s = jnp.where(ok, v["total"], 1.0)
    # log M = log S / rho: d/d rho = -log S / rho^2 + (sum_j t_j x_j^rho log x_j) / (rho S).
    d_rho = d_log_m * (-v["log_s"] / rho**2 + ((v["powered"] * log_x) @ t) / (rho * safe_s))
    # t_j = count w_j / sum w: d S / d u_j = t_j x_j^rho - t_j S / count.
    d_u = (d_log_m / (rho * safe_s))[:, None] * (v["powered"] - (v["total"] / v["count"])[:, None]) * t[None, :]
    jac = jnp.concatenate(
        [jnp.stack([cf, -beta * cf * jnp.log(v["effective"]), g, g * v["log_m"], v["e"] * jnp.ones_like(cf), d_rho], axis=1), d_u],
        axis=1,
    )
    return cf + v["e"], jac


def _exp_predict(theta: Array, tokens: Array, onehot: Array, sources: Array) -> Array:
    del onehot, sources
    r = tokens / jnp.sum(tokens, axis=1, keepdims=True)
    return theta[0] + jnp.exp(theta[1] + r @ theta[2:])


def _exp_jacobian(theta: Array, tokens: Array, onehot: Array, sources: Array) -> tuple[Array, Array]:
    del onehot, sources
    r = tokens / jnp.sum(tokens, axis=1, keepdims=True)
    grow = jnp.exp(theta[1] + r @ theta[2:])
    return theta[0] + grow, jnp.concatenate([jnp.ones_like(grow)[:, None], grow[:, None], grow[:, None] * r], axis=1)


def _linear_c_e(f: Array, loss: Array, mask: Array) -> tuple[Array, Array]:
    """Least squares ``loss = c f + e`` with ``c > 0`` and ``0 < e < min loss``."""
    w = mask.astype(f.dtype)
    n = jnp.maximum(jnp.sum(w), 1.0)
    fm, lm = jnp.sum(w * f) / n, jnp.sum(w * loss) / n
    c = jnp.sum(w * (f - fm) * (loss - lm)) / jnp.maximum(jnp.sum(w * (f - fm) ** 2), 1e-300)
    low = jnp.min(jnp.where(mask, loss, jnp.inf))
    e = jnp.clip(lm - c * fm, 1e-3 * low, 0.95 * low)
    c = jnp.maximum(jnp.sum(w * f * (loss - e)) / jnp.maximum(jnp.sum(w * f * f), 1e-300), 1e-6)
    return c, e


def _setup(family: str, tokens, loss, mask, onehot, sources, u, free_u, prec, weak, rho_min: float, beta_bounds: tuple[float, float]):
    """Box, start and prior of one fit. ``u`` (n,): draws in [0, 1) (0.5: the central start);
    ``weak``: the scale of the weak beta/alpha priors, (loss noise / Huber delta)^2, so they
    stay weak against the data at any noise level."""
    k = tokens.shape[1]
    n_fit = jnp.maximum(jnp.sum(mask), 1.0)
    low = jnp.min(jnp.where(mask, loss, jnp.inf))
    if family == "exp":
        lo = jnp.concatenate([jnp.stack([-2.0 * low, -20.0]), jnp.full(k, -30.0)])
        hi = jnp.concatenate([jnp.stack([0.999 * low, 10.0]), jnp.full(k, 30.0)])
        c0 = u[0] * 0.9 * low
        t0 = (u[2:] - 0.5) * 2.0
        mean_loss = jnp.sum(jnp.where(mask, loss, 0.0)) / n_fit
        x0 = jnp.concatenate([jnp.stack([c0, jnp.log(jnp.maximum(mean_loss - c0, 1e-6))]), t0])
        # A weak ridge on t fixes the direction sum_j r_j = 1 leaves free (t + a, k e^-a).
        return x0, lo, hi, (jnp.concatenate([jnp.zeros(2), jnp.full(k, 1e-3 / n_fit)]), jnp.zeros(k + 2))
    free_u = free_u & (onehot < 1) & (sources > 0)
    ub = jnp.where(free_u, 8.0, 0.0)
    rho_lo = jnp.where(jnp.any(free_u), rho_min, 1.0)
    lo = jnp.concatenate([jnp.array([-30.0, np.log(beta_bounds[0]), -15.0, 0.0]), jnp.log(jnp.stack([1e-4 * low])), rho_lo[None], -ub])
    hi = jnp.concatenate([jnp.array([30.0, np.log(beta_bounds[1]), 8.0, 1.0]), jnp.log(jnp.stack([0.999 * low])), jnp.ones(1), ub])
    beta0 = jnp.exp(jnp.log(0.1) + u[0] * jnp.log(30.0))
    gamma0 = jnp.exp(jnp.log(0.01) + u[1] * jnp.log(300.0))
    alpha0 = 0.2 + 0.7 * u[2]
    f = (tokens @ onehot + gamma0 * (tokens @ ((1.0 - onehot) * sources)) ** alpha0) ** (-beta0)
    c, e = _linear_c_e(f, loss, mask)
    x0 = jnp.concatenate([jnp.log(jnp.stack([c, beta0, gamma0])), jnp.stack([alpha0, jnp.log(e), 1.0]), jnp.zeros(k)])
    # Priors: u toward 0 (the paper's law, precision 1 / (transfer_prior^2 n)); weak ones
    # on log beta (toward log 0.5) and alpha (toward 0.5).
    precision = jnp.concatenate([jnp.array([0.0, 0.05, 0.0, 0.05, 0.0, 0.0]) * weak / n_fit, jnp.where(free_u, prec, 0.0)])
    mean = jnp.concatenate([jnp.array([0.0, np.log(0.5), 0.0, 0.5, 0.0, 1.0]), jnp.zeros(k)])
    return x0, lo, hi, (precision, mean)


def _fit_law(family, tokens, sources, loss, mask, onehot, free, pr, wk, u, warm, its, *, delta, rho_min, beta_bounds):
    """One fit of one output (``onehot``) on the runs in ``mask``: (parameters (n,), objective)."""
    predict = _exp_predict if family == "exp" else _law_predict
    jacobian_of = _exp_jacobian if family == "exp" else _law_jacobian
    x0, lo, hi, prior = _setup(family, tokens, loss, mask, onehot, sources, u, free, pr, wk, rho_min, beta_bounds)
    x0 = jnp.where(jnp.isfinite(warm), warm, x0)
    residuals = lambda th: (predict(th, tokens, onehot, sources) - loss, mask.astype(loss.dtype))
    jacobian = lambda th: jacobian_of(th, tokens, onehot, sources)[1]
    return box_lm(residuals, x0, lo, hi, its, delta, prior=prior, jacobian=jacobian)


def _refit_all(tokens, sources, sample_losses, masks, onehots, free_u, prec, weak, warm_full, *, family, fold_iterations, delta, rho_min, beta_bounds):
    """Refits of every fit (V) on each of its resampled loss vectors ``sample_losses``
    (V, B, R), warm-started from ``warm_full`` (V, n): parameters (V, B, n)."""
    fit = functools.partial(_fit_law, family, tokens, sources, delta=delta, rho_min=rho_min, beta_bounds=beta_bounds)
    centre = jnp.full(warm_full.shape[-1], 0.5, tokens.dtype)
    over = jax.vmap(lambda loss, mask, onehot, free, pr, wk, warm: fit(loss, mask, onehot, free, pr, wk, centre, warm, fold_iterations)[0],
                    in_axes=(0, None, None, None, None, None, None))
    return jax.vmap(over)(sample_losses, masks, onehots, free_u, prec, weak, warm_full)


def _fit_all(tokens, sources, losses, masks, onehots, free_u, prec, weak, starts, warm_full, fold_masks, *, family, iterations, fold_iterations, delta, rho_min, beta_bounds):
    """Every fit of one family group in one program.

    Args (V: law variants x measured outputs, S: starts, F: folds; ``tokens`` (R, P) and
    ``sources`` (P,) (:func:`sources_of`) shared):
      losses/masks (V, R); onehots (V, k); free_u (V,) (transfer matrix free); prec, weak (V,);
      starts (V, S, n) draws in [0, 1); warm_full (V, n): replaces the first start where
      finite (the two-stage fit's parameters); fold_masks (F, R) (True: the run is trained on).
    Returns:
      (full parameters (V, n), the full fits' predictions (V, R), every fold's fit's
      predictions of every run (V, F, R)).
    """
    law = _exp_predict if family == "exp" else _law_predict
    predict = lambda th, t, onehot: law(th, t, onehot, sources)
    fit = functools.partial(_fit_law, family, tokens, sources, delta=delta, rho_min=rho_min, beta_bounds=beta_bounds)

    first = jnp.arange(starts.shape[1]) == 0
    over_starts = jax.vmap(lambda loss, mask, onehot, free, pr, wk, u, is_first, warm: fit(
        loss, mask, onehot, free, pr, wk, u, jnp.where(is_first, warm, jnp.nan), iterations), in_axes=(None, None, None, None, None, None, 0, 0, None))
    xs, values = jax.vmap(over_starts, in_axes=(0, 0, 0, 0, 0, 0, 0, None, 0))(
        losses, masks, onehots, free_u, prec, weak, starts, first, warm_full)  # (V, S, n), (V, S)
    values = jnp.where(jnp.isfinite(values), values, jnp.inf)
    best = jnp.argmin(values, axis=1)
    full = jnp.take_along_axis(xs, best[:, None, None], axis=1)[:, 0]
    centre = jnp.full(starts.shape[-1], 0.5, tokens.dtype)
    over_folds = jax.vmap(lambda loss, mask, onehot, free, pr, wk, warm: fit(loss, mask, onehot, free, pr, wk, centre, warm, fold_iterations)[0],
                          in_axes=(None, 0, None, None, None, None, None))
    folds = jax.vmap(lambda loss, mask, onehot, free, pr, wk, warm: over_folds(loss, mask[None] & fold_masks, onehot, free, pr, wk, warm))(
        losses, masks, onehots, free_u, prec, weak, full)
    fitted = jax.vmap(predict, in_axes=(0, None, 0))(full, tokens, onehots)
    fold_fitted = jax.vmap(jax.vmap(predict, in_axes=(0, None, None)), in_axes=(0, None, 0))(folds, tokens, onehots)
    return full, fitted, fold_fitted


def _bucket(n: int) -> int:
    """Pad sizes to a few buckets so tables of similar size share one compiled program."""
    return max(16, int(2 ** np.ceil(np.log2(n)))) if n <= 64 else int(32 * np.ceil(n / 32))


def _group_inputs(group: tuple[str, ...], tokens, losses, measured_cols, folds, num_folds, cfg: FamilyConfig, rng,
                  noise: np.ndarray | None = None, warm: np.ndarray | None = None) -> tuple[tuple, dict]:
    """The arguments (numpy) and static options of :func:`_fit_all` for one family group."""
    r, k = tokens.shape
    d_idx = np.flatnonzero(measured_cols)
    num_d = len(d_idx)
    family = "exp" if group == ("exp",) else "law"
    n = 2 + k if family == "exp" else LAW_FIXED + k
    # Leave-one-run-out folds grow with the table: pad them with the rows (k-fold: exact).
    rp, fp = _bucket(r), (_bucket(num_folds) if num_folds == r else num_folds) if num_folds else 1
    pad_tokens = np.concatenate([tokens, np.broadcast_to(tokens.mean(axis=0), (rp - r, k))])
    measured = np.zeros((num_d, rp), bool)
    measured[:, :r] = ~np.isnan(losses[:, d_idx]).T
    loss = np.full((num_d, rp), 1.0)
    loss[:, :r] = np.where(measured[:, :r], losses[:, d_idx].T, np.nanmean(losses[:, d_idx], axis=0)[:, None])
    # Prior u ~ N(0, transfer_prior^2) against losses with noise ``noise`` (nats, per domain;
    # default noise_floor), in the units of the objective (mean Huber / delta^2 over n runs).
    raw = np.full(num_d, cfg.noise_floor) if noise is None else np.nan_to_num(np.asarray(noise, np.float64), nan=cfg.noise_floor)
    noise = np.maximum(raw, cfg.noise_floor)
    prec = (noise / cfg.huber_delta) ** 2 / (max(cfg.transfer_prior, 1e-6) ** 2 * np.maximum(measured.sum(axis=1), 1))
    weak = np.minimum((np.maximum(raw, 1e-6) / cfg.huber_delta) ** 2, 1.0)
    fold_masks = np.ones((fp, rp), bool)
    fold_masks[:num_folds, :r] = folds[None] != np.arange(num_folds)[:, None]
    v = len(group)
    rep = lambda a: np.concatenate([a] * v)
    free = np.repeat(np.array([g == "transfer" for g in group]), num_d)
    s = max(1, cfg.num_starts)
    starts = rng.uniform(size=(v * num_d, s, n))
    starts[:, 0] = 0.5  # one central start per fit
    warm_full = np.full((v * num_d, n), np.nan) if warm is None or family == "exp" else rep(warm)
    args = (pad_tokens, sources_of(tokens), rep(loss), rep(measured), rep(np.eye(k)[d_idx]), free, rep(prec), rep(weak), starts, warm_full, fold_masks)
    statics = dict(family=family, iterations=cfg.iterations, fold_iterations=max(8, cfg.iterations // 4),
                   delta=float(cfg.huber_delta), rho_min=float(cfg.transfer_rho_min),
                   beta_bounds=tuple(map(float, cfg.beta_bounds)))
    return tuple(np.asarray(a, np.float64) if a.dtype.kind == "f" else a for a in args), statics


def _program(args: tuple, statics: dict):
    """:func:`_fit_all` compiled for ``args``' shapes (:func:`mixjax.cache.compiled`)."""
    tokens, _, *_, starts, _, fold_masks = args  # _fit_all's order
    work = starts.shape[0] * (starts.shape[1] + fold_masks.shape[0]) * tokens.shape[0]  # lanes x runs
    return compiled("families", functools.partial(_fit_all, **statics), args, compiler_options=options_for(work))


def compile_group(group: tuple[str, ...], tokens, losses, measured_cols, folds, num_folds, cfg: FamilyConfig) -> None:
    """Compile the program :func:`fit_group` will run for these inputs, without running it
    (call it from a thread while earlier fits run)."""
    _program(*_group_inputs(group, tokens, losses, measured_cols, folds, num_folds, cfg, np.random.default_rng(0)))


def fit_group(group: tuple[str, ...], tokens, losses, measured_cols, folds, num_folds, cfg: FamilyConfig, rng,
              noise: np.ndarray | None = None, warm: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Full fit (``num_family_starts`` starts) and warm out-of-fold refits of every measured
    domain for the families of one group (("paper", "transfer") share a program; "exp").

    Returns family -> (full parameters (D, n), out-of-fold predictions (R, D), the full
    fit's predictions (R, D)).
    """
    args, statics = _group_inputs(group, tokens, losses, measured_cols, folds, num_folds, cfg, rng, noise, warm)
    full, fitted, fold_fitted = (np.asarray(a) for a in _program(args, statics)(*args))
    r = tokens.shape[0]
    v, num_d = len(group), int(np.sum(measured_cols))
    full = full.reshape(v, num_d, -1)
    fitted = fitted.reshape(v, num_d, -1)[:, :, :r]
    fold_fitted = fold_fitted.reshape(v, num_d, -1, fold_fitted.shape[-1])[:, :, :num_folds, :r]  # (V, D, F, R)
    out = {}
    for g, name in enumerate(group):
        oof = np.full((r, num_d), np.nan)
        for f in range(num_folds):
            held = folds == f
            oof[held] = fold_fitted[g, :, f, held]  # (held runs, D): numpy puts the split advanced indices first
        out[name] = (full[g], oof, fitted[g].T)
    return out


def refit_group(family: str, tokens, losses, measured_cols, sample_losses: np.ndarray, cfg: FamilyConfig, full: np.ndarray,
                noise: np.ndarray | None = None) -> np.ndarray:
    """One law family's fit of every measured domain refitted on resampled losses.

    Args:
      family: "paper" or "transfer".
      tokens, losses, measured_cols: as :func:`fit_group`'s (``losses`` sets the prior's scale).
      sample_losses: (B, R, D) resampled losses of the measured domains (nats).
      full: (D, n) the full fits (:func:`fit_group`), the refits' warm start.
      noise: the loss noise (nats, per domain) the full fit's prior assumed.
    Returns:
      (B, D, n) refitted vectors.
    """
    r = tokens.shape[0]
    args, statics = _group_inputs((family,), tokens, losses, measured_cols, np.zeros(r, int), 0, cfg, np.random.default_rng(0), noise)
    pad_tokens, sources, loss, measured, onehots, free, prec, weak, _, _, _ = args
    resampled = np.repeat(loss[:, None, :], len(sample_losses), axis=1)  # (D, B, R padded)
    resampled[:, :, :r] = np.where(measured[:, None, :r], np.transpose(sample_losses, (2, 0, 1)), resampled[:, :, :r])
    inputs = (pad_tokens, sources, resampled, measured, onehots, free, prec, weak, np.asarray(full, np.float64))
    # Full-length refits: warm-started refits stopped early stay near the full fit and make
    # the plausible laws too alike (measured: harm on benchmarks/procedure.py 50% -> 28% of
    # the harmful cases' re-runs).
    statics = {k: v for k, v in statics.items() if k not in ("iterations", "fold_iterations")} | {"fold_iterations": statics["iterations"]}
    work = onehots.shape[0] * len(sample_losses) * pad_tokens.shape[0]
    program = compiled("family-refits", functools.partial(_refit_all, **statics), inputs, compiler_options=options_for(work))
    return np.swapaxes(np.asarray(program(*inputs)), 0, 1)
