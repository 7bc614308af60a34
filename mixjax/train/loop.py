"""The SFT training loop of one run: sharded jit steps, then hooks (mixjax.train.hooks)
for per-step metrics, per-domain evaluation, checkpoints, profiling and progress.

The run's result is the per-domain validation losses at the evaluation with the lowest
total (sum over domains) validation loss, the paper's "checkpoint with the lowest
validation loss" (arXiv 2508.11953; README, The pipeline, step 2). A run resumes from its
latest full checkpoint, bit-exactly.

One ``Trainer`` (one compile of the train and eval steps) serves every run of a pipeline
that shares the model, optimizer and mesh: the schedule's length is a runtime input.
``batch_size`` is global: every process builds the same packed stream and puts its own
rows on its devices, so N processes train exactly what one process trains.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from mixjax.config_fields import neutral, result
from mixjax.data.domain import Example, examples_hash
from mixjax.data.pipeline import multi_domain_eval_batches, optimizer_step_batches, trained_positions
from mixjax.io import is_primary_process, write_json_atomic
from mixjax.model.llama import ModelConfig
from mixjax.train.checkpoint import RunCheckpoints, abstract_like
from mixjax.train.errors import DataExhaustedError
from mixjax.train.preemption import PreemptionSignal, any_process
from mixjax.train.hooks import Checkpointing, Evaluation, Hook, Profile, Progress, RunRecord, StepInfo, TrainMetrics, run_hooks
from mixjax.train.metrics import RunMetrics, peak_flops
from mixjax.train.optimizer import OptimizerConfig, make_optimizer, steps_for_budget
from mixjax.train.sharding import LOGICAL_RULES, batch_split_error, make_mesh
from mixjax.train.step import TrainState, eval_step, init_state, resolve_loss_chunk, train_step

BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


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
    # Full saves (params + optimizer state + data position) only serve resuming, which is
    # bit-exact: every ``checkpoint_interval_s`` seconds of training (levanter saves on a
    # timer too), on SIGTERM/SIGUSR1 (SLURM's preemption and time-limit warning), and, if
    # set, every ``checkpoint_every`` steps. Never at an evaluation or at the end.
    checkpoint_every: int | None = neutral(None, "full checkpoints only serve resuming, which is bit-exact")
    checkpoint_interval_s: float | None = neutral(1800.0, "full checkpoints only serve resuming, which is bit-exact")
    # The best evaluation's params, written once per run: in the model's compute dtype
    # (None; bf16 for the 8B presets: 2 bytes/param) or e.g. "float32".
    best_params_dtype: str | None = neutral(None, "storage of the kept params; the run's losses are measured before")
    seed: int = result(0)
    mesh_shape: tuple[int, int, int] | None = neutral(None, "device layout: float reduction order only (see the class docstring)")
    # Multi-node: the mesh across nodes (processes); mesh_shape then lays out ONE node's
    # devices and the sizes multiply (MaxText's dcn_* x ici_*), e.g. (-1, 1, 1): data
    # parallel across nodes, FSDP (mesh_shape=(1,-1,1)) within. None: mesh_shape spans all.
    dcn_mesh_shape: tuple[int, int, int] | None = neutral(None, "device layout: float reduction order only (see the class docstring)")
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
        self.mesh = make_mesh(cfg.mesh_shape, devices, cfg.dcn_mesh_shape)
        nodes = len({d.process_index for d in self.mesh.devices.flat})
        if (error := batch_split_error(cfg.batch_size, cfg.mesh_shape, self.mesh.size, dcn_shape=cfg.dcn_mesh_shape, nodes=nodes)) is not None:
            raise ValueError(error)  # else jax fails at the first step, naming a shape, not the fix
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
        self._best_copies: dict = {}
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
        return (self.model, self.cfg.optimizer, self.cfg.mesh_shape, self.cfg.dcn_mesh_shape, self.loss_chunk)

    def check_compatible(self, model: ModelConfig, cfg: TrainConfig) -> None:
        other = (model, cfg.optimizer, cfg.mesh_shape, cfg.dcn_mesh_shape, resolve_loss_chunk(model, cfg.loss_chunk))
        if other != self.compile_key():
            raise ValueError("this Trainer was built for another model/optimizer/mesh/loss_chunk; build a new one")

    def init(self, key: jax.Array, total_steps: int = 1) -> TrainState:
        with self.mesh, nn.logical_axis_rules(LOGICAL_RULES):
            return self.with_total_steps(self._init(key), total_steps)

    def with_total_steps(self, state: TrainState, total_steps: int) -> TrainState:
        return state.replace(total_steps=_to_global(np.asarray(total_steps, np.int32), self.state_shardings.total_steps))

    def with_params(self, state: TrainState, params) -> TrainState:
        """Replace the (unboxed) parameter values, e.g. with a loaded checkpoint; resets the
        optimizer. Host arrays are transferred; device arrays (``mixjax.model.hf.load_hf_params``,
        e.g. bf16) are cast to the param dtype and placed on the devices, never via the host."""
        values = jax.tree.map(self._param_value, self.state_shardings.params, nn.unbox(params), nn.unbox(state.params))
        boxed = jax.tree.map(
            lambda box, value: box.replace_boxed(value) if isinstance(box, nn.LogicallyPartitioned) else value,
            state.params, values, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
        )
        with self.mesh:
            opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(boxed)
        return state.replace(params=boxed, opt_state=opt_state)

    def best_copy(self, params, dtype: str | None = None):
        """A new device copy of (boxed) ``params`` in ``dtype`` (default: the model's
        compute dtype), sharded as the params: what the best evaluation keeps until it is
        written (bf16: a sixth of the full state's 12 bytes per parameter)."""
        dtype = jnp.dtype(dtype or self.model.dtype)
        if dtype not in self._best_copies:
            cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)
            self._best_copies[dtype] = jax.jit(cast, out_shardings=self.state_shardings.params)
        with self.mesh:
            return self._best_copies[dtype](params)

    def _param_value(self, sharding: NamedSharding, value, like: jax.Array) -> jax.Array:
        if not isinstance(value, jax.Array):
            return _to_global(np.asarray(value, like.dtype), sharding)
        with self.mesh:
            return jax.jit(lambda v: v.astype(like.dtype), out_shardings=sharding)(value)

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
    trainer: Trainer,
    cfg: TrainConfig,
    train_examples: Sequence[Example],
    val_sets: Mapping[str, Sequence[Example]],
    workdir: str | Path,
    *,
    init_params=None, log: Callable[[str], None] = print, progress: bool = True,
    hooks: Sequence[Hook] = (), selection: Sequence[str] | None = None,
) -> TrainResult:
    """Train one run in ``workdir`` (its name is the run's); resumes from its latest full
    checkpoint if present.

    Args:
      trainer: the compiled steps (its model, optimizer, mesh); ``cfg`` must match them.
      cfg: this run's TrainConfig (steps: :func:`planned_steps`; cadences; seed).
      train_examples, val_sets: training examples; validation examples per domain.
      init_params: parameters to start from (e.g. a Hugging Face checkpoint), else random.
      log: receives the evaluation and summary lines. progress: show progress (a bar on a
        terminal, periodic lines elsewhere).
      hooks: extra hooks, run after the built-in ones (metrics, profile, evaluation,
        checkpoints, progress). selection: the validation sets whose total picks the best
        checkpoint (default all).
    Returns:
      The TrainResult, also written to ``workdir/result.json`` by process 0.
    Raises:
      NonFiniteLossError, DataExhaustedError: result.json is then not written; the
        checkpoints written stay. ValueError: no training examples.
    """
    workdir, run = Path(workdir), Path(workdir).name
    if not train_examples:
        raise ValueError(f"run {run!r}: the mixture selected no training examples")
    trainer.check_compatible(trainer.model, cfg)
    total_steps = planned_steps(cfg, train_examples)
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        data = stack.enter_context(contextlib.closing(_Batches(optimizer_step_batches(
            train_examples, seq_len=cfg.seq_len, batch_size=cfg.batch_size, grad_accum=cfg.optimizer.grad_accum,
            epochs=max(1, math.ceil(cfg.epochs)), seed=cfg.seed, prefetch=cfg.prefetch,
        ))))
        checkpoints = stack.enter_context(contextlib.closing(RunCheckpoints(workdir / "checkpoints", async_save=cfg.async_checkpoints)))
        state, record = _start_or_resume(trainer, checkpoints, data, cfg.seed, init_params, log, run, selection)
        state = trainer.with_total_steps(state, total_steps)
        step = int(state.step)
        out = stack.enter_context(contextlib.closing(RunMetrics(workdir, enabled=is_primary_process(), resume_step=step)))
        metrics = TrainMetrics(out, flops_per_token=trainer.model.flops_per_token(cfg.seq_len), peak_flops=_mesh_peak_flops(trainer.mesh))
        val_batches = multi_domain_eval_batches(val_sets, seq_len=cfg.seq_len, batch_size=cfg.batch_size)
        evaluation = Evaluation(lambda params: trainer.evaluate(params, val_batches, list(val_sets)), out, log)
        checkpointing = _checkpointing(trainer, cfg, checkpoints, data, stack.enter_context(PreemptionSignal()))
        all_hooks = [
            Hook(metrics),
            *([Hook(stack.enter_context(contextlib.closing(Profile(workdir / "profile", start=step + 2))))] if cfg.profile else []),
            Hook(evaluation, every=cfg.eval_every, sync=True),
            Hook(checkpointing.best, every=cfg.eval_every, sync=True),
            Hook(checkpointing.save, sync=True, when=checkpointing.due),
            *([Hook(stack.enter_context(contextlib.closing(Progress(run, total_steps, initial=step))))] if progress else []),
            *hooks,
        ]
        while step < total_steps:
            batch = next(data, None)
            if batch is None:
                metrics.settle()  # a non-finite last step is reported as such
                raise DataExhaustedError(run, step, total_steps)
            state, device_metrics = trainer.step(state, batch)
            step += 1
            tokens = int(np.count_nonzero(batch["segment_ids"]))
            record.trained_tokens += tokens
            run_hooks(all_hooks, StepInfo(run, step, total_steps, state, record, device_metrics, tokens, final=step == total_steps))
        if record.total_at(step) is None:  # resumed at the end of its schedule: evaluate and save once
            run_hooks(all_hooks, StepInfo(run, step, total_steps, state, record, final=True))
        checkpoints.wait()
    log(f"[{run}] done: {step} steps, best step {record.best['step']} val total {record.best['total']:.4f}")
    result = TrainResult(
        best_step=record.best["step"], best_losses=record.best["losses"], final_step=step, history=record.history,
        trained_tokens=record.trained_tokens, trained_examples_hash=examples_hash(train_examples),
    )
    if is_primary_process():
        write_json_atomic(workdir / "result.json", dataclasses.asdict(result))
    return result


