"""The SFT scaling law with effective data transferred (Li, Liu & Xing 2025, arXiv 2508.11953;
README, "The method, as implemented").

    L_i(w, N) = c_i * (w_i N + gamma_i ((1 - w_i) N)^alpha_i)^(-beta_i) + e_i

and its transfer-matrix extension (:class:`TransferLawParams`), in which every other
domain transfers with its own weight ``t_ij >= 0`` (each row's off-diagonal mean is 1),
aggregated with constant elasticity of substitution ``rho_i`` in (0, 1]:

    M_i = (sum_{j != i} t_ij (w_j N)^rho_i)^(1 / rho_i)
    L_i(w, N) = c_i * (w_i N + gamma_i M_i^alpha_i)^(-beta_i) + e_i

With ``rho_i = 1`` the transferred data is a weighted sum of the other domains' tokens;
``rho_i < 1`` makes sources complements (a mix of other domains transfers more than the
same tokens from one). It is the paper's law (arXiv 2508.11953, Sec. 3) when every
``t_ij = 1`` and ``rho_i = 1`` and, like it, keeps the budget N as a variable (``M_i`` is
homogeneous of degree 1 in the tokens, so it extrapolates across budgets). Each ``L_i``
stays convex in ``w``: ``M_i`` is concave for ``rho <= 1``, so the effective data is
concave and ``(.)^(-beta)`` convex decreasing.

Every function here is pure and works on any float dtype; fitting calls them under
float64. Parameters are arrays of shape (k,), one entry per domain, so the functions
broadcast and vmap over domains, budgets and parameter samples.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.cache import small_program_jit

Array = jax.Array


# A law that predicts loss 0 at any mixture (c = e = 0): the entry of a domain trained but
# never measured, so it adds nothing to the objective and still transfers its tokens.
NO_LAW = {"beta": 1.0, "c": 0.0, "gamma": 1.0, "alpha": 0.5, "e": 0.0}


class LawParams(NamedTuple):
    """Per-domain scaling-law parameters, each of shape (k,).

    Token counts (``w N``, ``M``) are in the units the parameters were fitted in.
    """

    beta: Array
    c: Array
    gamma: Array
    alpha: Array
    e: Array

    @property
    def num_domains(self) -> int:
        return int(jnp.shape(self.beta)[-1])


class TransferLawParams(NamedTuple):
    """The paper's per-domain parameters (each (k,)) plus a transfer matrix ``transfer`` (k, k).

    ``transfer[i, j]`` (j != i) is how much a token of domain j counts towards domain i's
    transferred data; the diagonal is ignored (set to 0). A domain with ``c == 0`` has no
    law (its loss was never measured); it still transfers tokens to the others.
    """

    beta: Array
    c: Array
    gamma: Array
    alpha: Array
    e: Array
    transfer: Array
    rho: Array  # (k,), in (0, 1]

    @property
    def num_domains(self) -> int:
        return int(jnp.shape(self.beta)[-1])

    @classmethod
    def from_paper(cls, params: LawParams) -> "TransferLawParams":
        """The paper's law as a transfer law (every off-diagonal ``t_ij = 1``, ``rho = 1``)."""
        k = params.beta.shape[-1]
        dtype = jnp.result_type(params.beta)
        ones = jnp.ones((k, k)) - jnp.eye(k)
        return cls(*params, transfer=jnp.asarray(ones, dtype), rho=jnp.ones(k, dtype))


AnyLawParams = LawParams | TransferLawParams


def has_transfer(params: AnyLawParams) -> bool:
    """True for :class:`TransferLawParams` (a Python-level, trace-time dispatch)."""
    return isinstance(params, TransferLawParams)


def safe_power(base: Array, exponent: Array) -> Array:
    """``base ** exponent`` for ``base >= 0`` with finite gradients at ``base == 0``."""
    positive = base > 0
    safe_base = jnp.where(positive, base, 1.0)
    return jnp.where(positive, safe_base**exponent, 0.0)


def transferred_data(params: AnyLawParams, other_tokens: Array) -> Array:
    """Effective data transferred from the other domains: ``gamma * M^alpha``."""
    return params.gamma * safe_power(other_tokens, params.alpha)


def domain_loss(params: AnyLawParams, in_domain_tokens: Array, other_tokens: Array) -> Array:
    """Validation loss of each domain given its own and the other domains' tokens."""
    effective = in_domain_tokens + transferred_data(params, other_tokens)
    return params.c * effective ** (-params.beta) + params.e


