"""Two-stage, multi-start fit of the scaling law (ALGORITHM.md, "Fitting").

Stage 1 fits ``beta`` and the transferred data ``A = gamma M^alpha`` of one domain from
*ratios* of loss differences, which cancel ``c`` and ``e``. Stage 2 fixes ``beta`` and
fits ``c, gamma, alpha, e`` to the losses. Both stages minimise a Huber loss with
box-constrained L-BFGS-B (jaxopt) on a parametrisation that makes every bound a box:

- stage 1: ``beta in [beta_min, beta_max]``, ``0 <= A <= M``;
- stage 2: ``c, e > 0`` in log space, ``0 <= alpha <= 1``, and the transfer constraint
  ``gamma M^alpha <= M`` at every observed ``M``.

If stage 1's beta lands on a bound (the ratios, blind to c and e, can prefer a log law
that no e >= 0 reproduces) or stage 2 misses a loss by more than ``refine_residual`` of the
losses' range, a stage 3 refits all five parameters jointly under the same constraints,
from the stage-2 solution and random starts, and is kept when it fits better. The
diagnostics say so.

Stage 2 is parametrised by ``A_ref = gamma M_ref^alpha`` (``M_ref``: geometric mean of
the observed other-domain tokens) instead of ``gamma``. The data constrain ``A_ref``;
they constrain ``alpha`` only when more than one ``M`` is observed. With one ``M`` (the
5 runs that perturb the domain itself) the split of ``A`` into ``gamma`` and ``alpha`` is
not identified: we then hold ``alpha`` at ``alpha_prior`` and say so in the diagnostics,
rather than returning whatever split a particular start drifted to.

Every fit runs from ``num_starts`` random starts, vmapped, in float64, and keeps the best.
Leave-one-out refits and residual-bootstrap refits reuse the same jitted function through
point masks and resampled losses, vmapped over folds and samples.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import optax

from mixjax.mixing.law import LawParams, domain_loss, rescale_units

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DomainData:
    """What the fit of one domain sees, in the user's token units.

    ``in_domain``/``loss``: the runs that perturb only this domain (its own series,
    base run included), all at the same other-domain tokens ``other``. ``cross_*``:
    optional runs where this domain is at its base size and the others are perturbed;
    they vary ``M`` and so identify ``alpha`` in stage 2.
    """

    name: str
    in_domain: np.ndarray
    other: float
    loss: np.ndarray
    cross_in_domain: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    cross_other: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    cross_loss: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        order = np.argsort(self.in_domain)
        object.__setattr__(self, "in_domain", np.asarray(self.in_domain, np.float64)[order])
        object.__setattr__(self, "loss", np.asarray(self.loss, np.float64)[order])
        for name in ("cross_in_domain", "cross_other", "cross_loss"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), np.float64))
        if len(self.in_domain) < 3:
            raise ValueError(f"domain {self.name!r}: {len(self.in_domain)} points, the fit needs >= 3")
        if not (np.all(self.in_domain > 0) and self.other > 0):
            raise ValueError(f"domain {self.name!r}: token counts must be positive")
        if not np.all(np.isfinite(self.loss)):
            raise ValueError(f"domain {self.name!r}: losses must be finite")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    num_starts: int = 32
    huber_delta_ratio: float = 1e-3  # stage 1, on log-ratios (the paper's value)
    huber_delta_loss: float = 1e-2  # stage 2, on losses: quadratic for inliers (~1e-3)
    alpha_prior: float = 0.5
    beta_bounds: tuple[float, float] = (1e-6, 5.0)
    maxiter: int = 100
    tol: float = 1e-8
    # Fit alpha from the cross runs (others perturbed). Off by default: on the demo's
    # training runs it extrapolated transfer linearly beyond the observed M (README).
    use_cross_runs: bool = False
    leave_one_out: bool = True
    bootstrap_samples: int = 0
    bootstrap_starts: int = 8
    # Diagnostics thresholds.
    max_loo_rel_error: float = 0.01
    max_start_spread: float = 0.1
    # Stage 3 (repair) runs when stage 1's beta is on a bound or stage 2 misses a loss by
    # more than this fraction of the losses' range.
    refine_residual: float = 0.05

    def numerics(self) -> "FitConfig":
        """Only the fields the jitted fit depends on (the rest would only cause recompiles)."""
        return FitConfig(
            huber_delta_ratio=self.huber_delta_ratio,
            huber_delta_loss=self.huber_delta_loss,
            alpha_prior=self.alpha_prior,
            beta_bounds=self.beta_bounds,
            maxiter=self.maxiter,
            tol=self.tol,
            refine_residual=self.refine_residual,
        )


@dataclasses.dataclass(frozen=True)
class DomainDiagnostics:
    name: str
    residuals: list[float]
    rmse: float
    max_abs_residual: float
    loo_errors: list[float]
    loo_max_rel_error: float
    stage1_objective: float
    beta_start_spread: float
    transfer_start_spread: float
    transferred_fraction: float
    alpha_identified: bool
    refined: bool
    notes: list[str]
    poorly_identified: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FitResult:
    domains: tuple[str, ...]
    params: LawParams
    diagnostics: tuple[DomainDiagnostics, ...]
    bootstrap_params: LawParams | None = None

    def params_dict(self) -> dict[str, dict[str, float]]:
        return {
            name: {f: float(getattr(self.params, f)[i]) for f in LawParams._fields}
            for i, name in enumerate(self.domains)
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        law = lambda p: None if p is None else {f: np.asarray(getattr(p, f)).tolist() for f in LawParams._fields}
        return {
            "domains": list(self.domains),
            "params": law(self.params),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "bootstrap_params": law(self.bootstrap_params),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FitResult":
        law = lambda p: None if p is None else LawParams(*(np.asarray(p[f], np.float64) for f in LawParams._fields))
        return cls(
            domains=tuple(d["domains"]),
            params=law(d["params"]),
            diagnostics=tuple(DomainDiagnostics(**x) for x in d["diagnostics"]),
            bootstrap_params=law(d["bootstrap_params"]),
        )


# --------------------------------------------------------------------------- stage 1


def ratio_design(num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of points whose loss differences enter the ratios, and pairs of those pairs.

    For 5 points this is the paper's {(1,3),(1,4),(1,5),(2,4),(2,5),(3,5)} (pairs at
    least two scales apart) and all 15 pairs of them. Short series use every pair.
    """
    pairs = [(a, b) for a in range(num_points) for b in range(a + 2, num_points)]
    if len(pairs) < 3:
        pairs = list(itertools.combinations(range(num_points), 2))
    quads = list(itertools.combinations(range(len(pairs)), 2))
    return np.asarray(pairs, np.int32), np.asarray(quads, np.int32)


