"""optax AdamW with linear warmup + cosine decay, gradient clipping and accumulation."""

from __future__ import annotations

import dataclasses
import math

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


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine decay to ``min_lr_ratio * peak``.

    ``warmup_ratio=0`` means no warmup: the first step already uses the peak rate.
    """
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    if warmup == 0:
        return optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps, 1), alpha=cfg.min_lr_ratio)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """``total_steps`` counts optimizer updates (micro-batches / grad_accum)."""
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay),
    )
    return optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum) if cfg.grad_accum > 1 else tx


def steps_for_budget(tokens: int, epochs: float, batch_size: int, seq_len: int, packing_efficiency: float = 0.97) -> int:
    """Optimizer steps to see ``tokens`` ``epochs`` times in packed batches of batch_size x seq_len.

    The paper's own settings (200 / 400 / 2,500 steps at 5M / 20M / 200M tokens) are set
    explicitly in its configs with ``max_steps``.
    """
    return max(1, math.ceil(epochs * tokens / (batch_size * seq_len * packing_efficiency)))
