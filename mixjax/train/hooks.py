"""Everything periodic in a training run, as hooks the loop calls after optimizer steps.

A :class:`Hook` is a function of a :class:`StepInfo` and an ``every``: it runs after every
``every``-th optimizer step and after the last one (levanter's ``trainer.add_hook(fn,
every=N)``). The loop (``mixjax.train.loop.train``) only steps and calls :func:`run_hooks`;
per-step metrics, evaluation, checkpoints, profiling and progress are the hooks here.

What a run measured so far (its evaluations, best evaluation, trained tokens) is a
:class:`RunRecord`, saved in every checkpoint and restored on resume, so a resumed run
ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import jax

from mixjax.progress import StepProgress
from mixjax.train.checkpoint import RunCheckpoints
from mixjax.train.errors import NonFiniteLossError, Preempted
from mixjax.train.metrics import RunMetrics


@dataclasses.dataclass
class RunRecord:
    """What a run has measured: every evaluation (``history``: step, total, per-domain
    losses in nats/token), the one with the lowest total (``best``: the run's result, the
    paper's "checkpoint with the lowest validation loss", arXiv 2508.11953; README, The
    pipeline, step 2) and the non-padding positions trained so far (tokens, epochs counted).
    ``selection``: the validation sets whose sum is the total (None: all of them; the
    pipeline's training domains, so a target never chooses the checkpoint it is judged at)."""

    history: list[dict] = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=lambda: {"step": -1, "losses": {}, "total": math.inf})
    trained_tokens: int = 0
    selection: tuple[str, ...] | None = None

    def total(self, losses: Mapping[str, float]) -> float:
        """The sum of ``losses`` over :attr:`selection` (nats)."""
        return sum(v for n, v in losses.items() if self.selection is None or n in self.selection)

    def add_evaluation(self, step: int, losses: Mapping[str, float]) -> bool:
        """Record an evaluation; True when its total is a new best."""
        total = self.total(losses)
        self.history.append({"step": step, "total": total, "losses": dict(losses)})
        if total < self.best["total"]:
            self.best = {"step": step, "losses": dict(losses), "total": total}
            return True
        return False

    def total_at(self, step: int) -> float | None:
        """The validation total of an evaluation at ``step``, or None when not evaluated."""
        return self.history[-1]["total"] if self.history and self.history[-1]["step"] == step else None

    def to_meta(self) -> dict:
        return {"history": self.history, "best": self.best, "trained_tokens": self.trained_tokens}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], selection: tuple[str, ...] | None = None) -> RunRecord:
        return cls(history=list(meta["history"]), best=dict(meta["best"]), trained_tokens=int(meta["trained_tokens"]), selection=selection)


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """The run after optimizer step ``step`` (of ``total_steps``).

    ``state`` is donated to the next step: use it inside the hook only. ``metrics`` are
    this step's device metrics (``loss``, ``grad_norm``, ``learning_rate``, ``tokens``; not
    fetched; None after the loop). ``tokens``: non-padding positions of this step.
    ``final``: the run's last step (every hook runs). ``sync``: a hook due now reads the
    checked run (see :attr:`Hook.sync`).
    """

    run: str
    step: int
    total_steps: int
    state: Any
    record: RunRecord
    metrics: Mapping[str, jax.Array] | None = None
    tokens: int = 0
    final: bool = False
    sync: bool = False


@dataclasses.dataclass(frozen=True)
class Hook:
    """``fn(info)`` after every ``every``-th step and after the last one. ``sync``: ``fn``
    needs every step so far fetched and checked for non-finite losses first (evaluation,
    checkpoints: never save past an unchecked NaN). ``when``: a predicate of the step
    number that decides instead of ``every`` (e.g. a timer); it is asked once per step,
    before any hook of that step runs, and not at the last step (every hook runs then)."""

    fn: Callable[[StepInfo], None]
    every: int = 1
    sync: bool = False
    when: Callable[[int], bool] | None = None

    def due(self, step: int) -> bool:
        return self.when(step) if self.when is not None else step % self.every == 0


def run_hooks(hooks: Sequence[Hook], info: StepInfo) -> None:
    """Run the hooks due at ``info.step``, in order; ``info.sync`` tells them whether a due
    hook needs the checked run."""
    due = [h for h in hooks if info.final or h.due(info.step)]
    info = dataclasses.replace(info, sync=info.final or any(h.sync for h in due))
    for hook in due:
        hook.fn(info)


