"""The recommendation the runs support: how sure the answer is, and a mixture that does no
harm.

The plausible laws are the candidate families (those the runs cannot tell apart out of
fold, :func:`mixjax.mixing.selection.equivalent`) each refitted on random halves of the
runs (``Fit.samples``; the two-stage fit's bootstrap refits), equally weighted. For a
strength ``lam`` (nats) the mixture

    w(lam) = argmin_w  mean_s L_s(w, N) + lam * KL(w || prior)

minimises the expected total loss pulled toward a stated prior mixture (a KL penalty
toward a prior, as olmix's). The data set the strength: of a path of
strengths, the recommendation is the ``w(lam)`` whose gain over the prior, at the
``quantile`` (default 10%) of the plausible laws, is largest; when no strength gains at
that quantile the answer is the prior itself, and the output says the runs cannot tell.
For the recommendation and the law's plain optimum, the gain over uniform and
proportional is reported over the plausible laws: mean, 90% interval and the probability
that it is positive.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.cache import cached_call, small_program_jit
from mixjax.mixing.baselines import proportional_weights, uniform_weights
from mixjax.mixing.fit.config import FitConfig
from mixjax.mixing.fit.result import Fit
from mixjax.mixing.law import AnyLawParams, LawParams, TransferLawParams, total_loss
from mixjax.mixing.solve import Constraints, host_weight_bounds, project_bounded_simplex, projected_newton

STRENGTHS = np.concatenate([[0.0], np.geomspace(1e-5, 3.0, 12)])  # nats; the prior itself is the limit


@dataclasses.dataclass(frozen=True)
class Decision:
    """The recommendation at one budget (weights (k,), losses in nats).

    ``gains[name]`` / ``optimum_gains[name]``: baseline total loss minus the recommendation's
    (the optimum's) over the plausible laws: ``mean``, ``low`` / ``high`` (5% / 95%),
    ``p_better`` (fraction of laws where it is positive), ``relative`` (mean / baseline
    total).
    """

    weights: np.ndarray
    optimum: np.ndarray
    prior: np.ndarray
    prior_name: str
    strength: float  # the KL pull chosen (nats); inf: the prior itself
    num_laws: int
    families: tuple[str, ...]
    gains: dict[str, dict[str, float]]
    optimum_gains: dict[str, dict[str, float]]
    message: str

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("weights", "optimum", "prior"):
            out[key] = np.asarray(out[key]).tolist()
        return out


def _as_transfer(p: AnyLawParams) -> TransferLawParams:
    """Stacked (S, k) parameters of either law as the transfer law's (t = 1, rho = 1 for the paper's)."""
    if isinstance(p, TransferLawParams):
        return TransferLawParams(*(np.asarray(a, np.float64) for a in p))
    beta = np.asarray(p.beta, np.float64)
    k = beta.shape[-1]
    t = np.broadcast_to(np.ones((k, k)) - np.eye(k), (*beta.shape[:-1], k, k))
    return TransferLawParams(*(np.asarray(a, np.float64) for a in p), transfer=t.copy(), rho=np.ones_like(beta))


def plausible_laws(fit: Fit) -> tuple[TransferLawParams, tuple[str, ...]]:
    """The plausible laws of ``fit`` as stacked transfer-law parameters (S, k) and the
    families they come from: every candidate family's refits on random halves of the runs
    (or the two-stage bootstrap refits); the point fit alone when there are none."""
    families = tuple(f for f in (fit.candidates or (fit.family,)) if f in fit.samples)
    laws = [_as_transfer(fit.samples[f]) for f in families]
    if not laws and fit.bootstrap_params is not None:
        families, laws = (fit.family,), [_as_transfer(fit.bootstrap_params)]
    if not laws:
        single = jax.tree.map(lambda a: np.asarray(a, np.float64)[None], fit.params)
        families, laws = (fit.family,), [_as_transfer(single)]
    stacked = TransferLawParams(*(np.concatenate(fields) for fields in zip(*laws)))
    finite = np.all(np.isfinite(np.asarray(stacked.beta)), axis=1) & np.all(np.isfinite(np.asarray(stacked.c)), axis=1)
    return jax.tree.map(lambda a: a[finite], stacked), families


def _path(laws, budget, lo, hi, importance, prior, strengths):
    """w(lam) for every strength (L, k) and every law's objective at them (L, S)."""
    per_law = jax.vmap(total_loss, in_axes=(None, 0, None, None))

    def expected(w, lam):
        safe = jnp.maximum(w, 1e-12)
        return jnp.mean(per_law(w, laws, budget, importance)) + lam * jnp.sum(w * jnp.log(safe / prior))

    weights = jax.vmap(lambda lam: projected_newton(lambda w: expected(w, lam), lo, hi, 30))(strengths)
    values = jax.vmap(lambda w: per_law(w, laws, budget, importance))(weights)
    return weights, values


_project = small_program_jit(project_bounded_simplex)
_per_law = jax.vmap(jax.vmap(total_loss, in_axes=(None, 0, None, None)), in_axes=(0, None, None, None))


