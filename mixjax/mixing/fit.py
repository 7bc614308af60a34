"""Two-stage, multi-start fit of the scaling law (ALGORITHM.md, "Fitting"), any run design.

Each domain is fitted on every run where its loss was measured: its own series (runs that
change only this domain, all at one other-domain size ``M``) and any other runs ("cross"
points: the 4k+1 design's other perturbations, a Dirichlet swarm, or both).

Stage 1 fits ``beta`` and the transferred data ``A = gamma M^alpha`` from quads of loss
differences of the own series, which cancel ``c`` and ``e``. Two statistics
(``FitConfig.procedure``):

- ``"mixjax"`` (default): ``log((L_a - L_b) / (L_c - L_d))`` against the model's;
- ``"paper"``: the released reference code's ratio of logs,
  ``log(L_a - L_b) / log(L_c - L_d)``, quads with a difference <= 0 skipped, in the
  table's own token units (the statistic is not unit-free).

Stage 2 fixes ``beta`` and fits ``c, gamma, alpha, e`` (``c, e`` in log space,
``0 <= alpha <= 1``, ``gamma M^alpha <= M`` at every observed ``M``). Stage 3 refits all
five parameters jointly from the stage-2 solution and random starts, and is kept when it
fits better, whenever ``M`` varies (alpha fitted), the domain has no own series (a swarm),
or (default procedure) stage 1's beta is on a bound / stage 2 misses a loss by more than
``refine_residual`` of the losses' range.

Alpha: with one observed ``M`` the split of ``A`` into ``gamma`` and ``alpha`` is not
identified, and alpha is held at ``alpha_prior``. When ``M`` varies, each domain is
fitted twice, on its own series with alpha at the prior and on every run with alpha
fitted, and (``alpha_mode="auto"``) the variant with the lower leave-one-run-out
prediction error over every run where the domain's loss was measured is kept.

Speed: every fit of every domain, variant, start, fold and bootstrap sample is one call of
one jitted function (vmapped), with a small projected Levenberg-Marquardt minimiser
(:mod:`mixjax.mixing.optim`); folds and bootstrap refits start from the full fit.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.cache import cached_call
from mixjax.mixing.law import LawParams, rescale_units
from mixjax.mixing.optim import multistart

Array = jax.Array
PROCEDURES = ("mixjax", "paper")
ALPHA_MODES = ("auto", "prior", "fitted")


@dataclasses.dataclass(frozen=True)
class DomainData:
    """What the fit of one domain sees, in the user's token units.

    ``in_domain``/``loss``: the runs that perturb only this domain (its own series, base
    run included), all at the same other-domain tokens ``other`` (may be empty when the
    table has no base run, e.g. a random swarm). ``cross_*``: every other run where this
    domain's loss was measured (they vary ``M`` and so identify ``alpha``).
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
        total = len(self.in_domain) + len(self.cross_loss)
        if len(self.in_domain) < 3 and (len(self.in_domain) > 0 or total < 3):
            raise ValueError(f"domain {self.name!r}: {len(self.in_domain)} points, the fit needs >= 3")
        if not (np.all(self.in_domain > 0) and np.all(self.cross_in_domain > 0) and np.all(self.cross_other > 0)):
            raise ValueError(f"domain {self.name!r}: token counts must be positive")
        if len(self.in_domain) and not self.other > 0:
            raise ValueError(f"domain {self.name!r}: token counts must be positive")
        if not (np.all(np.isfinite(self.loss)) and np.all(np.isfinite(self.cross_loss))):
            raise ValueError(f"domain {self.name!r}: losses must be finite")

    @property
    def has_series(self) -> bool:
        return len(self.in_domain) >= 3

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every run of this domain: (in-domain tokens, other tokens, loss), series first."""
        x = np.concatenate([self.in_domain, self.cross_in_domain])
        m = np.concatenate([np.full(len(self.in_domain), self.other), self.cross_other])
        return x, m, np.concatenate([self.loss, self.cross_loss])


@dataclasses.dataclass(frozen=True)
class FitConfig:
    num_starts: int = 32
    huber_delta_ratio: float = 1e-3  # stage 1, on the quads' statistic (the paper's value)
    huber_delta_loss: float = 1e-2  # stages 2-3, on losses: quadratic for inliers (~1e-3)
    alpha_prior: float = 0.5
    beta_bounds: tuple[float, float] = (1e-6, 5.0)
    maxiter: int = 40  # Levenberg-Marquardt steps per stage
    tol: float = 1e-8  # kept for configs that set it; the minimiser runs maxiter steps
    # "mixjax": stage 1 on log of the ratio of differences; "paper": the released
    # reference's ratio of logs (see the module docstring).
    procedure: str = "mixjax"
    # "auto": per domain, alpha at the prior (own series) or fitted (every run), by
    # leave-one-run-out error; "prior" / "fitted" force one. use_cross_runs=True is
    # the old spelling of "fitted".
    alpha_mode: str = "auto"
    use_cross_runs: bool = False
    leave_one_out: bool = True  # out-of-fold refits (leave-one-run-out up to max_folds runs)
    max_folds: int = 25
    bootstrap_samples: int = 0
    bootstrap_starts: int = 8  # starts of each fold and bootstrap refit (one is the full fit)
    # Diagnostics thresholds.
    max_loo_rel_error: float = 0.01
    max_start_spread: float = 0.1
    # Stage 3 (repair) runs when stage 1's beta is on a bound or stage 2 misses a loss by
    # more than this fraction of the losses' range.
    refine_residual: float = 0.05
    # Law families (mixjax.mixing.families.fit_table): "auto" keeps the extrapolating
    # family with the lowest out-of-fold RMSE; "paper" / "transfer" / "exp" force one.
    family: str = "auto"
    families: tuple[str, ...] = ("paper", "transfer", "exp")
    transfer_prior: float = 2.0  # prior std of log t_ij (toward the paper's law, t = 1); 2 by RegMix out-of-fold error
    transfer_rho_min: float = 0.1  # lower bound of the transfer law's CES exponent (1: linear sum)
    family_huber_delta: float = 0.2  # Huber delta of the family fits (nats; ~least squares)
    kfold: int = 10  # folds of whole runs for tables with more than max_folds runs
    num_family_starts: int = 2
    family_iterations: int = 80  # LM steps of the full fits (fold refits, warm: a quarter)
    reference_gbm: bool = False  # also score LightGBM out-of-fold (a reference, never solved)

    def __post_init__(self) -> None:
        if self.procedure not in PROCEDURES:
            raise ValueError(f"fit procedure must be one of {PROCEDURES}, got {self.procedure!r}")
        if self.alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {self.alpha_mode!r}")

    @property
    def effective_alpha_mode(self) -> str:
        return "fitted" if self.use_cross_runs else self.alpha_mode

    def numerics(self) -> "FitConfig":
        """Only the fields the jitted fit depends on (the rest would only cause recompiles)."""
        return FitConfig(
            huber_delta_ratio=self.huber_delta_ratio,
            huber_delta_loss=self.huber_delta_loss,
            alpha_prior=self.alpha_prior,
            beta_bounds=self.beta_bounds,
            maxiter=self.maxiter,
            procedure=self.procedure,
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
    # Added with the any-design fit (defaults keep older fit.json files readable).
    procedure: str = "mixjax"
    alpha_choice: str = "prior"  # "prior" (own series, alpha held) or "fitted" (every run)
    loo_rmse_prior: float = float("nan")  # leave-one-run-out RMSE over every run, per variant
    loo_rmse_fitted: float = float("nan")
    oof_rmse: float = float("nan")  # out-of-fold RMSE / Spearman of the chosen variant
    oof_spearman: float = float("nan")
    num_runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FitResult:
    domains: tuple[str, ...]
    params: LawParams
    diagnostics: tuple[DomainDiagnostics, ...]
    bootstrap_params: LawParams | None = None
    # Pooled over domains: out-of-fold RMSE and Spearman of predicted vs measured losses.
    validation: dict[str, float] | None = None

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
            "validation": self.validation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FitResult":
        law = lambda p: None if p is None else LawParams(*(np.asarray(p[f], np.float64) for f in LawParams._fields))
        return cls(
            domains=tuple(d["domains"]),
            params=law(d["params"]),
            diagnostics=tuple(DomainDiagnostics(**x) for x in d["diagnostics"]),
            bootstrap_params=law(d["bootstrap_params"]),
            validation=d.get("validation"),
        )


# --------------------------------------------------------------------------- design


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


def _pack(domains: Sequence[DomainData], cfg: FitConfig, rng: np.random.Generator) -> tuple[dict, int, np.ndarray]:
    """Normalised, padded arrays for the jitted fit; returns (arrays, number of folds, scales)."""
    pts = [d.points() for d in domains]
    p_max = max(len(p[0]) for p in pts)
    designs = [ratio_design(len(d.in_domain)) if d.has_series else (np.zeros((0, 2), np.int32),) * 2 for d in domains]
    q2 = max(1, max(len(p) for p, _ in designs))
    q4 = max(1, max(len(q) for _, q in designs))
    folds = min(p_max, cfg.max_folds) if cfg.leave_one_out else 0
    scales = np.array(
        [1.0 if cfg.procedure == "paper" else float(np.median(p[0])) for p in pts], np.float64
    )
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
        if folds:
            fold[:n] = np.arange(n) if n <= folds else rng.permutation(n) % folds
        out["fold"].append(fold)
    return {k: np.stack(v) for k, v in out.items()}, folds, scales


# --------------------------------------------------------------------------- objectives


def _masked_mean(values: Array, weight: Array) -> Array:
    return jnp.sum(jnp.where(weight > 0, weight * values, 0.0)) / jnp.maximum(jnp.sum(weight), 1.0)


def _stage1_residuals(theta, d, mask, loss, cfg: FitConfig):
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


def _stage2_params(phi, d, mask, fit_alpha, cfg: FitConfig):
    """phi = (log c, A_ref / cap, alpha, log e) -> (c, A_ref, alpha, e, M_ref).

    ``cap`` makes ``gamma M^alpha <= M`` hold at every observed M (``M_ref``: geometric
    mean of the fitted points' other-domain tokens).
    """
    m = d["m"]
    m_ref = jnp.exp(_masked_mean(jnp.log(m), mask.astype(m.dtype)))
    alpha = jnp.where(fit_alpha, phi[2], jnp.asarray(cfg.alpha_prior, phi.dtype))
    cap = jnp.min(jnp.where(mask, m * (m_ref / m) ** alpha, jnp.inf))
    return jnp.exp(phi[0]), cap * phi[1], alpha, jnp.exp(phi[3]), m_ref


def _predict(phi, beta, d, mask, fit_alpha, cfg):
    c, transfer_ref, alpha, e, m_ref = _stage2_params(phi, d, mask, fit_alpha, cfg)
    return c * (d["x"] + transfer_ref * (d["m"] / m_ref) ** alpha) ** (-beta) + e


def _stage2_residuals(phi, beta, d, mask, loss, fit_alpha, cfg):
    return _predict(phi, beta, d, mask, fit_alpha, cfg) - loss, mask.astype(phi.dtype)


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


def _relative_spread(values: Array, near: Array, reference: Array) -> Array:
    hi = jnp.max(jnp.where(near, values, -jnp.inf))
    lo = jnp.min(jnp.where(near, values, jnp.inf))
    return (hi - lo) / jnp.maximum(jnp.abs(reference), 1e-12)


# --------------------------------------------------------------------------- one fit


def _fit_one(u, d, mask, loss, fit_alpha, cfg: FitConfig, warm=None):
    """Fit one domain on the points in ``mask`` (normalised units). Pure and vmappable.

    ``u``: uniform draws (num_starts, 7) for the random starts (drawn outside the jitted
    function: the in-graph PRNG would dominate its compile time). ``warm`` (a previous
    fit's output, NaN for none) replaces the first start of every stage.
    """
    dtype = d["x"].dtype
    num_starts = u.shape[0]
    fmask = mask.astype(dtype)
    has_series = jnp.sum(mask & d["series"]) >= 3
    lo_b, hi_b = np.log(cfg.beta_bounds[0]), np.log(cfg.beta_bounds[1])
    keep_warm = lambda start, w: jnp.where(jnp.isnan(w), start, w)

    # Stage 1: beta and A / M from the own series.
    lo1, hi1 = jnp.array([lo_b, 1e-6], dtype), jnp.array([hi_b, 1.0], dtype)
    starts1 = lo1 + (hi1 - lo1) * u[:, :2]
    if warm is not None:
        starts1 = starts1.at[0].set(keep_warm(starts1[0], warm["theta1"]))
    residuals1 = lambda t: _stage1_residuals(t, d, mask, loss, cfg)
    thetas, values1, best1 = multistart(residuals1, starts1, lo1, hi1, cfg.maxiter, cfg.huber_delta_ratio)
    theta1 = thetas[best1]
    beta1 = jnp.where(has_series, jnp.exp(theta1[0]), 0.3)
    betas, fractions = jnp.exp(thetas[:, 0]), thetas[:, 1]
    near = values1 <= values1[best1] * (1 + 1e-3) + 1e-9

    # Stages 2 and 3 in one multistart over q = (log beta, log c, A_ref / cap, alpha, log e):
    # the first half of the starts hold beta at stage 1's value (box lo = hi: stage 2),
    # the second half fit all five jointly (stage 3).
    lo_q = jnp.array([lo_b, -30.0, 1e-6, 0.0, -30.0], dtype)
    hi_q = jnp.stack([hi_b, 30.0, 1.0, 1.0, jnp.log(jnp.max(jnp.where(mask, loss, -jnp.inf)))]).astype(dtype)

    def initial_q(log_beta, frac, alpha):
        phi = jnp.stack([0.0, frac, alpha, 0.0]).astype(dtype)
        _, transfer_ref, alpha, _, m_ref = _stage2_params(phi, d, mask, fit_alpha, cfg)
        c, e = _linear_c_e(jnp.exp(log_beta), transfer_ref * (d["m"] / m_ref) ** alpha, d["x"], loss, fmask)
        return jnp.clip(jnp.stack([log_beta, jnp.log(c), frac, phi[2], jnp.log(e)]), lo_q, hi_q)

    # beta fixed leaves c, e nearly linear: a quarter of the starts; the joint fit half.
    half, joint_n = max(1, num_starts // 4), max(2, num_starts // 2)
    log_beta1 = jnp.log(beta1)
    random_log_beta = np.log(1e-2) + (np.log(2.0) - np.log(1e-2)) * u[:joint_n, 4]
    log_betas = jnp.concatenate([jnp.full(half, log_beta1), random_log_beta.at[0].set(log_beta1)])
    fracs = jnp.concatenate([u[:half, 2], u[:joint_n, 5]])
    alphas = jnp.concatenate([u[:half, 3], u[:joint_n, 6]])
    starts = jax.vmap(initial_q)(log_betas, fracs, alphas)
    if warm is not None:
        starts = starts.at[half + 1].set(keep_warm(starts[half + 1], warm["q3"]))
    fixed = jnp.arange(half + joint_n) < half
    lo = jnp.where(fixed[:, None], lo_q.at[0].set(log_beta1), lo_q)
    hi = jnp.where(fixed[:, None], hi_q.at[0].set(log_beta1), hi_q)
    residuals = lambda q: _stage2_residuals(q[1:], jnp.exp(q[0]), d, mask, loss, fit_alpha, cfg)
    qs, values, _ = multistart(residuals, starts, lo, hi, cfg.maxiter, cfg.huber_delta_loss)
    values2 = jnp.where(fixed, values, jnp.inf)
    values3 = jnp.where(fixed, jnp.inf, values)
    best2, best3 = jnp.argmin(values2), jnp.argmin(values3)
    q2 = qs[best2]

    # Which one is kept (see the module docstring).
    residual = jnp.abs(_predict(q2[1:], beta1, d, mask, fit_alpha, cfg) - loss)
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

    c, transfer_ref, alpha, e, m_ref = _stage2_params(phi, d, mask, fit_alpha, cfg)
    return dict(
        beta=beta,
        c=c,
        gamma=transfer_ref / m_ref**alpha,
        alpha=alpha,
        e=e,
        stage1_objective=jnp.where(has_series, values1[best1], jnp.nan),
        objective=jnp.where(use3, values3[best3], values2[best2]),
        beta_spread=jnp.where(has_series, _relative_spread(betas, near, betas[best1]), 0.0),
        transfer_spread=jnp.where(has_series, _relative_spread(fractions, near, jnp.ones_like(betas[best1])), 0.0),
        transferred_fraction=jnp.where(has_series, theta1[1], phi[1]),
        stage1_beta=beta1,
        refined=use3 & has_series,
        has_series=has_series,
        theta1=theta1,
        q3=q,
    )


def _law(out) -> LawParams:
    return LawParams(*(out[f] for f in LawParams._fields))


def _warm_start(out) -> dict[str, Array]:
    return {"theta1": out["theta1"], "q3": out["q3"]}


@functools.partial(jax.jit, static_argnames=("cfg",))
def _fit_batch(draws, packed, fit_alpha, masks, losses, warm, *, cfg):
    """``_fit_one`` vmapped over a flat batch of instances (domain x variant x fold/sample).

    One compile serves the full fits, the out-of-fold refits and the bootstrap refits:
    the instances differ only in their data, point masks, losses and warm starts. (One
    flat vmap traces several times faster than nested vmaps over the three axes.)
    """

    def one(u, d, alpha_flag, mask, loss, w):
        return _fit_one(u, d, mask, loss, alpha_flag, cfg, warm=w)  # NaN warm: random start

    return jax.vmap(one)(draws, packed, fit_alpha, masks, losses, warm)


@functools.lru_cache(maxsize=16)
def _batch_for(cfg: FitConfig):
    """One jitted ``_fit_batch`` per numerics config (a new wrapper per call would retrace)."""
    return jax.jit(functools.partial(_fit_batch, cfg=cfg))


# --------------------------------------------------------------------------- public API


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for fewer than 3 points."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")

    def rank(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # average ties
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    ra, rb = rank(a), rank(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def fit_law(domains: Sequence[DomainData], key: Array, cfg: FitConfig = FitConfig()) -> FitResult:
    """Fit every domain; parameters come back stacked as (k,) arrays in user units."""
    domains = list(domains)
    mode = cfg.effective_alpha_mode
    m_varies = [np.unique(np.round(d.points()[1] / max(d.points()[1]), 12)).size > 1 for d in domains]
    if mode == "prior" or not any(m_varies):
        variants = (False,)
    elif mode == "fitted":
        variants = (True,)
    else:
        variants = (False, True)
    with jax.enable_x64(True):
        key_fit, key_fold, key_boot = jax.random.split(key, 3)
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key_fold)).ravel()[-1])
        packed, num_folds, scales = _pack(domains, cfg, rng)
        out = _fit_instances(packed, variants, num_folds, cfg, key_fit, key_boot)
    return _assemble(domains, cfg, packed, out, scales, variants, m_varies)


def _fit_instances(packed, variants, num_folds, cfg, key_fit, key_boot) -> dict[str, dict[str, np.ndarray]]:
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
    batch = _batch_for(numerics)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key_fit)).ravel()[-1])

    def run(masks, losses, warm, num_starts):
        """``masks``/``losses`` (D, V, I, P); ``warm``: dict of (D, V, ...) or None."""
        shape = masks.shape[:3]
        flat = lambda a: jnp.asarray(np.reshape(a, (-1, *a.shape[3:])))
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
        out = cached_call("fit", batch, args, static=repr(numerics))
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
        pred = _predict_np(_law(jax.tree.map(lambda a: a[..., None], full)), packed["x"][:, None], packed["m"][:, None])
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


def _predict_np(params: LawParams, x, m) -> np.ndarray:
    """The law in numpy (float64), elementwise with broadcasting."""
    p = LawParams(*(np.asarray(a, np.float64) for a in params))
    x, m = np.asarray(x, np.float64), np.asarray(m, np.float64)
    return p.c * (x + p.gamma * m**p.alpha) ** (-p.beta) + p.e


def _assemble(domains, cfg, packed, out, scales, variants, m_varies) -> FitResult:
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
                folds = _law(take(out["folds"], v))
                fold = packed["fold"][i, :n]
                pred = _predict_np(LawParams(*(a[fold] for a in folds)), xs, ms)
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
        p = _law(full)
        residuals = _predict_np(p, xs, ms) - loss
        fitted_mask = np.ones(n, bool) if chosen else prior_mask
        errors = oof.get(chosen, np.full(n, np.nan))
        if np.all(np.isfinite(errors)):
            pooled[0].append(loss)
            pooled[1].append(loss + errors)
        params.append(jax.tree.map(float, rescale_units(p, scales[i])))
        if "boot" in out:
            boots.append(jax.tree.map(np.asarray, rescale_units(_law(take(out["boot"], v)), scales[i])))
        diags.append(
            _diagnose(data, cfg, full, residuals, fitted_mask, errors, bool(chosen) and m_varies[i], chosen,
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
    return FitResult(
        domains=tuple(d.name for d in domains),
        params=LawParams(*(np.asarray(a, np.float64) for a in jax.tree.map(stack, *params))),
        diagnostics=tuple(diags),
        bootstrap_params=jax.tree.map(stack, *boots) if boots else None,
        validation=validation,
    )


def _diagnose(data, cfg, out, residuals, fitted_mask, errors, alpha_identified, chosen, loo_rmse, rho) -> DomainDiagnostics:
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
    if has_series and float(out["beta_spread"]) > cfg.max_start_spread and not refined:
        serious.append(f"starts with near-best stage-1 objective disagree on beta by {float(out['beta_spread']):.0%}")
    if has_series and float(out["transfer_spread"]) > cfg.max_start_spread and not refined:
        serious.append(f"starts with near-best stage-1 objective disagree on A/M by {float(out['transfer_spread']):.0%}")
    if np.isfinite(loo_max) and loo_max > cfg.max_loo_rel_error:
        serious.append(f"leave-one-out error {loo_max:.2%} exceeds {cfg.max_loo_rel_error:.2%}")
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
    return DomainDiagnostics(
        name=data.name,
        residuals=[float(r) for r in residuals],
        rmse=float(np.sqrt(np.mean(fr**2))),
        max_abs_residual=float(np.max(np.abs(fr))),
        loo_errors=[float(r) for r in errors],
        loo_max_rel_error=loo_max,
        stage1_objective=float(out["stage1_objective"]),
        beta_start_spread=float(out["beta_spread"]),
        transfer_start_spread=float(out["transfer_spread"]),
        transferred_fraction=fraction,
        alpha_identified=alpha_identified,
        refined=refined,
        notes=notes + serious,
        poorly_identified=bool(serious),
        procedure=cfg.procedure,
        alpha_choice="fitted" if chosen else "prior",
        loo_rmse_prior=loo_rmse.get(False, float("nan")),
        loo_rmse_fitted=loo_rmse.get(True, float("nan")),
        oof_rmse=float(np.sqrt(np.mean(errors**2))),
        oof_spearman=rho,
        num_runs=len(residuals),
    )


def fit_domain(data: DomainData, key: Array, cfg: FitConfig = FitConfig()) -> tuple[LawParams, DomainDiagnostics, LawParams | None]:
    """Fit one domain. Returns scalar-per-field params (user units), diagnostics, bootstrap params."""
    fit = fit_law([data], key, cfg)
    take = lambda p: None if p is None else LawParams(*(np.asarray(a)[..., 0] for a in p))
    return take(fit.params), fit.diagnostics[0], take(fit.bootstrap_params)