def _huber(residual: Array, delta: float) -> Array:
    """Huber loss scaled by 1/delta^2 so that the objective is O(1) near a good fit."""
    return optax.losses.huber_loss(residual, delta=delta) / delta**2


def _masked_mean(values: Array, weight: Array) -> Array:
    return jnp.sum(weight * values) / jnp.maximum(jnp.sum(weight), 1.0)


def _stage1_objective(theta, x, loss, mask, other, pairs, quads, cfg: FitConfig):
    """theta = (log beta, A / M)."""
    beta, transfer = jnp.exp(theta[0]), other * theta[1]
    f = (x + transfer) ** (-beta)
    d_model = f[pairs[:, 0]] - f[pairs[:, 1]]
    d_obs = loss[pairs[:, 0]] - loss[pairs[:, 1]]
    r_model = d_model[quads[:, 0]] / d_model[quads[:, 1]]
    r_obs = d_obs[quads[:, 0]] / d_obs[quads[:, 1]]
    pair_mask = mask[pairs[:, 0]] * mask[pairs[:, 1]]
    usable = (r_obs > 0) & jnp.isfinite(r_obs)
    weight = pair_mask[quads[:, 0]] * pair_mask[quads[:, 1]] * usable
    residual = jnp.log(r_model) - jnp.log(jnp.where(usable, r_obs, 1.0))
    return _masked_mean(_huber(residual, cfg.huber_delta_ratio), weight)


def _stage1_bounds(dtype, cfg: FitConfig) -> tuple[Array, Array]:
    lo, hi = np.log(cfg.beta_bounds[0]), np.log(cfg.beta_bounds[1])
    return jnp.array([lo, 1e-6], dtype), jnp.array([hi, 1.0], dtype)  # gamma > 0 strictly


