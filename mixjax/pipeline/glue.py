"""The pipeline's one point of contact with the trainer and the mixing package's
feasibility check.

Every call the stages make into those parts goes through a function here, so a change of
their API is a change of this file only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixjax.model.llama import ModelConfig
from mixjax.train.loop import TrainConfig, train

TrainFn = Callable[..., object]  # the signature of mixjax.train.loop.train
DEFAULT_TRAIN: TrainFn = train


# ------------------------------------------------------------------ training


def run_train_config(base: TrainConfig, *, max_steps: int, eval_every: int, seed: int, profile: bool) -> TrainConfig:
    """The TrainConfig of one run: its exact step count, eval/checkpoint cadence and seed."""
    cfg = dataclasses.replace(base, max_steps=max_steps, eval_every=eval_every, checkpoint_every=eval_every, seed=seed)
    if hasattr(cfg, "profile"):  # TrainConfig.profile arrives with the train branch
        cfg = dataclasses.replace(cfg, profile=profile)
    return cfg


def make_trainer(model: ModelConfig, cfg: TrainConfig):
    """One Trainer (one compile) shared by every run of a stage. Today's Trainer bakes the
    schedule length into its compiled step, so each run builds its own: None."""
    return None


def call_train(train_fn: TrainFn, model: ModelConfig, cfg: TrainConfig, examples, val_sets, workdir, *, init_params, progress, log, trainer=None):
    kwargs = {"trainer": trainer} if trainer is not None else {}
    return train_fn(model, cfg, examples, val_sets, workdir, init_params=init_params, progress=progress, log=log, **kwargs)


# Errors of one run that the pipeline records and moves past (NonFiniteLossError and
# DataExhaustedError are RuntimeErrors).
RUN_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, FloatingPointError)


def best_params(model: ModelConfig, cfg: TrainConfig, run_dir: str | Path):
    """The unboxed float32 parameters of a finished run's best checkpoint (host numpy)."""
    import jax
    from flax import linen as nn

    from mixjax.train.checkpoint import RunCheckpoints
    from mixjax.train.loop import Trainer

    trainer = Trainer(model, cfg, cfg.max_steps or 1)
    checkpoints = RunCheckpoints(Path(run_dir) / "checkpoints")
    try:
        restored = checkpoints.restore_best(trainer.abstract_state)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{run_dir}: no best checkpoint")
    return jax.device_get(nn.unbox(restored[0].params))


# ------------------------------------------------------------------ mixing


def feasible_mask(weights: np.ndarray, budget: float, constraints) -> np.ndarray:
    """Mixtures (rows of ``weights``) within the bounds whose shares every domain can supply
    (w_i N <= D_i). Stand-in for mixjax.mixing.baselines.feasible_mask (same signature)."""
    w = np.atleast_2d(np.asarray(weights, np.float64))
    tol = 1e-9
    lower, upper = np.asarray(constraints.lower), np.asarray(constraints.upper)
    in_bounds = np.all((w >= lower - tol) & (w <= upper + tol), axis=1)
    supplied = np.all(w * budget <= np.asarray(constraints.available, np.float64) * (1 + tol), axis=1)
    return in_bounds & supplied
