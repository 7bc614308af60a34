"""The SFT training loop of one run: sharded jit steps, per-domain evaluation, best
checkpoint by total validation loss, resume from the latest full checkpoint.

The run's result (ALGORITHM.md: "keep the checkpoint with the lowest validation loss,
record the per-domain validation loss of every domain") is the per-domain losses at the
evaluation with the lowest total (sum over domains) validation loss.

One ``Trainer`` (one compile of the train and eval steps) serves every run of a pipeline
that shares the model, optimizer and mesh: the schedule's length is a runtime input.
``batch_size`` is global: every process builds the same packed stream and puts its own
rows on its devices, so N processes train exactly what one process trains.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from mixjax.config_fields import neutral, result
from mixjax.data.domain import Example
from mixjax.data.pipeline import multi_domain_eval_batches, optimizer_step_batches, trained_positions
from mixjax.io import is_primary_process, write_json_atomic
from mixjax.model.llama import ModelConfig
from mixjax.train.checkpoint import RunCheckpoints, abstract_like
from mixjax.train.metrics import RunMetrics, peak_flops
from mixjax.train.optimizer import OptimizerConfig, make_optimizer, steps_for_budget
from mixjax.train.sharding import LOGICAL_RULES, make_mesh
from mixjax.train.step import TrainState, eval_step, init_state, resolve_loss_chunk, train_step

BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


class NonFiniteLossError(RuntimeError):
    """A train or eval loss (or the gradient norm) of a run was NaN or infinite."""

    def __init__(self, run: str, step: int, what: str, value: float | None = None) -> None:
        self.run, self.step, self.what = run, step, what
        super().__init__(f"run {run!r}: non-finite {what} loss ({value}) at step {step}")


class DataExhaustedError(RuntimeError):
    """The run's data ended before its schedule did."""

    def __init__(self, run: str, step: int, total_steps: int) -> None:
        self.run, self.step, self.total_steps = run, step, total_steps
        super().__init__(
            f"run {run!r}: training data exhausted at step {step} of {total_steps} "
            "(lower max_steps, raise epochs, or give the run more data)"
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One SFT run's training setup. Every field says whether it can change the run's result
    (``result``: in the run's fingerprint) or only its speed, memory, logging or I/O
    (``neutral``: a finished run is reused when only these change); see mixjax.config_fields.

    ``mesh_shape`` is neutral, deliberately: the mesh decides how the same global batch and
    parameters are laid out over devices, not what is computed. Another mesh changes only
    the order of floating-point reductions (partial sums across devices), i.e. rounding:
    measured on 8 CPU devices (benchmarks/mesh_rounding.py, 40 steps, default AdamW eps),
    the validation losses on 2x2x2 and 4x1x2 meshes equal the 1-device ones within 4.5e-8
    relative at every evaluation, while another init seed moves them by 4e-3 to 3.6e-2.
    And ``None`` means "derived from the devices present", so the field's value would not
    even identify the mesh. Moving an experiment to a machine with more devices, or
    resuming a run on another mesh, therefore keeps its finished runs.
    """

    seq_len: int = result(256)
    batch_size: int = result(16)  # GLOBAL, in sequences, per micro-step
    epochs: float = result(3.0)
    max_steps: int | None = result(None)  # optimizer steps; default: steps_for_budget (floor)
    eval_every: int = result(50)  # which checkpoint is the best one depends on it
    checkpoint_every: int = neutral(50, "full checkpoints only serve resuming, which is bit-exact")
    seed: int = result(0)
    mesh_shape: tuple[int, int, int] | None = neutral(None, "device layout: float reduction order only (see the class docstring)")
    optimizer: OptimizerConfig = result(OptimizerConfig())
    profile: bool = neutral(False, "a jax.profiler trace of a few steps into workdir/profile")
    # positions per cross-entropy chunk; 0 = full logits; None = auto
    loss_chunk: int | None = neutral(None, "memory: the same loss summed in chunks (float reduction order only)")
    prefetch: int = neutral(2, "optimizer steps packed ahead by a background thread; the same batches")
    async_checkpoints: bool = neutral(True, "checkpoints written in the background; the same files")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    best_step: int
    best_losses: dict[str, float]
    final_step: int
    history: list[dict]
    trained_tokens: int = 0  # non-padding positions trained, all steps (epochs counted)
    trained_examples_hash: str = ""

    @property
    def best_total(self) -> float:
        return sum(self.best_losses.values())


def examples_hash(examples: Sequence[Example]) -> str:
    """sha256 of the examples' tokens and loss masks, in order."""
    h = hashlib.sha256()
    for e in examples:
        h.update(np.asarray(e.tokens, np.int32).tobytes())
        h.update(np.asarray(e.loss_mask, np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()


def planned_steps(cfg: TrainConfig, examples: Sequence[Example]) -> int:
    """The run's optimizer steps: ``cfg.max_steps``, or the most the data surely supplies for
    ``cfg.epochs`` (floor of epochs x trained positions / (B x T x grad_accum)). The pipeline
    should call this rather than steps_for_budget on raw token counts."""
    if cfg.max_steps:
        return cfg.max_steps
    return steps_for_budget(trained_positions(examples, cfg.seq_len), cfg.epochs, cfg.batch_size * cfg.optimizer.grad_accum, cfg.seq_len)


def _to_global(value, sharding: NamedSharding):
    """Global arrays from host data (an array or a dict of them) that every process holds
    in full; each process transfers only its own shards. One device_put per call."""
    if jax.process_count() == 1:
        return jax.device_put(value, sharding)
    put = lambda v: jax.make_array_from_callback(np.shape(v), sharding, lambda index: np.asarray(v)[index])
    return jax.tree.map(put, value)


class Trainer:
    """Compiled steps and sharded state for one model/optimizer/mesh; any run length."""

    def __init__(self, model: ModelConfig, cfg: TrainConfig, devices=None) -> None:
        self.model, self.cfg = model, cfg
        self.loss_chunk = resolve_loss_chunk(model, cfg.loss_chunk)
        self.mesh = make_mesh(cfg.mesh_shape, devices)
        self.tx = make_optimizer(cfg.optimizer)
        self.traces: collections.Counter[str] = collections.Counter()
        init = functools.partial(init_state, model, self.tx)
        with self.mesh, nn.logical_axis_rules(LOGICAL_RULES):
            abstract = jax.eval_shape(init, jax.random.key(0))
            self.state_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), self.mesh, LOGICAL_RULES)
        self.abstract_state = abstract_like(abstract, self.state_shardings)
        self.replicated = NamedSharding(self.mesh, P())
        rows = ("data", "fsdp")
        self.step_sharding = NamedSharding(self.mesh, P(None, rows, None))  # (accum, B, T)
        self.eval_sharding = NamedSharding(self.mesh, P(rows, None))  # (B, T)
        self._init = jax.jit(init, out_shardings=self.state_shardings)
        self._train = jax.jit(
            self._counted("train", functools.partial(train_step, model, cfg.optimizer, self.tx, self.loss_chunk)),
            in_shardings=(self.state_shardings, {k: self.step_sharding for k in BATCH_KEYS}),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=0,
        )
        self._eval = jax.jit(
            self._counted("eval", functools.partial(eval_step, model, self.loss_chunk)),
            in_shardings=(self.state_shardings.params, {k: self.eval_sharding for k in BATCH_KEYS}),
            out_shardings=self.replicated,
        )

    def _counted(self, name: str, fn: Callable) -> Callable:
        def traced(*args):
            self.traces[name] += 1  # runs once per trace (compile), not per call
            return fn(*args)

        return traced

    def compile_key(self) -> tuple:
        return (self.model, self.cfg.optimizer, self.cfg.mesh_shape, self.loss_chunk)

    def check_compatible(self, model: ModelConfig, cfg: TrainConfig) -> None:
        other = (model, cfg.optimizer, cfg.mesh_shape, resolve_loss_chunk(model, cfg.loss_chunk))
        if other != self.compile_key():
            raise ValueError("this Trainer was built for another model/optimizer/mesh/loss_chunk; build a new one")

    def init(self, key: jax.Array, total_steps: int = 1) -> TrainState:
        with self.mesh, nn.logical_axis_rules(LOGICAL_RULES):
            return self.with_total_steps(self._init(key), total_steps)

    def with_total_steps(self, state: TrainState, total_steps: int) -> TrainState:
        return state.replace(total_steps=_to_global(np.asarray(total_steps, np.int32), self.state_shardings.total_steps))

    def with_params(self, state: TrainState, params) -> TrainState:
        """Replace the (unboxed) parameter values, e.g. with a loaded checkpoint; resets the optimizer."""
        values = jax.tree.map(lambda s, v: _to_global(np.asarray(v), s), self.state_shardings.params, nn.unbox(params))
        boxed = jax.tree.map(
            lambda box, value: box.replace_boxed(value) if isinstance(box, nn.LogicallyPartitioned) else value,
            state.params, values, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
        )
        with self.mesh:
            opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(boxed)
        return state.replace(params=boxed, opt_state=opt_state)

    def step(self, state: TrainState, batch: Mapping[str, np.ndarray]) -> tuple[TrainState, dict]:
        """One optimizer update; arrays (grad_accum, B, T) or (B, T) for no accumulation.
        One host-to-device transfer per array."""
        batch = {k: np.asarray(batch[k]) for k in BATCH_KEYS}
        if batch["inputs"].ndim == 2:
            batch = {k: v[None] for k, v in batch.items()}
        with self.mesh, nn.logical_axis_rules(LOGICAL_RULES):
            return self._train(state, _to_global(batch, self.step_sharding))

    def evaluate(self, params, batches: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]) -> dict[str, float]:
        """Per-domain token-weighted mean loss (nats per trained token) over
        ``multi_domain_eval_batches`` batches: one compiled call per batch for all domains;
        rows summed per domain on the host. A domain with no trained token in its batches
        (every validation example lost its answer to truncation) has no loss: NaN, never
        0.0, so the run fails as on a non-finite loss instead of reporting a perfect score."""
        with self.mesh, nn.logical_axis_rules(LOGICAL_RULES):
            outs = [self._eval(params, _to_global({k: b[k] for k in BATCH_KEYS}, self.eval_sharding)) for b in batches]
        totals, weights = np.zeros(len(names)), np.zeros(len(names))
        for batch, (t, w) in zip(batches, jax.device_get(outs)):
            np.add.at(totals, batch["domain"], np.asarray(t, np.float64))
            np.add.at(weights, batch["domain"], np.asarray(w, np.float64))
        return {n: float(totals[i] / weights[i]) if weights[i] > 0 else math.nan for i, n in enumerate(names)}


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
    trainer: Trainer | None = None,
) -> TrainResult:
    """Train one run in ``workdir``; resumes from its latest full checkpoint if present.

    Raises NonFiniteLossError / DataExhaustedError (result.json then not written; the
    checkpoints written stay). ``stop_after`` stops (as a crash would) after that many
    optimizer steps: for tests. Only process 0 writes result.json and the metrics files.
    """
    workdir = Path(workdir)
    run = workdir.name
    primary = is_primary_process()
    workdir.mkdir(parents=True, exist_ok=True)
    if not train_examples:
        raise ValueError(f"run {run!r}: the mixture selected no training examples")
    if trainer is None:
        trainer = Trainer(model, cfg, devices)
    trainer.check_compatible(model, cfg)
    total_steps = planned_steps(cfg, train_examples)
    data = iter(optimizer_step_batches(
        train_examples, seq_len=cfg.seq_len, batch_size=cfg.batch_size, grad_accum=cfg.optimizer.grad_accum,
        epochs=max(1, math.ceil(cfg.epochs)), seed=cfg.seed, prefetch=cfg.prefetch,
    ))
    names = list(val_sets)
    val_batches = multi_domain_eval_batches(val_sets, seq_len=cfg.seq_len, batch_size=cfg.batch_size)
    checkpoints = RunCheckpoints(workdir / "checkpoints", async_save=cfg.async_checkpoints)
    history: list[dict] = []
    best: dict = {"step": -1, "losses": {}, "total": math.inf}
    trained_tokens = 0

    restored = checkpoints.restore_latest(trainer.abstract_state)
    if restored is not None:
        state, meta = restored
        data.set_state(meta["data_state"])
        history, best, trained_tokens = meta["history"], meta["best"], meta["trained_tokens"]
        log(f"resumed {run} at step {int(state.step)}")
    else:
        state = trainer.init(jax.random.key(cfg.seed))
        if init_params is not None:
            state = trainer.with_params(state, init_params)
    state = trainer.with_total_steps(state, total_steps)
    step = int(state.step)
    metrics_out = RunMetrics(workdir, enabled=primary, resume_step=step)
    flops_per_token = model.flops_per_token(cfg.seq_len)
    peak = peak_flops(trainer.mesh.devices.flat[0].device_kind)
    peak = peak * trainer.mesh.devices.size if peak else None
    pending: list = []  # (step, device metrics, tokens) of the last dispatched step
    clock = [time.perf_counter()]
    profile_at = step + 2 if cfg.profile else None  # skip the compile; trace 3 steps
    profiling = False

    def flush() -> None:
        """Fetch the last dispatched step's metrics (one step late: no sync every step)."""
        if not pending:
            return
        s, device_metrics, tokens = pending.pop()
        m = jax.device_get(device_metrics)
        now = time.perf_counter()
        tokens_per_s = tokens / max(now - clock[0], 1e-9)
        clock[0] = now
        loss, grad_norm = float(m["loss"]), float(m["grad_norm"])
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise NonFiniteLossError(run, s, "train", loss if not math.isfinite(loss) else grad_norm)
        metrics_out.step(s, {
            "loss": loss, "learning_rate": float(m["learning_rate"]), "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * flops_per_token / peak if peak else None,
        })

    def evaluate(step: int) -> tuple[float, bool]:
        nonlocal best
        losses = trainer.evaluate(state.params, val_batches, names)
        total = sum(losses.values())
        if not math.isfinite(total):
            raise NonFiniteLossError(run, step, "eval", total)
        history.append({"step": step, "total": total, "losses": losses})
        metrics_out.evaluation(step, losses)
        improved = total < best["total"]
        if improved:
            best = {"step": step, "losses": losses, "total": total}
        log(f"[{run}] step {step}/{total_steps} val total {total:.4f} "
            + " ".join(f"{n}={v:.4f}" for n, v in losses.items()) + (" *best" if improved else ""))
        return total, improved

    def save(step: int, total: float | None, full: bool) -> None:
        meta = {"data_state": data.get_state(), "history": history, "best": best, "trained_tokens": trained_tokens}
        checkpoints.save(step, state, meta, total=total, full=full)

    bar = tqdm(total=total_steps, initial=step, desc=run, disable=not progress, leave=False)
    try:
        while step < total_steps:
            try:
                batch = next(data)
            except StopIteration:
                flush()
                raise DataExhaustedError(run, step, total_steps) from None
            if step == profile_at:
                jax.profiler.start_trace(str(workdir / "profile"))
                profiling = True
            state, device_metrics = trainer.step(state, batch)
            tokens = int(np.count_nonzero(batch["segment_ids"]))
            trained_tokens += tokens
            flush()
            step += 1
            pending.append((step, device_metrics, tokens))
            if profiling and step == profile_at + 3:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                profiling = False
            bar.update(1)
            is_eval = step % cfg.eval_every == 0 or step == total_steps
            is_full = step % cfg.checkpoint_every == 0 or step == total_steps
            if is_eval or is_full:
                flush()  # never checkpoint past an unchecked non-finite loss
                total, improved = evaluate(step) if is_eval else (None, False)
                if is_full or improved:
                    save(step, total, is_full)
                metrics_out.flush()
            if stop_after is not None and step >= stop_after:
                flush()
                raise KeyboardInterrupt(f"stopped after {step} steps (stop_after)")
        flush()
        if not history or history[-1]["step"] != step:
            total, _ = evaluate(step)
            save(step, total, True)
        checkpoints.wait()
    finally:
        if profiling:
            jax.profiler.stop_trace()
        bar.close()
        metrics_out.close()
        checkpoints.close()
    log(f"[{run}] done: {step} steps, best step {best['step']} val total {best['total']:.4f}")
    result = TrainResult(
        best_step=best["step"], best_losses=best["losses"], final_step=step, history=history,
        trained_tokens=trained_tokens, trained_examples_hash=examples_hash(train_examples),
    )
    if primary:
        write_json_atomic(workdir / "result.json", dataclasses.asdict(result))
    return result