# --------------------------------------------------------------------------- stage 2


def _stage2_params(phi, other_all, other_ref, fit_alpha: bool, cfg: FitConfig):
    """phi = (log c, A_ref / cap, alpha, log e) -> (c, A_ref, alpha, e).

    ``cap`` makes ``gamma M^alpha <= M`` hold at every observed M (``M_ref`` = reference).
    """
    alpha = phi[2] if fit_alpha else jnp.asarray(cfg.alpha_prior, phi.dtype)
    cap = jnp.min(other_all * (other_ref / other_all) ** alpha)
    return jnp.exp(phi[0]), cap * phi[1], alpha, jnp.exp(phi[3])


def _stage2_predict(phi, beta, x, other, other_ref, fit_alpha, cfg):
    c, transfer_ref, alpha, e = _stage2_params(phi, other, other_ref, fit_alpha, cfg)
    return c * (x + transfer_ref * (other / other_ref) ** alpha) ** (-beta) + e


def _stage2_objective(phi, beta, x, other, loss, mask, other_ref, fit_alpha, cfg):
    pred = _stage2_predict(phi, beta, x, other, other_ref, fit_alpha, cfg)
    return _masked_mean(_huber(pred - loss, cfg.huber_delta_loss), mask)


def _stage2_bounds(dtype, loss) -> tuple[Array, Array]:
    log_loss = jnp.log(jnp.max(loss))
    return jnp.array([-30.0, 1e-6, 0.0, -30.0], dtype), jnp.stack([30.0, 1.0, 1.0, log_loss]).astype(dtype)


def _linear_c_e(beta, transfer, x, loss, mask):
    """Least-squares c, e of ``loss = c f + e`` (f = (x + A)^-beta) under c, e > 0: stage-2 starts."""
    f = (x + transfer) ** (-beta)
    f_mean, l_mean = _masked_mean(f, mask), _masked_mean(loss, mask)
    cov = jnp.sum(mask * (f - f_mean) * (loss - l_mean))
    var = jnp.sum(mask * (f - f_mean) ** 2)
    c = cov / jnp.maximum(var, 1e-300)
    e = l_mean - c * f_mean
    c_origin = jnp.sum(mask * f * loss) / jnp.sum(mask * f * f)  # best c with e = 0
    ok = (c > 0) & (e > 0)
    return jnp.where(ok, c, c_origin), jnp.where(ok, e, 1e-8)


# --------------------------------------------------------------------------- both stages


def _best_of(values: Array) -> tuple[Array, Array]:
    values = jnp.where(jnp.isfinite(values), values, jnp.inf)
    return jnp.argmin(values), values


def _relative_spread(values: Array, near: Array, reference: Array) -> Array:
    hi = jnp.max(jnp.where(near, values, -jnp.inf))
    lo = jnp.min(jnp.where(near, values, jnp.inf))
    return (hi - lo) / jnp.maximum(jnp.abs(reference), 1e-12)


def _lbfgsb(fun, cfg: FitConfig) -> jaxopt.LBFGSB:
    return jaxopt.LBFGSB(fun=fun, maxiter=cfg.maxiter, tol=cfg.tol, implicit_diff=False)


def _multistart(objective, starts: Array, bounds, cfg: FitConfig) -> tuple[Array, Array, Array]:
    """Minimise from every start (vmapped); returns (solutions, objective values, best index)."""
    solutions = jax.vmap(lambda s: _lbfgsb(objective, cfg).run(s, bounds=bounds).params)(starts)
    best, values = _best_of(jax.vmap(objective)(solutions))
    return solutions, values, best