def other_tokens(params: AnyLawParams, tokens: Array) -> Array:
    """Other-domain tokens each domain sees: ``(1 - w_i) N`` for the paper's law,
    ``(sum_{j != i} t_ij (w_j N)^rho_i)^(1/rho_i)`` for the transfer law.
    ``tokens``: (..., k) -> (..., k)."""
    if not has_transfer(params):
        return jnp.sum(tokens, axis=-1, keepdims=True) - tokens
    k = params.transfer.shape[-1]
    off = params.transfer * (1.0 - jnp.eye(k, dtype=params.transfer.dtype))
    rho = params.rho[..., :, None]  # (k_i, 1)
    powered = safe_power(tokens[..., None, :], rho)  # (..., k_i, k_j)
    return safe_power(jnp.sum(powered * off, axis=-1), 1.0 / params.rho)


def token_losses(params: AnyLawParams, tokens: Array) -> Array:
    """Validation losses of runs with per-column ``tokens`` (..., P) (any mix; a target's column is 0)."""
    return domain_loss(params, tokens, other_tokens(params, tokens))


def mixture_losses(params: AnyLawParams, weights: Array, budget: Array | float) -> Array:
    """Validation losses (..., P) of the mixture ``weights`` (..., k) at token budget
    ``budget``: one per law output, the k domains then any targets (laws of entries past
    the k-th, whose own tokens are 0: no mixture trains on a target)."""
    targets = params.beta.shape[-1] - weights.shape[-1]
    shape = (*weights.shape[:-1], targets)
    pad = lambda a, fill: jnp.concatenate([a, jnp.broadcast_to(jnp.asarray(fill, a.dtype)[..., None], shape)], axis=-1) if targets else a
    own = pad(weights * budget, 0.0)  # a target's own tokens: none
    if has_transfer(params):
        return token_losses(params, own)
    # The paper's M_i = (1 - w_i) N (separable in w); a target sees every token, N.
    return domain_loss(params, own, pad((1.0 - weights) * budget, budget))


def total_loss(
    weights: Array,
    params: AnyLawParams,
    budget: Array | float,
    importance: Array | None = None,
) -> Array:
    """The objective the solver minimises: ``sum_i s_i L_i(w, N)`` over every law output
    (``importance``: the domains', then the targets'; entries it leaves out, and every
    target when it is None, weigh 0)."""
    losses = mixture_losses(params, weights, budget)
    k, outputs = weights.shape[-1], losses.shape[-1]
    if importance is None:
        importance = jnp.concatenate([jnp.ones(k, losses.dtype), jnp.zeros(outputs - k, losses.dtype)])
    importance = jnp.asarray(importance, losses.dtype)
    if importance.shape[-1] < outputs:  # a (k,) importance: the targets weigh 0
        importance = jnp.concatenate([importance, jnp.zeros((*importance.shape[:-1], outputs - importance.shape[-1]), losses.dtype)], axis=-1)
    return jnp.sum(importance * losses, axis=-1)


def objective_value(params: AnyLawParams, weights, budget, importance) -> float:
    """``sum_i s_i L_i(w, N)`` (nats) in float64, as a Python float (:func:`evaluate`)."""
    return float(evaluate(total_loss, weights, params, budget, importance))


def rescale_units(params: AnyLawParams, scale: Array | float) -> AnyLawParams:
    """Express parameters fitted on tokens ``t / scale`` in the units of ``t``.

    With x' = x / scale: c (x' + g M'^a)^-b = c scale^b (x + g scale^(1-a) M^a)^-b.
    """
    return params._replace(
        c=params.c * scale**params.beta,
        gamma=params.gamma * scale ** (1.0 - params.alpha),
    )


def evaluate(fn, *args) -> np.ndarray:
    """``fn(*args)`` for a function of this module, in float64, as a numpy array.

    For reports, diagnostics and predictions outside jitted code: one small compiled
    program per function and argument shapes, where calling the jnp functions eagerly
    would compile every operation separately (about 25 ms each on a CPU, paid on a
    first call). Array arguments and parameters become float64; ``None`` stays None.
    """
    with jax.enable_x64(True):
        cast = lambda a: np.asarray(a, np.float64)
        return np.asarray(_compiled(fn)(*jax.tree.map(cast, args)))


@functools.cache
def _compiled(fn):
    return small_program_jit(fn)