class _Batches:
    """The run's stream of optimizer-step batches (a grain iterator) until ``close``, which
    stops grain's prefetch thread and lets the iterator go. A caller that keeps a failed
    run's traceback (and so this frame) then does not keep the iterator until interpreter
    exit, where grain's ``DatasetIterator.__del__`` fails on torn-down modules and prints
    "Exception ignored in ..." tracebacks."""

    def __init__(self, dataset) -> None:
        self._it = iter(dataset)

    def __next__(self) -> dict:
        return next(self._it)

    def get_state(self) -> dict:
        return self._it.get_state()

    def set_state(self, state: dict) -> None:
        self._it.set_state(state)

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None


def _checkpointing(trainer: Trainer, cfg: TrainConfig, checkpoints: RunCheckpoints, data, preemption: PreemptionSignal) -> Checkpointing:
    """The run's checkpoint hooks (mixjax.train.hooks.Checkpointing) as ``cfg`` says."""
    return Checkpointing(
        checkpoints, data.get_state, every=cfg.checkpoint_every, interval_s=cfg.checkpoint_interval_s,
        keep_best=functools.partial(trainer.best_copy, dtype=cfg.best_params_dtype), preemption=preemption, agree=any_process,
        poll_every=1 if jax.process_count() == 1 else 10,  # SLURM warns 300 s ahead: 10 steps of an 8B run fit
    )


def _start_or_resume(trainer: Trainer, checkpoints: RunCheckpoints, data, seed: int, init_params, log: Callable[[str], None], run: str,
                     selection: Sequence[str] | None = None):
    """(state, RunRecord) from the latest full checkpoint (the data iterator moved to its
    position), else a fresh state (``init_params`` if given, else random from ``seed``);
    the record's total is over ``selection`` (None: every validation set)."""
    selection = None if selection is None else tuple(selection)
    restored = checkpoints.restore_latest(trainer.abstract_state)
    if restored is not None:
        state, meta = restored
        data.set_state(meta["data_state"])
        log(f"resumed {run} at step {int(state.step)}")
        return state, RunRecord.from_meta(meta, selection)
    state = trainer.init(jax.random.key(seed))
    if init_params is not None:
        state = trainer.with_params(state, init_params)
    return state, RunRecord(selection=selection)


def _mesh_peak_flops(mesh) -> float | None:
    """Datasheet peak FLOP/s of all the mesh's devices (None where unknown: CPU)."""
    peak = peak_flops(mesh.devices.flat[0].device_kind)
    return peak * mesh.devices.size if peak else None