def _stage1(key, x1, loss1, mask1, other1, num_starts, cfg):
    """beta and A / M from log-ratios of loss differences; plus start agreement."""
    pairs, quads = ratio_design(x1.shape[0])
    bounds = _stage1_bounds(x1.dtype, cfg)
    objective = lambda t: _stage1_objective(t, x1, loss1, mask1, other1, pairs, quads, cfg)
    thetas, values, best = _multistart(objective, jax.random.uniform(key, (num_starts, 2), x1.dtype, *bounds), bounds, cfg)
    betas, fractions = jnp.exp(thetas[:, 0]), thetas[:, 1]
    near = values <= values[best] * (1 + 1e-3) + 1e-9
    return dict(
        beta=betas[best],
        fraction=fractions[best],
        objective=values[best],
        beta_spread=_relative_spread(betas, near, betas[best]),
        transfer_spread=_relative_spread(fractions, near, jnp.ones_like(betas[best])),
    )


def _fit_one(key, x1, loss1, mask1, other1, x2, other2, loss2, mask2, *, num_starts, fit_alpha, cfg):
    """Fit one domain (normalised units). Pure; vmappable over masks, losses and keys."""
    k1, k2, k3 = jax.random.split(key, 3)
    s1 = _stage1(k1, x1, loss1, mask1, other1, num_starts, cfg)
    beta1 = s1["beta"]

    # Stage 2: c, gamma, alpha, e with beta fixed.
    other_ref = jnp.exp(_masked_mean(jnp.log(other2), mask2))
    bounds2 = _stage2_bounds(x1.dtype, loss2)

    def initial_phi(beta, u):
        """Stage-2 parameters at (A fraction, alpha) = u, with c, e by least squares."""
        phi = jnp.stack([0.0, u[0], u[1], 0.0]).astype(x1.dtype)
        _, transfer_ref, alpha, _ = _stage2_params(phi, other2, other_ref, fit_alpha, cfg)
        c, e = _linear_c_e(beta, transfer_ref * (other2 / other_ref) ** alpha, x2, loss2, mask2)
        return jnp.clip(phi.at[0].set(jnp.log(c)).at[3].set(jnp.log(e)), *bounds2)

    objective2 = lambda p: _stage2_objective(p, beta1, x2, other2, loss2, mask2, other_ref, fit_alpha, cfg)
    starts2 = jax.vmap(initial_phi, in_axes=(None, 0))(beta1, jax.random.uniform(k2, (num_starts, 2), x1.dtype))
    phis, values2, best2 = _multistart(objective2, starts2, bounds2, cfg)
    phi2 = phis[best2]

    # Stage 3 (repair): the ratios cancel c and e, so stage 1 can choose a beta (typically
    # its lower bound: a log law) that no c and e >= 0 reproduce. Then refit all five
    # parameters jointly from the stage-2 solution and random starts; keep it if better.
    residual = jnp.abs(_stage2_predict(phi2, beta1, x2, other2, other_ref, fit_alpha, cfg) - loss2)
    spread = jnp.max(jnp.where(mask2 > 0, loss2, -jnp.inf)) - jnp.min(jnp.where(mask2 > 0, loss2, jnp.inf))
    lo, hi = np.log(cfg.beta_bounds[0]), np.log(cfg.beta_bounds[1])
    on_bound = (jnp.log(beta1) <= lo + np.log(10.0)) | (jnp.log(beta1) >= hi - 0.1)
    refine = on_bound | (jnp.max(jnp.where(mask2 > 0, residual, 0.0)) > cfg.refine_residual * spread)

    joint = lambda q: _stage2_objective(q[1:], jnp.exp(q[0]), x2, other2, loss2, mask2, other_ref, fit_alpha, cfg)
    bounds3 = (jnp.concatenate([jnp.array([lo], x1.dtype), bounds2[0]]), jnp.concatenate([jnp.array([hi], x1.dtype), bounds2[1]]))
    ka, kb = jax.random.split(k3)
    log_betas = jax.random.uniform(ka, (num_starts,), x1.dtype, np.log(1e-2), np.log(2.0))
    us = jax.random.uniform(kb, (num_starts, 2), x1.dtype)
    starts3 = jax.vmap(lambda b, u: jnp.concatenate([b[None], initial_phi(jnp.exp(b), u)]))(log_betas, us)
    starts3 = starts3.at[0].set(jnp.concatenate([jnp.log(beta1)[None], phi2]))
    qs, values3, best3 = _multistart(joint, starts3, bounds3, cfg)
    use3 = refine & (values3[best3] < values2[best2])
    phi = jnp.where(use3, qs[best3][1:], phi2)

    c, transfer_ref, alpha, e = _stage2_params(phi, other2, other_ref, fit_alpha, cfg)
    return dict(
        beta=jnp.where(use3, jnp.exp(qs[best3][0]), beta1),
        c=c,
        gamma=transfer_ref / other_ref**alpha,
        alpha=alpha,
        e=e,
        stage1_objective=s1["objective"],
        stage2_objective=jnp.where(use3, values3[best3], values2[best2]),
        beta_spread=s1["beta_spread"],
        transfer_spread=s1["transfer_spread"],
        transferred_fraction=s1["fraction"],
        stage1_beta=beta1,
        refined=use3,
    )


