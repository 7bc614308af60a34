"""How the pipeline trains a run: its TrainConfig, its step budget, the one Trainer that a
stage's runs share, and the run errors it records and moves past."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
from flax import linen as nn

from mixjax.data.domain import Example
from mixjax.data.pipeline import trained_positions
from mixjax.train.checkpoint import RunCheckpoints
from mixjax.train.loop import Trainer, TrainConfig
from mixjax.train.optimizer import steps_for_budget

# Errors of one run that the pipeline records and moves past: NonFiniteLossError and
# DataExhaustedError (both RuntimeErrors), and runtime failures of a run such as an OOM.
RUN_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, FloatingPointError)


def steps_for_run(examples: Sequence[Example], train_config: TrainConfig) -> int:
    """Optimizer steps of a run: its trained positions x epochs in global batches (floor: never
    more batches than the data supplies), capped at ``train.max_steps``."""
    tc = train_config
    steps = steps_for_budget(trained_positions(examples, tc.seq_len), tc.epochs, tc.batch_size * tc.optimizer.grad_accum, tc.seq_len)
    return min(steps, tc.max_steps) if tc.max_steps else steps


def run_train_config(base: TrainConfig, *, max_steps: int, eval_every: int, seed: int, profile: bool) -> TrainConfig:
    """The TrainConfig of one run: its exact step count, eval cadence and seed. Full
    checkpoints keep ``base``'s timer / step cadence: not one per evaluation (a full 8B
    state is ~90 GiB; the pipeline evaluates ``evals_per_run`` times per run)."""
    return dataclasses.replace(base, max_steps=max_steps, eval_every=eval_every, seed=seed, profile=profile)


def best_params(trainer: Trainer, run_dir: str | Path):
    """The unboxed float32 parameters of a finished run's best checkpoint (host numpy)."""
    checkpoints = RunCheckpoints(Path(run_dir) / "checkpoints", async_save=False)
    try:
        restored = checkpoints.restore_best(trainer.abstract_state.params)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{run_dir}: no best checkpoint")
    return jax.device_get(nn.unbox(restored[0]))
