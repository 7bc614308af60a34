"""Law families fitted to a run table and chosen by out-of-fold error (issue #14, item 3).

Families (every one fitted per measured domain i on every run where loss.i was measured):

- ``"paper"``: the paper's law (arXiv 2508.11953, Sec. 3),
  ``L_i = e_i + c_i (x_i + gamma_i M_i^alpha_i)^(-beta_i)`` with ``M_i = sum_{j != i} x_j``,
  fitted jointly (all five parameters, Huber least squares).
- ``"transfer"``: the transfer-matrix extension (:class:`~mixjax.mixing.law.TransferLawParams`),
  ``M_i = (sum_{j != i} t_ij x_j^rho_i)^(1/rho_i)`` with ``t_ij = exp(u_ij) / mean_{j != i}
  exp(u_ij)`` (mean 1), ``rho_i`` in ``[transfer_rho_min, 1]`` and a Gaussian prior
  ``u_ij ~ N(0, transfer_prior^2)`` against loss noise at the paper's law's residual scale
  (an empirical-Bayes ridge toward the paper's law, ``t_ij = 1``), which keeps fits from
  the 4k+1 design (one free ``t`` per other domain, each seen only
  through the runs that perturb that domain) stable. It keeps the budget as a variable.
- ``"exp"``: the Data Mixing Laws form (Ye et al. 2024, arXiv 2403.16952, eq. 6),
  ``L_i = c_i + exp(log k_i + sum_j t_ij r_j)`` on the mixture proportions ``r``: a
  comparator; it ignores the budget and so cannot extrapolate in N.

Every family is scored on the same folds (leave-one-run-out up to ``FitConfig.max_folds``
runs, else ``FitConfig.kfold`` random folds of whole runs) and the default
(``FitConfig.family = "auto"``) is the extrapolating family with the lowest out-of-fold
RMSE; a note says when the best non-extrapolating one is clearly better. Optional
reference: gradient-boosted trees (LightGBM) on the proportions, out-of-fold only.

Speed: every fit of every domain x family x start x fold is one call of one jitted,
vmapped projected Levenberg-Marquardt minimiser (:func:`mixjax.mixing.optim.box_lm`);
fold refits start from the full fit.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing.fit import DomainDiagnostics, FitConfig, FitResult, fit_law, spearman
from mixjax.mixing.fit.diagnostics import unmeasured_diagnostics
from mixjax.mixing.law import AnyLawParams, LawParams, TransferLawParams, rescale_units, token_losses
from mixjax.mixing.optim import box_lm
from mixjax.mixing.runs import RunTable, RunTableError, domain_data

Array = jax.Array
FAMILIES = ("paper", "transfer", "exp")
EXTRAPOLATES = {"paper": True, "transfer": True, "exp": False, "gbm": False}
_LAW_FIXED = 6  # log c, log beta, log gamma, alpha, log e, rho; then u (k)


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class FamilyFitResult(FitResult):
    """A :class:`FitResult` of one chosen family, with the other families' scores and fits.

    ``params`` holds k entries (every trained domain); a domain whose loss was never
    measured (``measured[i]`` False) has ``c = e = 0`` (no law, loss 0, importance 0) and
    still transfers tokens to the others. ``scores[family]``: out-of-fold ``rmse`` (all
    measured cells), ``total_rmse`` / ``total_spearman`` (per-run sum over the measured
    domains), ``domain_spearman`` (mean over domains), ``extrapolates``, ``seconds``.
    ``variants``: every extrapolating family's full fit (for probes and comparison);
    ``candidates``: the extrapolating families within out-of-fold noise of the best.
    """

    family: str = "paper"
    scores: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    variants: dict[str, Any] = dataclasses.field(default_factory=dict)
    candidates: tuple[str, ...] = ()
    exp_params: dict[str, np.ndarray] | None = None
    measured: tuple[bool, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["params"] = _law_to_dict(self.params)
        d.update(
            family=self.family,
            scores=self.scores,
            variants={name: _law_to_dict(p) for name, p in self.variants.items()},
            candidates=list(self.candidates),
            exp_params=None if self.exp_params is None else {k: np.asarray(v).tolist() for k, v in self.exp_params.items()},
            measured=list(self.measured),
            notes=list(self.notes),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FamilyFitResult":
        base = FitResult.from_dict({**d, "params": {f: d["params"][f] for f in LawParams._fields}})
        return cls(
            **{f.name: getattr(base, f.name) for f in dataclasses.fields(FitResult)} | {"params": _law_from_dict(d["params"])},
            family=d["family"],
            scores=d["scores"],
            variants={name: _law_from_dict(p) for name, p in d["variants"].items()},
            candidates=tuple(d["candidates"]),
            exp_params=None if d["exp_params"] is None else {k: np.asarray(v, np.float64) for k, v in d["exp_params"].items()},
            measured=tuple(d["measured"]),
            notes=tuple(d["notes"]),
        )

    def score_table(self) -> str:
        """The out-of-fold table, one line per family (the chosen one marked)."""
        lines = [f"{'family':10s} {'extrap. N':>9s} {'RMSE':>9s} {'total RMSE':>10s} {'total Spearman':>14s} {'domain Spearman':>15s}"]
        for name, s in self.scores.items():
            mark = "*" if name == self.family else " "
            lines.append(
                f"{mark}{name:9s} {'yes' if s['extrapolates'] else 'no':>9s} {s['rmse']:9.4f} {s['total_rmse']:10.4f}"
                f" {s['total_spearman']:14.4f} {s['domain_spearman']:15.4f}"
            )
        return "\n".join(lines)


def _law_to_dict(p: AnyLawParams) -> dict[str, Any]:
    return {f: np.asarray(getattr(p, f)).tolist() for f in p._fields}


def _law_from_dict(d: dict[str, Any]) -> AnyLawParams:
    cls = TransferLawParams if "transfer" in d else LawParams
    return cls(*(np.asarray(d[f], np.float64) for f in cls._fields))


# --------------------------------------------------------------------------- prediction


def predict_losses(fit: FitResult, tokens: np.ndarray) -> np.ndarray:
    """Predicted validation loss (nats) of every run and domain.

    Args:
      fit: any fit (:func:`fit_table`'s or :func:`mixjax.mixing.fit.fit_law`'s).
      tokens: (R, k) per-domain tokens of each run, in the table's units, ``fit.domains`` order.
    Returns:
      (R, k) losses; NaN for domains without a law (never measured).
    Raises:
      ValueError: if ``tokens`` does not have k columns or has negative entries.
    """
    tokens = np.asarray(tokens, np.float64)
    k = len(fit.domains)
    if tokens.ndim != 2 or tokens.shape[1] != k:
        raise ValueError(f"tokens must have shape (R, {k}), got {tokens.shape}")
    if np.any(tokens < 0) or not np.all(np.isfinite(tokens)):
        raise ValueError("tokens must be finite and >= 0")
    family = getattr(fit, "family", "paper")
    with jax.enable_x64(True):
        if family == "exp":
            p = fit.exp_params
            r = tokens / tokens.sum(axis=1, keepdims=True)
            out = p["c"][None] + np.exp(p["log_k"][None] + r @ p["t"].T)
        else:
            out = np.asarray(token_losses(jax.tree.map(jnp.asarray, fit.params), jnp.asarray(tokens)))
    measured = np.asarray(getattr(fit, "measured", ()) or [True] * k, bool)
    return np.where(measured[None], out, np.nan)


# --------------------------------------------------------------------------- jitted fits


def _law_terms(theta: Array, tokens: Array, onehot: Array):
    """Shared pieces of the law and its Jacobian for one domain (``onehot`` marks it)."""
    c, beta, gamma, alpha, e = jnp.exp(theta[0]), jnp.exp(theta[1]), jnp.exp(theta[2]), theta[3], jnp.exp(theta[4])
    rho = theta[5]
    u = theta[_LAW_FIXED:]
    off = 1.0 - onehot
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


def _law_predict(theta: Array, tokens: Array, onehot: Array) -> Array:
    """The paper/transfer law of one domain (``onehot`` marks it) on (R, k) tokens."""
    v = _law_terms(theta, tokens, onehot)
    return v["c"] * v["f"] + v["e"]


def _law_jacobian(theta: Array, tokens: Array, onehot: Array) -> tuple[Array, Array]:
    """The law and its analytic Jacobian (R, n) in ``theta`` (a few (R, k) passes instead of
    n forward-mode ones)."""
    v = _law_terms(theta, tokens, onehot)
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


def _exp_predict(theta: Array, tokens: Array, onehot: Array) -> Array:
    del onehot
    r = tokens / jnp.sum(tokens, axis=1, keepdims=True)
    return theta[0] + jnp.exp(theta[1] + r @ theta[2:])


def _exp_jacobian(theta: Array, tokens: Array, onehot: Array) -> tuple[Array, Array]:
    del onehot
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


def _setup(family: str, tokens, loss, mask, onehot, u, free_u, prec, weak, rho_min: float):
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
    free_u = free_u & (onehot < 1)
    ub = jnp.where(free_u, 8.0, 0.0)
    rho_lo = jnp.where(jnp.any(free_u), rho_min, 1.0)
    lo = jnp.concatenate([jnp.array([-30.0, np.log(0.01), -15.0, 0.0]), jnp.log(jnp.stack([1e-4 * low])), rho_lo[None], -ub])
    hi = jnp.concatenate([jnp.array([30.0, np.log(5.0), 8.0, 1.0]), jnp.log(jnp.stack([0.999 * low])), jnp.ones(1), ub])
    beta0 = jnp.exp(jnp.log(0.1) + u[0] * jnp.log(30.0))
    gamma0 = jnp.exp(jnp.log(0.01) + u[1] * jnp.log(300.0))
    alpha0 = 0.2 + 0.7 * u[2]
    f = (tokens @ onehot + gamma0 * (tokens @ (1.0 - onehot)) ** alpha0) ** (-beta0)
    c, e = _linear_c_e(f, loss, mask)
    x0 = jnp.concatenate([jnp.log(jnp.stack([c, beta0, gamma0])), jnp.stack([alpha0, jnp.log(e), 1.0]), jnp.zeros(k)])
    # Priors: u toward 0 (the paper's law, precision 1 / (transfer_prior^2 n)); weak ones
    # on log beta (toward log 0.5) and alpha (toward 0.5).
    precision = jnp.concatenate([jnp.array([0.0, 0.05, 0.0, 0.05, 0.0, 0.0]) * weak / n_fit, jnp.where(free_u, prec, 0.0)])
    mean = jnp.concatenate([jnp.array([0.0, np.log(0.5), 0.0, 0.5, 0.0, 1.0]), jnp.zeros(k)])
    return x0, lo, hi, (precision, mean)


@functools.partial(jax.jit, static_argnames=("family", "iterations", "fold_iterations", "delta", "rho_min"))
def _fit_all(tokens, losses, masks, onehots, free_u, prec, weak, starts, warm_full, fold_masks, *, family, iterations, fold_iterations, delta, rho_min):
    """Every fit of one family group in one program.

    Args (V: law variants x measured domains, S: starts, F: folds; ``tokens`` (R, k) shared):
      losses/masks (V, R); onehots (V, k); free_u (V,) (transfer matrix free); prec, weak (V,);
      starts (V, S, n) draws in [0, 1); warm_full (V, n): replaces the first start where
      finite (the two-stage fit's parameters); fold_masks (F, R) (True: the run is trained on).
    Returns:
      (full parameters (V, n), objective values (V,), fold parameters (V, F, n)).
    """
    predict = _exp_predict if family == "exp" else _law_predict
    jacobian_of = _exp_jacobian if family == "exp" else _law_jacobian

    def fit(loss, mask, onehot, free, pr, wk, u, warm, its):
        x0, lo, hi, prior = _setup(family, tokens, loss, mask, onehot, u, free, pr, wk, rho_min)
        x0 = jnp.where(jnp.isfinite(warm), warm, x0)
        residuals = lambda th: (predict(th, tokens, onehot) - loss, mask.astype(loss.dtype))
        jacobian = lambda th: jacobian_of(th, tokens, onehot)[1]
        return box_lm(residuals, x0, lo, hi, its, delta, prior=prior, jacobian=jacobian)

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
    return full, jnp.min(values, axis=1), folds


# --------------------------------------------------------------------------- folds and fits


def run_folds(num_runs: int, cfg: FitConfig, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Fold of every run: leave-one-run-out up to ``cfg.max_folds`` runs, else ``cfg.kfold``
    random folds of whole runs. Returns (fold id per run (R,), number of folds)."""
    if num_runs <= cfg.max_folds:
        return np.arange(num_runs), num_runs
    folds = min(cfg.kfold, num_runs)
    return rng.permutation(num_runs) % folds, folds


def _bucket(n: int) -> int:
    """Pad sizes to a few buckets so tables of similar size share one compiled program."""
    return max(16, int(2 ** np.ceil(np.log2(n)))) if n <= 64 else int(32 * np.ceil(n / 32))


def _fit_group(group: tuple[str, ...], tokens, losses, measured_cols, folds, num_folds, cfg: FitConfig, rng,
               noise: np.ndarray | None = None, warm: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Full fit (``num_family_starts`` starts) and warm out-of-fold refits of every measured
    domain for the families of one group (("paper", "transfer") share a program; "exp").

    Returns family -> (full parameters (D, n), out-of-fold predictions (R, D)).
    """
    r, k = tokens.shape
    d_idx = np.flatnonzero(measured_cols)
    num_d = len(d_idx)
    family = "exp" if group == ("exp",) else "law"
    n = 2 + k if family == "exp" else _LAW_FIXED + k
    # Leave-one-run-out folds grow with the table: pad them with the rows (k-fold: exact).
    rp, fp = _bucket(r), (_bucket(num_folds) if num_folds == r else num_folds) if num_folds else 1
    pad_tokens = np.concatenate([tokens, np.broadcast_to(tokens.mean(axis=0), (rp - r, k))])
    measured = np.zeros((num_d, rp), bool)
    measured[:, :r] = ~np.isnan(losses[:, d_idx]).T
    loss = np.full((num_d, rp), 1.0)
    loss[:, :r] = np.where(measured[:, :r], losses[:, d_idx].T, np.nanmean(losses[:, d_idx], axis=0)[:, None])
    # Prior u ~ N(0, transfer_prior^2) against losses with noise ``noise`` (nats, per domain;
    # default huber_delta_loss), in the units of the objective (mean Huber / delta^2 over n runs).
    raw = np.full(num_d, cfg.huber_delta_loss) if noise is None else np.asarray(noise, np.float64)
    noise = np.maximum(raw, cfg.huber_delta_loss)
    prec = (noise / cfg.family_huber_delta) ** 2 / (max(cfg.transfer_prior, 1e-6) ** 2 * np.maximum(measured.sum(axis=1), 1))
    weak = np.minimum((np.maximum(raw, 1e-6) / cfg.family_huber_delta) ** 2, 1.0)
    fold_masks = np.ones((fp, rp), bool)
    fold_masks[:num_folds, :r] = folds[None] != np.arange(num_folds)[:, None]
    v = len(group)
    rep = lambda a: np.concatenate([a] * v)
    free = np.repeat(np.array([g == "transfer" for g in group]), num_d)
    s = max(1, cfg.num_family_starts)
    starts = rng.uniform(size=(v * num_d, s, n))
    starts[:, 0] = 0.5  # one central start per fit
    warm_full = np.full((v * num_d, n), np.nan) if warm is None or family == "exp" else rep(warm)
    full, _, fold_x = _fit_all(
        jnp.asarray(pad_tokens), jnp.asarray(rep(loss)), jnp.asarray(rep(measured)), jnp.asarray(rep(np.eye(k)[d_idx])),
        jnp.asarray(free), jnp.asarray(rep(prec)), jnp.asarray(rep(weak)), jnp.asarray(starts), jnp.asarray(warm_full), jnp.asarray(fold_masks),
        family=family, iterations=cfg.family_iterations, fold_iterations=max(8, cfg.family_iterations // 4),
        delta=float(cfg.family_huber_delta), rho_min=float(cfg.transfer_rho_min))
    full, fold_x = np.asarray(full).reshape(v, num_d, n), np.asarray(fold_x).reshape(v, num_d, fp, n)
    out = {}
    predict = _exp_predict if family == "exp" else _law_predict
    for g, name in enumerate(group):
        oof = np.full((r, num_d), np.nan)
        if num_folds:
            xf = fold_x[g, :, :num_folds].reshape(-1, n)
            onehot = np.repeat(np.eye(k)[d_idx], num_folds, axis=0)
            pred = np.asarray(_predict_many(xf, tokens, onehot, family=family)).reshape(num_d, num_folds, r)
            for f in range(num_folds):
                held = folds == f
                oof[held] = pred[:, f, held].T
        out[name] = (full[g], oof)
    return out


def _residual_rms(full: np.ndarray, tokens, losses, measured_cols) -> np.ndarray:
    """RMS residual (nats) of each measured domain's full law fit, over its measured runs."""
    d_idx = np.flatnonzero(measured_cols)
    pred = np.asarray(_predict_many(full, tokens, np.eye(tokens.shape[1])[d_idx], family="law")).T  # (R, D)
    return np.sqrt(np.nanmean((pred - losses[:, d_idx]) ** 2, axis=0))


@functools.partial(jax.jit, static_argnames=("family",))
def _predict_many(thetas, tokens, onehots, *, family):
    predict = _exp_predict if family == "exp" else _law_predict
    return jax.vmap(predict, in_axes=(0, None, 0))(thetas, tokens, onehots)


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
    beta, c, gamma, alpha, e, rho = np.ones(k), np.zeros(k), np.ones(k), np.full(k, 0.5), np.zeros(k), np.ones(k)
    t = np.ones((k, k)) - np.eye(k)
    for row, i in enumerate(np.flatnonzero(measured_cols)):
        th = theta[row]
        c[i], beta[i], gamma[i], alpha[i], e[i] = np.exp(th[0]), np.exp(th[1]), np.exp(th[2]), th[3], np.exp(th[4])
        rho[i] = th[5]
        u = np.where(np.arange(k) == i, -np.inf, th[_LAW_FIXED:])
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
    notes = [f"{d}: loss never measured: no law, importance 0; its tokens still transfer to the others"
             for d, ok in zip(table.domains, measured_cols) if not ok]
    scale = float(np.median(tokens.sum(axis=1)))
    x = tokens / scale
    key_fold, key_fit = jax.random.split(key)
    rng_fold = np.random.default_rng(np.asarray(jax.random.key_data(key_fold)).ravel())
    rng_fit = np.random.default_rng(np.asarray(jax.random.key_data(key_fit)).ravel())
    folds, num_folds = run_folds(len(x), cfg, rng_fold) if cfg.leave_one_out else (np.zeros(len(x), int), 0)
    target = losses[:, measured_cols]
    warm, noise = _two_stage_start(table, measured_cols, scale, key_fit, cfg)
    fulls, scores, errors = {}, {}, {}
    with jax.enable_x64(True):
        # The paper's law first: its residuals set the noise scale of the transfer law's
        # prior (an empirical-Bayes ridge: the worse the lumped law fits, the more freedom).
        order = [f for f in ("paper", "transfer", "exp") if f in families or (f == "paper" and "transfer" in families)]
        for family in order:
            start = time.perf_counter()
            full, oof = _fit_group((family,), x, losses, measured_cols, folds, num_folds, cfg, rng_fit, noise, warm)[family]
            seconds = time.perf_counter() - start
            if family == "paper":
                noise = _residual_rms(full, x, losses, measured_cols)
            if family not in families:
                continue
            fulls[family] = full
            scores[family] = score(target, oof) | {"extrapolates": EXTRAPOLATES[family], "seconds": seconds}
            errors[family] = oof - target
        scores = {f: scores[f] for f in families}
    if cfg.reference_gbm and num_folds:
        start = time.perf_counter()
        oof = _gbm_oof(x, losses, measured_cols, folds, num_folds, int(rng_fit.integers(2**31)))
        scores["gbm"] = score(target, oof) | {"extrapolates": False, "seconds": time.perf_counter() - start,
                                              "reference_only": True}
    extrapolating = [f for f in families if EXTRAPOLATES[f]]
    if cfg.family != "auto":
        chosen = cfg.family
    elif not num_folds:
        chosen = "transfer" if "transfer" in extrapolating else (extrapolating or list(families))[0]
    else:
        chosen = min(extrapolating or families, key=lambda f: scores[f]["rmse"])
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
        out[i] = (DomainDiagnostics(
            name=table.domains[i], residuals=res.tolist(), rmse=float(np.sqrt(np.mean(res**2))),
            max_abs_residual=float(np.max(np.abs(res))), loo_errors=err.tolist(),
            loo_max_rel_error=float(np.nanmax(rel)) if np.any(np.isfinite(rel)) else float("nan"),
            stage1_objective=float("nan"), beta_start_spread=0.0, transfer_start_spread=0.0,
            transferred_fraction=float("nan"), alpha_identified=True, refined=False, notes=[], poorly_identified=False,
            procedure=f"family:{fit.family}", alpha_choice="fitted",
            oof_rmse=float(np.sqrt(np.nanmean(err**2))) if np.any(np.isfinite(err)) else float("nan"),
            oof_spearman=spearman(table.losses[ok, i], table.losses[ok, i] + err), num_runs=int(ok.sum()),
        ))
    return tuple(out)