@functools.partial(jax.jit, static_argnames=("num_starts", "fit_alpha", "cfg"))
def _fit_batch(keys, x1, loss1, masks1, other1, x2, other2, loss2, masks2, *, num_starts, fit_alpha, cfg):
    """vmap of ``_fit_one`` over (keys, losses, masks): one compile for fit, LOO and bootstrap."""
    fit = functools.partial(_fit_one, num_starts=num_starts, fit_alpha=fit_alpha, cfg=cfg)
    return jax.vmap(fit, in_axes=(0, None, 0, 0, None, None, None, 0, 0))(
        keys, x1, loss1, masks1, other1, x2, other2, loss2, masks2
    )


def _as_law(out: dict[str, Array]) -> LawParams:
    return LawParams(*(out[f] for f in LawParams._fields))


# --------------------------------------------------------------------------- public API


def fit_domain(data: DomainData, key: Array, cfg: FitConfig = FitConfig()) -> tuple[LawParams, DomainDiagnostics, LawParams | None]:
    """Fit one domain. Returns scalar-per-field params (user units), diagnostics, bootstrap params."""
    with jax.enable_x64(True):
        scale = float(np.median(data.in_domain))
        use_cross = cfg.use_cross_runs and data.cross_loss.size > 0
        x1 = jnp.asarray(data.in_domain / scale)
        loss1 = jnp.asarray(data.loss)
        other1 = jnp.asarray(data.other / scale)
        x2 = jnp.concatenate([x1, jnp.asarray(data.cross_in_domain / scale)]) if use_cross else x1
        other2 = (
            jnp.concatenate([jnp.full_like(x1, other1), jnp.asarray(data.cross_other / scale)])
            if use_cross
            else jnp.full_like(x1, other1)
        )
        loss2 = jnp.concatenate([loss1, jnp.asarray(data.cross_loss)]) if use_cross else loss1
        fit_alpha = bool(np.unique(np.round(np.asarray(other2), 12)).size > 1)
        p1, p2 = x1.shape[0], x2.shape[0]
        fit = functools.partial(
            _fit_batch, x1=x1, other1=other1, x2=x2, other2=other2, fit_alpha=fit_alpha, cfg=cfg.numerics()
        )
        key_main, key_boot, key_resample = jax.random.split(key, 3)

        # One batch, one compile: row 0 is the fit on every point, rows 1.. leave one out.
        folds = p1 if cfg.leave_one_out and p1 >= 4 else 0
        masks1 = jnp.concatenate([jnp.ones((1, p1)), 1.0 - jnp.eye(p1)[:folds]])
        masks2 = jnp.concatenate([masks1, jnp.ones((folds + 1, p2 - p1))], axis=1)
        batch = fit(
            jax.random.split(key_main, folds + 1), loss1=jnp.tile(loss1, (folds + 1, 1)), masks1=masks1,
            loss2=jnp.tile(loss2, (folds + 1, 1)), masks2=masks2, num_starts=cfg.num_starts,
        )
        out = jax.tree.map(lambda a: a[0], batch)
        params = _as_law(out)
        residuals = np.asarray(domain_loss(params, x1, other1) - loss1)
        loo_errors = np.full(p1, np.nan)
        if folds:
            loo = jax.tree.map(lambda a: a[1:], _as_law(batch))
            loo_pred = jax.vmap(lambda p, x: domain_loss(p, x, other1))(loo, x1)
            loo_errors = np.asarray(loo_pred - loss1)

        boot = None
        if cfg.bootstrap_samples > 0:
            pred2 = domain_loss(params, x2, other2)
            resid2 = loss2 - pred2
            idx = jax.random.randint(key_resample, (cfg.bootstrap_samples, p2), 0, p2)
            loss2_b = pred2[None] + resid2[idx]
            b = fit(
                jax.random.split(key_boot, cfg.bootstrap_samples), loss1=loss2_b[:, :p1],
                masks1=jnp.ones((cfg.bootstrap_samples, p1)), loss2=loss2_b,
                masks2=jnp.ones((cfg.bootstrap_samples, p2)), num_starts=cfg.bootstrap_starts,
            )
            boot = jax.tree.map(np.asarray, rescale_units(_as_law(b), scale))

        diagnostics = _diagnose(data, cfg, out, residuals, loo_errors, fit_alpha)
        return jax.tree.map(np.asarray, rescale_units(params, scale)), diagnostics, boot


