"""Functional training and evaluation steps: ``train_step(state, batch) -> (state, metrics)``.

A train batch holds ``grad_accum`` micro-batches stacked on a leading axis, arrays
(A, B, T); the step scans over them, summing token-weighted losses and their gradients,
and divides by the summed weights once: the update equals the big batch's, whatever
number of trained tokens each micro-batch holds.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

from mixjax.model.llama import Decoder, ModelConfig
from mixjax.train.optimizer import OptimizerConfig, learning_rate

Batch = dict[str, jax.Array]


@struct.dataclass
class TrainState:
    step: jax.Array  # optimizer updates taken
    total_steps: jax.Array  # the LR schedule's length: a runtime input, not compiled in
    params: Any  # boxed (nn.LogicallyPartitioned) float32 master params
    opt_state: Any


def init_state(config: ModelConfig, tx: optax.GradientTransformation, key: jax.Array, seq_len: int = 8) -> TrainState:
    dummy = jnp.ones((1, seq_len), jnp.int32)
    params = Decoder(config).init(key, dummy, dummy, dummy)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), total_steps=jnp.ones((), jnp.int32), params=params, opt_state=tx.init(params))


def resolve_loss_chunk(config: ModelConfig, loss_chunk: int | None) -> int:
    """Positions per cross-entropy chunk; 0 = full logits. None: chunk only large vocabularies."""
    if loss_chunk is None:
        return 512 if config.vocab_size > 32_768 else 0
    return loss_chunk


def _head(config: ModelConfig, params) -> jax.Array:
    """The output projection as (dim, vocab)."""
    p = nn.unbox(params)
    return p["embed_tokens"]["embedding"].T if config.tie_embeddings else p["lm_head"]["kernel"]


def chunked_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array, chunk: int) -> jax.Array:
    """Token cross-entropies (B, T) float32 from hidden states (B, T, D) and head (D, V),
    ``chunk`` positions at a time: only a (B, chunk, V) float32 logits block exists at once,
    forward and backward (each chunk's logits are recomputed in the backward pass)."""
    b, t, d = hidden.shape
    pad = (-t) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    hs = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)
    ts = targets.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(h: jax.Array, y: jax.Array) -> jax.Array:
        logits = h.astype(jnp.float32) @ head.astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    ce = jax.lax.map(lambda a: one(*a), (hs, ts))  # (n, B, chunk)
    return ce.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]


def token_cross_entropy(config: ModelConfig, params, batch: Batch, loss_chunk: int = 0) -> jax.Array:
    """Per-token cross-entropy (B, T) float32 of a packed (B, T) batch."""
    decoder = Decoder(config)
    args = (batch["inputs"], batch["positions"], batch["segment_ids"])
    if loss_chunk:
        hidden = decoder.apply({"params": params}, *args, return_hidden=True)
        return chunked_cross_entropy(hidden, _head(config, params), batch["targets"], loss_chunk)
    logits = decoder.apply({"params": params}, *args)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])


def token_losses(config: ModelConfig, params, batch: Batch, loss_chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted token cross-entropies, sum of weights) for a packed batch."""
    ce = token_cross_entropy(config, params, batch, loss_chunk)
    return jnp.sum(ce * batch["weights"]), jnp.sum(batch["weights"])


def train_step(
    config: ModelConfig, opt: OptimizerConfig, tx: optax.GradientTransformation, loss_chunk: int, state: TrainState, batch: Batch
) -> tuple[TrainState, dict]:
    """One optimizer update on the token-weighted mean loss over all micro-batches of
    ``batch`` (arrays (A, B, T)): sum of losses / sum of weights."""
    grad_fn = jax.value_and_grad(lambda p, mb: token_losses(config, p, mb, loss_chunk), has_aux=True)

    def micro(carry, mb):
        grads, total, weight = carry
        (t, w), g = grad_fn(state.params, mb)
        return (jax.tree.map(jnp.add, grads, g), total + t, weight + w), None

    if jax.tree.leaves(batch)[0].shape[0] == 1:
        (total, weight), grads = grad_fn(state.params, jax.tree.map(lambda x: x[0], batch))
    else:
        zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grads, total, weight), _ = jax.lax.scan(micro, zeros, batch)
    denom = jnp.maximum(weight, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    direction, opt_state = tx.update(grads, state.opt_state, state.params)
    lr = learning_rate(opt, state.step, state.total_steps)
    params = jax.tree.map(lambda p, u: p - (lr * u).astype(p.dtype), state.params, direction)
    metrics = {"loss": total / denom, "tokens": weight, "grad_norm": optax.global_norm(nn.unbox(grads)), "learning_rate": lr}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(config: ModelConfig, loss_chunk: int, params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Per-row (sum of weighted token losses, sum of weights), each (B,): the host adds rows
    up per validation domain, so all domains share one compiled call per batch."""
    ce = token_cross_entropy(config, params, batch, loss_chunk)
    return jnp.sum(ce * batch["weights"], axis=1), jnp.sum(batch["weights"], axis=1)
