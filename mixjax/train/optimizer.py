"""AdamW with linear warmup + cosine decay whose length is a runtime input, gradient
clipping, and weight decay masked off norms, biases and embeddings.

The learning rate is not part of the optax chain: ``make_optimizer`` returns the update
*direction* (clip -> Adam -> decoupled decay) and the train step scales it by
``-learning_rate(cfg, step, total_steps)``, with ``total_steps`` a traced scalar. So one
compiled step serves runs of any length (adamw = scale_by_adam, add_decayed_weights,
scale_by_learning_rate; the same maths).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1  # final LR as a fraction of the peak
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    grad_accum: int = 1
    # Decay only matmul kernels (the usual LLM recipe); True decays every parameter.
    decay_norms_and_embeddings: bool = False


def learning_rate(cfg: OptimizerConfig, step: jax.Array | int, total_steps: jax.Array | int) -> jax.Array:
    """Linear warmup from 0 to the peak over ``ceil(warmup_ratio * total_steps)`` updates,
    then cosine decay to ``min_lr_ratio * peak`` at ``total_steps``; jnp, so both inputs may
    be traced. ``warmup_ratio=0`` means no warmup: the first update already uses the peak."""
    step = jnp.asarray(step, jnp.float32)
    total = jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    warmup = jnp.ceil(cfg.warmup_ratio * total)
    warm = peak * step / jnp.maximum(warmup, 1.0)
    frac = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    cosine = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(step < warmup, warm, cosine)


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> Callable[[Any], jax.Array]:
    """``learning_rate`` with a fixed length, as an optax-style schedule (for plots, tests)."""
    return lambda step: learning_rate(cfg, step, total_steps)


def _is_kernel(path) -> bool:
    return any(getattr(k, "key", None) == "kernel" for k in path)


def decay_mask(params: Any) -> Any:
    """True on matmul kernels; False on norms' scales, biases and embeddings (boxed or not)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_kernel(path), params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """The update direction; the step multiplies it by ``-learning_rate(...)``."""
    mask = None if cfg.decay_norms_and_embeddings else decay_mask
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.add_decayed_weights(cfg.weight_decay, mask) if cfg.weight_decay else optax.identity(),
    )


def steps_for_budget(tokens: int, epochs: float, batch_size: int, seq_len: int, packing_efficiency: float = 1.0) -> int:
    """Optimizer steps to see ``tokens`` (trained positions, i.e. sum of num_tokens - 1 per
    example) ``epochs`` times in packed batches of batch_size x seq_len (batch_size counts
    sequences per optimizer step, micro-batches included).

    Floor, and packing efficiency 1.0 by default: a packed batch holds at most B*T tokens,
    so the data always supplies at least this many batches (never a DataExhaustedError).
    The paper's own settings (200 / 400 / 2,500 steps) are set with ``max_steps``.
    """
    return max(1, math.floor(epochs * tokens / (batch_size * seq_len * packing_efficiency)))