def _gain(values: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """Gain (baseline - values, per law) summarised."""
    gain = baseline - values
    return {"mean": float(gain.mean()), "low": float(np.percentile(gain, 5)), "high": float(np.percentile(gain, 95)),
            "p_better": float(np.mean(gain > 0)), "relative": float(gain.mean() / np.mean(baseline))}


def decide_weights(fit: Fit, budget: float, constraints: Constraints, optimum: np.ndarray) -> Decision:
    """The recommendation at ``budget`` (module docstring); ``optimum``: the chosen law's optimum.

    Raises:
      ValueError: the constraints are infeasible at ``budget`` (checked by the solve).
    """
    cfg = (fit.config or FitConfig()).decision  # a fit.json without a recorded config: the defaults
    laws, families = plausible_laws(fit)
    importance = np.asarray(constraints.importance, np.float64) * fit.has_law
    lo, hi = host_weight_bounds(constraints, budget)
    k = len(fit.domains)
    baselines = {"uniform": uniform_weights(k)}
    if np.all(np.isfinite(constraints.available)):
        baselines["proportional"] = proportional_weights(constraints.available)
    prior_name = cfg.prior if cfg.prior in baselines else "uniform"
    with jax.enable_x64(True):
        prior = np.asarray(_project(baselines[prior_name], (lo, hi)))
    if not np.allclose(prior, baselines[prior_name], atol=1e-9):  # an infeasible prior is projected onto the bounds
        prior_name = f"{prior_name} within the bounds ({', '.join(f'{n}={x:.3f}' for n, x in zip(fit.domains, prior))})"
    with jax.enable_x64(True):
        args = (laws, np.float64(budget), lo, hi, importance, np.maximum(prior, 1e-12), STRENGTHS)
        weights, values = (np.asarray(a) for a in cached_call("decision", _path, args))
        points = np.stack([prior, optimum, *baselines.values()])
        at = np.asarray(cached_call("decision-points", _per_law, (points, laws, np.float64(budget), importance)))
    prior_values, optimum_values, base_values = at[0], at[1], dict(zip(baselines, at[2:]))
    scores = np.quantile(prior_values[None] - values, cfg.quantile, axis=1)
    best = int(np.argmax(scores))
    if scores[best] > 0:
        w, strength, recommended = weights[best], float(STRENGTHS[best]), values[best]
    else:
        w, strength, recommended = prior, float("inf"), prior_values
    gains = {name: _gain(recommended, v) for name, v in base_values.items()}
    optimum_gains = {name: _gain(optimum_values, v) for name, v in base_values.items()}
    message = _message(prior_name, strength, gains, optimum_gains, len(prior_values), cfg.quantile)
    return Decision(w, np.asarray(optimum), prior, prior_name, strength, len(prior_values), families, gains, optimum_gains, message)


def _message(prior_name: str, strength: float, gains, optimum_gains, num_laws: int, quantile: float) -> str:
    """One line: what the recommendation is and how sure."""
    g = gains.get("uniform")
    o = optimum_gains["uniform"]
    if num_laws < 2:
        return "no plausible laws beyond the point fit (too few runs): the recommendation is the law's optimum, its uncertainty unknown"
    if not np.isfinite(strength):
        return (f"the runs cannot tell any mixture from {prior_name}: no mixture gains over it at the {quantile:.0%} quantile of"
                f" {num_laws} plausible laws, so the recommendation is {prior_name} (the law's optimum would gain"
                f" {o['mean']:+.2e} nats over uniform, 90% [{o['low']:+.2e}, {o['high']:+.2e}], better in {o['p_better']:.0%});"
                " the proposed runs would settle it")
    return (f"recommendation (pulled toward {prior_name}, strength {strength:.2g}): gain over uniform {g['mean']:+.2e} nats"
            f" ({g['relative']:+.2%}), 90% [{g['low']:+.2e}, {g['high']:+.2e}], better in {g['p_better']:.0%} of {num_laws} plausible laws")


def propose_runs(fit: Fit, budget: float, constraints: Constraints, count: int, key: jax.Array) -> np.ndarray:
    """``count`` mixtures (count, k) whose runs would most change the recommendation at
    ``budget``: the optima there of plausible laws drawn at random (Thompson sampling),
    distinct ones first; train them at the base run's budget (cheap; the law carries the
    budget). Empty with a single plausible law.

    Raises:
      ValueError: the constraints are infeasible at ``budget``.
    """
    from mixjax.mixing.analysis import solve_samples

    laws, _ = plausible_laws(fit)
    num = int(np.asarray(laws.beta).shape[0])
    if count <= 0 or num < 2:
        return np.zeros((0, len(fit.domains)))
    importance = np.asarray(constraints.importance, np.float64) * fit.has_law
    optima = solve_samples(laws, budget, constraints._replace(importance=importance))
    order = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()).permutation(len(optima))
    picked: list[np.ndarray] = []
    for i in order:  # distinct first (half-L1 > 0.02 from every picked one), then any
        if all(0.5 * np.abs(optima[i] - p).sum() > 0.02 for p in picked):
            picked.append(optima[i])
        if len(picked) == count:
            break
    for i in order:
        if len(picked) == count:
            break
        picked.append(optima[i])
    return np.stack(picked)
