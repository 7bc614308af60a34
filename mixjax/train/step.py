"""Functional training and evaluation steps: ``train_step(state, batch) -> (state, metrics)``.

A train batch holds ``grad_accum`` micro-batches stacked on a leading axis, arrays
(A, B, T); the step scans over them, summing token-weighted losses and their gradients,
and divides by the summed weights once: the update equals the big batch's, whatever
number of trained tokens each micro-batch holds.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import PartitionSpec as P

from mixjax.model.llama import Decoder, ModelConfig, head_logits
from mixjax.train.optimizer import OptimizerConfig, learning_rate
from mixjax.train.sharding import axis_size, constrain, current_mesh

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


def compute_head(config: ModelConfig, params) -> jax.Array:
    """The output projection (dim, vocab) for the chunked loss, cast to the compute dtype
    ON ITS SHARDS (placed as ``embed``, ``vocab`` say): FSDP then gathers it in bf16, half
    the bytes of the float32 master copy, and reduce-scatters its gradient in bf16 (summed
    over the chunks in float32 first). The logits do not change: :func:`head_logits` casts
    its operands to the compute dtype anyway. The layers' weights need no such cast: XLA's
    SPMD partitioner already gathers them after flax's cast to bf16 (benchmarks/collectives.py)."""
    head = _head(config, params)
    dtype = jnp.dtype(config.dtype)
    return head if head.dtype == dtype else constrain(head.astype(dtype), ("embed", "vocab"))


def _chunk_cross_entropy(h: jax.Array, head: jax.Array, y: jax.Array, dtype, vocab_axis) -> jax.Array:
    """Cross-entropies (b, c) of one chunk: hidden (b, c, D), head (D, V_local) float32,
    targets (b, c). The matmul takes ``dtype`` operands (bf16 on accelerators) and
    accumulates in float32; with ``vocab_axis`` the head holds that mesh axis's slice of
    the vocabulary and the softmax normaliser and target logit are summed over it."""
    logits = head_logits(h, head, dtype)
    if vocab_axis is None:
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)
    peak = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=-1)), vocab_axis)
    log_normaliser = jnp.log(jax.lax.psum(jnp.sum(jnp.exp(logits - peak[..., None]), axis=-1), vocab_axis)) + peak
    v_local = head.shape[1]
    local = y - jax.lax.axis_index(vocab_axis) * v_local
    mine = (local >= 0) & (local < v_local)
    picked = jnp.take_along_axis(logits, jnp.clip(local, 0, v_local - 1)[..., None], axis=-1)[..., 0]
    return log_normaliser - jax.lax.psum(jnp.where(mine, picked, 0.0), vocab_axis)


def _local_chunked_cross_entropy(hidden, head, targets, chunk: int, dtype, embed_axis=None, vocab_axis=None, row_axes=()) -> jax.Array:
    b, t, d = hidden.shape
    if embed_axis is not None:
        # The FSDP-sharded head (compute dtype: compute_params), gathered ONCE for all
        # chunks (its gradient: one reduce-scatter).
        head = jax.lax.all_gather(head, embed_axis, axis=0, tiled=True)
    # Float32 from here: the chunks' head gradients are summed in float32 (head_logits
    # casts its operands to ``dtype`` anyway).
    head = head.astype(jnp.float32)
    # The head meets rows that differ per device: mark it device-varying HERE, outside the
    # chunk loop, so the gradient's sum over the row axes (the transpose) runs once,
    # after the loop, instead of once per chunk inside it.
    unvaried = tuple(a for a in row_axes if a not in jax.typeof(head).mat.varying)
    if unvaried:
        head = jax.lax.pcast(head, unvaried, to="varying")
    pad = (-t) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    hs = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)
    ts = targets.reshape(b, n, chunk).swapaxes(0, 1)
    one = jax.checkpoint(lambda h, y: _chunk_cross_entropy(h, head, y, dtype, vocab_axis))
    ce = jax.lax.map(lambda a: one(*a), (hs, ts))  # (n, b, chunk)
    return ce.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]


def chunked_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array, chunk: int, dtype=jnp.float32) -> jax.Array:
    """Token cross-entropies (B, T) float32 from hidden states (B, T, D) and head (D, V),
    ``chunk`` positions at a time: only a (B, chunk, V) float32 logits block exists at once,
    forward and backward (each chunk's logits are recomputed in the backward pass).

    Matmuls take ``dtype`` operands (the model's compute dtype: bf16 runs at the tensor
    cores' bf16 rate, float32 as TF32 would run at half of it) and accumulate in float32
    (``preferred_element_type``). Under a device mesh the loss runs per device in
    ``shard_map``: rows split over the batch axes, the head's ``embed`` dim gathered once
    over its FSDP axis before the chunk loop (so its gradient is summed locally over the
    chunks and reduce-scattered once), its vocabulary split over the tensor axis
    (vocabulary-parallel softmax). Without it XLA gathers the head and all-reduces its
    gradient inside the loop, once per chunk."""
    mesh = current_mesh()
    if mesh is None or mesh.size == 1:
        return _local_chunked_cross_entropy(hidden, head, targets, chunk, dtype)
    used = lambda axes: None if axis_size(mesh, axes) == 1 else axes  # no collectives over 1 device
    (batch,) = nn.logical_to_mesh_axes(("batch",))
    embed, vocab = (used(a) for a in nn.logical_to_mesh_axes(("embed", "vocab")))  # the head param's placement
    if hidden.shape[0] % axis_size(mesh, batch):
        batch = None
    if head.shape[0] % axis_size(mesh, embed):
        embed = None
    if head.shape[1] % axis_size(mesh, vocab):
        vocab = None  # a vocabulary that does not split: every tensor device holds all of it
    local = functools.partial(
        _local_chunked_cross_entropy, chunk=chunk, dtype=dtype, embed_axis=embed, vocab_axis=vocab,
        row_axes=(batch,) if isinstance(batch, str) else tuple(batch or ()),
    )
    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(batch, None, None), P(embed, vocab), P(batch, None)), out_specs=P(batch, None),
    )(hidden, head, targets)


def token_cross_entropy(config: ModelConfig, params, batch: Batch, loss_chunk: int = 0) -> jax.Array:
    """Per-token cross-entropy (B, T) float32 of a packed (B, T) batch."""
    decoder = Decoder(config)
    args = (batch["inputs"], batch["positions"], batch["segment_ids"])
    if loss_chunk:
        hidden = decoder.apply({"params": params}, *args, return_hidden=True)
        return chunked_cross_entropy(hidden, compute_head(config, params), batch["targets"], loss_chunk, jnp.dtype(config.dtype))
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
