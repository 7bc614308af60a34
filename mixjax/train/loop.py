"""The SFT training loop of one run: sharded jit steps, per-domain evaluation, best
checkpoint by total validation loss, resume from the latest checkpoint.

The run's result (ALGORITHM.md: "keep the checkpoint with the lowest validation loss,
record the per-domain validation loss of every domain") is the per-domain losses at the
evaluation with the lowest total (sum over domains) validation loss.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import linen as nn
from tqdm.auto import tqdm

from mixjax.data.domain import Example
from mixjax.data.pipeline import eval_batches, training_dataset
from mixjax.io import write_json_atomic
from mixjax.model.llama import ModelConfig
from mixjax.train.checkpoint import RunCheckpoints, abstract_like
from mixjax.train.optimizer import OptimizerConfig, make_optimizer, steps_for_budget
from mixjax.train.sharding import LOGICAL_RULES, batch_sharding, make_mesh
from mixjax.train.step import TrainState, eval_step, init_state, train_step


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seq_len: int = 256
    batch_size: int = 16  # global, in sequences, per micro-step
    epochs: float = 3.0
    max_steps: int | None = None  # optimizer steps; default: from tokens, epochs, batch
    eval_every: int = 50
    checkpoint_every: int = 50
    seed: int = 0
    mesh_shape: tuple[int, int, int] | None = None
    optimizer: OptimizerConfig = OptimizerConfig()


@dataclasses.dataclass(frozen=True)
class TrainResult:
    best_step: int
    best_losses: dict[str, float]
    final_step: int
    history: list[dict]

    @property
    def best_total(self) -> float:
        return sum(self.best_losses.values())


class Trainer:
    """Compiled steps and sharded state for one model/optimizer/mesh."""

    def __init__(self, model: ModelConfig, cfg: TrainConfig, total_steps: int, devices=None) -> None:
        self.model, self.cfg = model, cfg
        self.mesh = make_mesh(cfg.mesh_shape, devices)
        self.tx = make_optimizer(cfg.optimizer, total_steps)
        init = functools.partial(init_state, model, self.tx)
        with self.mesh, nn.logical_axis_rules(LOGICAL_RULES):
            abstract = jax.eval_shape(init, jax.random.key(0))
            self.state_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), self.mesh, LOGICAL_RULES)
        self.abstract_state = abstract_like(abstract, self.state_shardings)
        self._init = jax.jit(init, out_shardings=self.state_shardings)
        data = batch_sharding(self.mesh)
        self.batch_shardings = {k: data for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
        self._train = jax.jit(
            functools.partial(train_step, model, self.tx),
            in_shardings=(self.state_shardings, self.batch_shardings),
            out_shardings=(self.state_shardings, None),
            donate_argnums=0,
        )
        self._eval = jax.jit(
            functools.partial(eval_step, model),
            in_shardings=(self.state_shardings.params, self.batch_shardings),
        )

    def init(self, key: jax.Array) -> TrainState:
        with self.mesh, nn.logical_axis_rules(LOGICAL_RULES):
            return self._init(key)

    def with_params(self, state: TrainState, params) -> TrainState:
        """Replace the (unboxed) parameter values, e.g. with a loaded checkpoint; resets the optimizer."""
        boxed = jax.tree.map(
            lambda box, value: box.replace_boxed(value) if isinstance(box, nn.LogicallyPartitioned) else value,
            state.params, params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
        )
        with self.mesh:
            boxed = jax.device_put(boxed, self.state_shardings.params)
            return state.replace(params=boxed, opt_state=jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(boxed))

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(self.batch_shardings[k], v) for k, v in batch.items()}

    def step(self, state: TrainState, batch: dict[str, np.ndarray]) -> tuple[TrainState, dict]:
        with self.mesh, nn.logical_axis_rules(LOGICAL_RULES):
            return self._train(state, self.put(batch))

    def evaluate(self, state: TrainState, val_batches: Mapping[str, list[dict]]) -> dict[str, float]:
        losses = {}
        with self.mesh, nn.logical_axis_rules(LOGICAL_RULES):
            for name, batches in val_batches.items():
                total = weight = 0.0
                for batch in batches:
                    t, w = self._eval(state.params, self.put(batch))
                    total, weight = total + float(t), weight + float(w)
                losses[name] = total / max(weight, 1.0)
        return losses


def train(
    model: ModelConfig,
    cfg: TrainConfig,
    train_examples: Sequence[Example],
    val_sets: Mapping[str, Sequence[Example]],
    workdir: str | Path,
    *,
    init_params=None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
    devices=None,
) -> TrainResult:
    """Train one run in ``workdir``; resumes from ``workdir/checkpoints/latest`` if present.

    ``stop_after`` stops (as a crash would) after that many optimizer steps: for tests.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    accum = cfg.optimizer.grad_accum
    tokens = sum(e.num_tokens for e in train_examples)
    total_steps = cfg.max_steps or steps_for_budget(tokens, cfg.epochs, cfg.batch_size * accum, cfg.seq_len)
    trainer = Trainer(model, cfg, total_steps, devices)
    dataset = training_dataset(
        train_examples, seq_len=cfg.seq_len, batch_size=cfg.batch_size, epochs=max(1, math.ceil(cfg.epochs)),
        seed=cfg.seed, process_index=jax.process_index(), process_count=jax.process_count(),
    )
    data = iter(dataset)
    val_batches = {n: eval_batches(ex, seq_len=cfg.seq_len, batch_size=cfg.batch_size) for n, ex in val_sets.items()}
    checkpoints = RunCheckpoints(workdir / "checkpoints")
    history: list[dict] = []
    best: dict = {"step": -1, "losses": {}, "total": math.inf}

    restored = checkpoints.restore_latest(trainer.abstract_state)
    if restored is not None:
        state, meta = restored
        data.set_state(meta["data_state"])
        history, best = meta["history"], meta["best"]
        log(f"resumed {workdir.name} at step {int(state.step) // accum}")
    else:
        state = trainer.init(jax.random.key(cfg.seed))
        if init_params is not None:
            state = trainer.with_params(state, init_params)

    def evaluate_and_save(step: int, state: TrainState) -> None:
        nonlocal best
        losses = trainer.evaluate(state, val_batches)
        total = sum(losses.values())
        history.append({"step": step, "total": total, "losses": losses})
        improved = total < best["total"]
        if improved:
            best = {"step": step, "losses": losses, "total": total}
            checkpoints.save_best(step, state, losses)
        log(f"[{workdir.name}] step {step}/{total_steps} val total {total:.4f} "
            + " ".join(f"{n}={v:.4f}" for n, v in losses.items()) + (" *best" if improved else ""))

    step = int(state.step) // accum
    bar = tqdm(total=total_steps, initial=step, desc=workdir.name, disable=not progress, leave=False)
    started, seen = time.perf_counter(), 0
    metrics = {}
    while step < total_steps:
        try:
            for _ in range(accum):
                batch = next(data)
                state, metrics = trainer.step(state, batch)
                seen += int(np.sum(batch["segment_ids"] > 0))
        except StopIteration:
            log(f"[{workdir.name}] data exhausted at step {step} (of {total_steps})")
            break
        step += 1
        bar.update(1)
        if step % cfg.eval_every == 0 or step == total_steps:
            evaluate_and_save(step, state)
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            checkpoints.save_latest(step * accum, state, {"data_state": data.get_state(), "history": history, "best": best})
        if stop_after is not None and step >= stop_after:
            bar.close()
            checkpoints.close()
            raise KeyboardInterrupt(f"stopped after {step} steps (stop_after)")
    bar.close()
    if not history or history[-1]["step"] != step:
        evaluate_and_save(step, state)
    elapsed = time.perf_counter() - started
    if metrics:
        log(f"[{workdir.name}] done: {step} steps, {seen / max(elapsed, 1e-9):,.0f} tokens/s, last train loss {float(metrics['loss']):.4f}")
    checkpoints.close()
    result = TrainResult(best_step=best["step"], best_losses=best["losses"], final_step=step, history=history)
    write_json_atomic(workdir / "result.json", dataclasses.asdict(result))
    return result
