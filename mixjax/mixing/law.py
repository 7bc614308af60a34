"""The SFT scaling law with effective data transferred (Li, Liu & Xing 2025, arXiv 2508.11953;
README, "The method, as implemented").

    L_i(w, N) = c_i * (w_i N + gamma_i ((1 - w_i) N)^alpha_i)^(-beta_i) + e_i

Every function here is pure and works on any float dtype; fitting calls them under
float64. Parameters are arrays of shape (k,), one entry per domain, so the functions
broadcast and vmap over domains, budgets and parameter samples.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


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


def safe_power(base: Array, exponent: Array) -> Array:
    """``base ** exponent`` for ``base >= 0`` with finite gradients at ``base == 0``."""
    positive = base > 0
    safe_base = jnp.where(positive, base, 1.0)
    return jnp.where(positive, safe_base**exponent, 0.0)


def transferred_data(params: LawParams, other_tokens: Array) -> Array:
    """Effective data transferred from the other domains: ``gamma * M^alpha``."""
    return params.gamma * safe_power(other_tokens, params.alpha)


def domain_loss(params: LawParams, in_domain_tokens: Array, other_tokens: Array) -> Array:
    """Validation loss of each domain given its own and the other domains' tokens."""
    effective = in_domain_tokens + transferred_data(params, other_tokens)
    return params.c * effective ** (-params.beta) + params.e


def mixture_losses(params: LawParams, weights: Array, budget: Array | float) -> Array:
    """Per-domain validation losses of the mixture ``weights`` at token budget ``budget``."""
    return domain_loss(params, weights * budget, (1.0 - weights) * budget)


def total_loss(
    weights: Array,
    params: LawParams,
    budget: Array | float,
    importance: Array | None = None,
) -> Array:
    """The objective the solver minimises: ``sum_i s_i L_i(w, N)``."""
    losses = mixture_losses(params, weights, budget)
    if importance is None:
        return jnp.sum(losses, axis=-1)
    return jnp.sum(importance * losses, axis=-1)


def rescale_units(params: LawParams, scale: Array | float) -> LawParams:
    """Express parameters fitted on tokens ``t / scale`` in the units of ``t``.

    With x' = x / scale: c (x' + g M'^a)^-b = c scale^b (x + g scale^(1-a) M^a)^-b.
    """
    return params._replace(
        c=params.c * scale**params.beta,
        gamma=params.gamma * scale ** (1.0 - params.alpha),
    )