class TrainMetrics:
    """Hook (every step): one row per step in metrics.jsonl and TensorBoard (loss, learning
    rate, gradient norm, tokens/s, MFU); raises NonFiniteLossError on a NaN or infinite loss
    or gradient norm. A step's metrics are fetched when the next step has been dispatched
    (the host never waits for the step it just queued), or at once at a sync step."""

    def __init__(
        self, out: RunMetrics, *, flops_per_token: float, peak_flops: float | None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.out, self.flops_per_token, self.peak_flops, self.clock = out, flops_per_token, peak_flops, clock
        self.pending: tuple[str, int, Mapping[str, jax.Array], int] | None = None
        self._last = clock()

    def __call__(self, info: StepInfo) -> None:
        if info.metrics is not None:
            self.settle(flush=False)
            self.pending = (info.run, info.step, info.metrics, info.tokens)
        if info.sync:
            self.settle()

    def settle(self, flush: bool = True) -> None:
        """Fetch, check and write the pending step; ``flush`` the files."""
        if self.pending is not None:
            (run, step, device_metrics, tokens), self.pending = self.pending, None
            self._write(run, step, jax.device_get(device_metrics), tokens)
        if flush:
            self.out.flush()

    def _write(self, run: str, step: int, m: Mapping[str, Any], tokens: int) -> None:
        now = self.clock()
        tokens_per_s = tokens / max(now - self._last, 1e-9)
        self._last = now
        loss, grad_norm = float(m["loss"]), float(m["grad_norm"])
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise NonFiniteLossError(run, step, "train", loss if not math.isfinite(loss) else grad_norm)
        mfu = tokens_per_s * self.flops_per_token / self.peak_flops if self.peak_flops else None
        self.out.step(step, {
            "loss": loss, "learning_rate": float(m["learning_rate"]), "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "mfu": mfu,
        })


class Evaluation:
    """Hook (every ``eval_every`` steps, sync): per-domain validation loss (nats per trained
    token) of the current parameters, recorded in the RunRecord, TensorBoard and the log;
    raises NonFiniteLossError when the total is not finite.

    ``evaluate(params) -> {domain: loss}`` is the compiled evaluation (Trainer.evaluate
    over the run's validation batches)."""

    def __init__(self, evaluate: Callable[[Any], dict[str, float]], out: RunMetrics, log: Callable[[str], None]) -> None:
        self.evaluate, self.out, self.log = evaluate, out, log

    def __call__(self, info: StepInfo) -> None:
        losses = self.evaluate(info.state.params)
        if not math.isfinite(sum(losses.values())):
            raise NonFiniteLossError(info.run, info.step, "eval", sum(losses.values()))
        total = info.record.total(losses)
        improved = info.record.add_evaluation(info.step, losses)
        self.out.evaluation(info.step, losses)
        self.log(f"[{info.run}] step {info.step}/{info.total_steps} val total {total:.4f} "
                 + " ".join(f"{n}={v:.4f}" for n, v in losses.items()) + (" *best" if improved else ""))


@dataclasses.dataclass(frozen=True)
class BestParams:
    """The best evaluation's parameters, held on the devices (in the dtype the checkpoint
    hook keeps them in) until they are written; ``meta``, ``total``: as at that step."""

    step: int
    params: Any
    meta: dict
    total: float


class Checkpointing:
    """The run's checkpoints (one RunCheckpoints; layout in mixjax.train.checkpoint):

    - :meth:`best` (after each evaluation, sync): an evaluation that lowered the best
      total keeps a device copy of the params (``keep_best(params)``: e.g. cast to the
      compute dtype) and writes nothing;
    - :meth:`save` (when :meth:`due`: every ``every`` steps, every ``interval_s`` seconds
      of training, or on SIGTERM/SIGUSR1 (``preemption``); sync): the full state, to resume
      from, preceded by the kept best params when they are of an earlier step (a full
      save of the best step itself carries its validation total; orbax keeps it). After a
      signal the run stops with :class:`Preempted` once the save is on disk;
    - at the last step: only the kept best params, if not written yet (nothing resumes a
      finished run, so no full state is written at the end).

    So a run writes ``saves x (full state + best params) + best params`` bytes, whatever
    its number of evaluations (saves: 0 for a run shorter than ``interval_s``). A crash
    loses at most the steps since the last full save: the rerun replays them bit-exactly,
    evaluations and best included. Register :meth:`best` and :meth:`save` after the
    Evaluation hook. Each save's meta holds the data position (``data_state()``) and the
    RunRecord.
    """

    def __init__(
        self, checkpoints: RunCheckpoints, data_state: Callable[[], dict], *, every: int | None = None,
        interval_s: float | None = None, keep_best: Callable[[Any], Any] = lambda params: params,
        preemption: Any = None, clock: Callable[[], float] = time.monotonic,
        agree: Callable[[bool], bool] = lambda wanted: wanted, poll_every: int = 1,
    ) -> None:
        self.checkpoints, self.data_state, self.every, self.interval_s = checkpoints, data_state, every, interval_s
        self.keep_best, self.preemption, self.clock, self.agree = keep_best, preemption, clock, agree
        self.poll_every = poll_every
        self.pending: BestParams | None = None
        self._last_save, self._save_at = clock(), None

    def _meta(self, info: StepInfo) -> dict:
        return {"data_state": self.data_state(), **info.record.to_meta()}

    def due(self, step: int) -> bool:
        """A full save after ``step``: by step count (the same on every process), or by timer
        or signal, looked at every ``poll_every`` steps, where ``agree`` makes every process
        take the same decision (any process wanting it; with several processes one tiny
        all-gather, which waits for the step, hence not at every step)."""
        by_steps = bool(self.every) and step % self.every == 0
        polled = step % self.poll_every == 0
        by_time = self.interval_s is not None and self.clock() - self._last_save >= self.interval_s
        signalled = self.preemption is not None and self.preemption.received is not None
        self._save_at = step if by_steps or (polled and self.agree(by_time or signalled)) else None
        return self._save_at is not None

    def best(self, info: StepInfo) -> None:
        if info.record.best["step"] == info.step:
            self.pending = BestParams(info.step, self.keep_best(info.state.params), self._meta(info), info.record.best["total"])

    def save(self, info: StepInfo) -> None:
        if info.step != self._save_at:  # the last step, not due: the best params only
            self._write_best(before=info.step + 1)
            return
        self._write_best(before=info.step)
        self.checkpoints.save(info.step, info.state, self._meta(info), total=info.record.total_at(info.step), full=True)
        self._last_save = self.clock()
        if self.preemption is not None and self.preemption.received is not None:
            self.checkpoints.wait()
            raise Preempted(info.run, info.step, self.preemption.received)

    def _write_best(self, before: int) -> None:
        """Write the kept best params if they are of a step before ``before`` (the full save
        of their own step writes them)."""
        if self.pending is not None and self.pending.step < before:
            best = self.pending
            self.checkpoints.save(best.step, best, best.meta, total=best.total, full=False)
        if self.pending is not None and self.pending.step <= before:
            self.pending = None


class Profile:
    """Hook (every step): a jax.profiler trace of ``steps`` steps after step ``start``
    (skip the compile) into ``directory``; ``close`` stops an unfinished trace."""

    def __init__(self, directory: str | Path, start: int, steps: int = 3) -> None:
        self.directory, self.start, self.stop_at = str(directory), start, start + steps
        self.tracing = False

    def __call__(self, info: StepInfo) -> None:
        if info.step == self.start and not info.final:
            jax.profiler.start_trace(self.directory)
            self.tracing = True
        elif self.tracing and info.step >= self.stop_at:
            jax.block_until_ready(info.state)
            self.close()

    def close(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False


class Progress:
    """Hook (every step): the run's progress (a bar on a terminal, periodic lines
    elsewhere; mixjax.progress.StepProgress)."""

    def __init__(
        self, run: str, total_steps: int, initial: int, stream: IO[str] | None = None, interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.display = StepProgress(run, total_steps, initial=initial, stream=stream, interval_s=interval_s, clock=clock)

    def __call__(self, info: StepInfo) -> None:
        self.display.update(info.step)

    def close(self) -> None:
        self.display.close()
