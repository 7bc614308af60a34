"""Functional training and evaluation steps: ``train_step(state, batch) -> (state, metrics)``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

from mixjax.model.llama import Decoder, ModelConfig

Batch = dict[str, jax.Array]


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # boxed (nn.LogicallyPartitioned) float32 params
    opt_state: Any


def init_state(config: ModelConfig, tx: optax.GradientTransformation, key: jax.Array, seq_len: int = 8) -> TrainState:
    dummy = jnp.ones((1, seq_len), jnp.int32)
    params = Decoder(config).init(key, dummy, dummy, dummy)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def token_losses(config: ModelConfig, params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted token cross-entropies, sum of weights) for a packed batch."""
    logits = Decoder(config).apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return jnp.sum(ce * batch["weights"]), jnp.sum(batch["weights"])


def train_step(config: ModelConfig, tx: optax.GradientTransformation, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    """One optimizer (micro-)step on the token-weighted mean loss of response tokens."""

    def loss_fn(params):
        total, weight = token_losses(config, params, batch)
        return total / jnp.maximum(weight, 1.0), weight

    (loss, weight), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "tokens": weight, "grad_norm": optax.global_norm(nn.unbox(grads))}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(config: ModelConfig, params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    return token_losses(config, params, batch)