def _diagnose(data, cfg, out, residuals, loo_errors, fit_alpha) -> DomainDiagnostics:
    beta = float(out["stage1_beta"])
    fraction = float(out["transferred_fraction"])
    loo_rel = np.abs(loo_errors) / data.loss
    loo_max = float(np.nanmax(loo_rel)) if np.any(np.isfinite(loo_rel)) else float("nan")
    notes, serious = [], []
    refined = bool(out["refined"])
    at_bound = beta <= cfg.beta_bounds[0] * 10 or beta >= cfg.beta_bounds[1] * 0.9
    if refined:
        notes.append(
            f"stage 1 gave beta={beta:.3g}, which no c, e >= 0 reproduce; all parameters refitted jointly"
            f" (beta={float(out['beta']):.3g})"
        )
    elif at_bound:
        serious.append(f"beta={beta:.3g} is at its bound")
    if fraction < 1e-3 or fraction > 0.999:
        notes.append(f"transferred data A/M={fraction:.3g} is at its bound (the transfer constraint binds)")
    if float(out["beta_spread"]) > cfg.max_start_spread and not refined:
        serious.append(f"starts with near-best stage-1 objective disagree on beta by {float(out['beta_spread']):.0%}")
    if float(out["transfer_spread"]) > cfg.max_start_spread and not refined:
        serious.append(f"starts with near-best stage-1 objective disagree on A/M by {float(out['transfer_spread']):.0%}")
    if np.isfinite(loo_max) and loo_max > cfg.max_loo_rel_error:
        serious.append(f"leave-one-out error {loo_max:.2%} exceeds {cfg.max_loo_rel_error:.2%}")
    if not fit_alpha:
        notes.append(
            f"one other-domain size observed: gamma/alpha split not identified, alpha held at {cfg.alpha_prior}"
        )
    return DomainDiagnostics(
        name=data.name,
        residuals=[float(r) for r in residuals],
        rmse=float(np.sqrt(np.mean(residuals**2))),
        max_abs_residual=float(np.max(np.abs(residuals))),
        loo_errors=[float(r) for r in loo_errors],
        loo_max_rel_error=loo_max,
        stage1_objective=float(out["stage1_objective"]),
        beta_start_spread=float(out["beta_spread"]),
        transfer_start_spread=float(out["transfer_spread"]),
        transferred_fraction=fraction,
        alpha_identified=fit_alpha,
        refined=refined,
        notes=notes + serious,
        poorly_identified=bool(serious),
    )


def fit_law(domains: Sequence[DomainData], key: Array, cfg: FitConfig = FitConfig()) -> FitResult:
    """Fit every domain; parameters come back stacked as (k,) arrays in user units."""
    keys = jax.random.split(key, len(domains))
    fits = [fit_domain(d, k, cfg) for d, k in zip(domains, keys)]
    stack = lambda *xs: np.stack(xs, axis=-1)
    params = jax.tree.map(stack, *[f[0] for f in fits])
    boot = jax.tree.map(stack, *[f[2] for f in fits]) if cfg.bootstrap_samples > 0 else None
    return FitResult(
        domains=tuple(d.name for d in domains),
        params=LawParams(*(np.asarray(p, np.float64) for p in params)),
        diagnostics=tuple(f[1] for f in fits),
        bootstrap_params=boot,
    )
