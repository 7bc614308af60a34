"""The checkpoints of one run: ONE orbax CheckpointManager, async saves.

Each saved step is one atomic directory (orbax writes to a temporary name and renames):

- a **full** step (on a timer, on SIGTERM/SIGUSR1, or every ``checkpoint_every`` steps;
  never at an evaluation or at the end; mixjax.train.hooks.Checkpointing): items
  ``params``, ``train`` (step, schedule length, optimizer state) and ``meta`` (data
  position, history, best so far): a point to resume from;
- a **best** step (an evaluation that lowered the total validation loss, written once:
  before the next full save or at the end of the run): items ``params`` (in the compute
  dtype unless ``best_params_dtype`` says otherwise) and ``meta`` only.

orbax ``metrics`` per step carry ``total`` (validation total, on evaluated steps) and
``full`` (1 on full steps); the preservation policy keeps the best step by lowest
``total`` (orbax's ``best_fn``, via ``BestN``) and the newest full step; all else is
deleted. A run always resumes from its newest *full* step, and first deletes any newer
(params-only) steps: replaying those steps rewrites them bit-exactly, so a kill at any
moment can never leave a step that blocks the rerun (the old two-manager layout died with
StepAlreadyExists when killed between ``save_best`` and ``save_latest`` of one step).

Once a run has finished (its ``result.json`` is written), nothing resumes it: its full
state (params + Adam moments, about 90 GiB for an 8B model) is dead weight, and an
experiment has 4k+1 perturbation runs and dozens of validation runs.
:func:`release_finished` deletes the run's checkpoints, keeping the best step's params
(and meta) only when asked; a run in progress keeps its full saves, to resume from.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies  # public API (orbax-checkpoint >= 0.11.20)


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings; ``shardings`` may be a prefix tree of ``state``
    (flax's partition boxes sit above the arrays they describe)."""
    attach = lambda s, sub: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), sub)
    return jax.tree.map(attach, shardings, state)


def _total(metrics: dict) -> float:
    return metrics.get("total", float("inf"))


@dataclasses.dataclass
class _BestAndLatestFull(policies.PreservationPolicy):
    """Keep the step with the lowest validation total (orbax BestN on best_fn) and the newest full step."""

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        best = policies.BestN(get_metric_fn=_total, reverse=True, n=1, keep_checkpoints_without_metrics=False)
        keep = list(best.should_preserve(checkpoints, context=context))
        full = [i for i, c in enumerate(checkpoints) if (c.metrics or {}).get("full")]
        if full:
            keep[full[-1]] = True
        return keep


class RunCheckpoints:
    def __init__(self, directory: str | Path, *, async_save: bool = True) -> None:
        options = ocp.CheckpointManagerOptions(
            create=True,
            enable_async_checkpointing=async_save,
            best_fn=_total,  # also makes orbax write each step's metrics
            best_mode="min",
            preservation_policy=_BestAndLatestFull(),
        )
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def save(self, step: int, state: Any, meta: dict, *, total: float | None, full: bool) -> None:
        """Save ``step``: the full state when ``full`` (``state``: a TrainState), else
        ``state.params`` only (a best; any object with ``params``), as they are (dtype,
        sharding); in the background with ``async_save``."""
        items = {"params": ocp.args.StandardSave(state.params), "meta": ocp.args.JsonSave(meta)}
        if full:
            items["train"] = ocp.args.StandardSave({"step": state.step, "total_steps": state.total_steps, "opt_state": state.opt_state})
        metrics = {"full": 1.0 if full else 0.0}
        if total is not None:
            metrics["total"] = float(total)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def _metrics(self, step: int) -> dict:
        return self.manager.metrics(step) or {}

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """(state, meta) of the newest full step, or None; deletes any newer (params-only) steps."""
        self.manager.wait_until_finished()
        steps = sorted(self.manager.all_steps(), reverse=True)
        full = [s for s in steps if self._metrics(s).get("full")]
        if not full:
            for s in steps:  # only params-only steps: nothing to resume from
                self.manager.delete(s)
            return None
        for s in steps:
            if s > full[0]:
                self.manager.delete(s)
        train = {"step": abstract_state.step, "total_steps": abstract_state.total_steps, "opt_state": abstract_state.opt_state}
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params), train=ocp.args.StandardRestore(train), meta=ocp.args.JsonRestore()
        )
        out = self.manager.restore(full[0], args=args)
        state = abstract_state.replace(params=out.params, step=out.train["step"], total_steps=out.train["total_steps"], opt_state=out.train["opt_state"])
        return state, out.meta

    def best_step(self) -> int | None:
        self.manager.wait_until_finished()
        scored = [(self._metrics(s).get("total", float("inf")), s) for s in self.manager.all_steps()]
        scored = [x for x in scored if x[0] != float("inf")]
        return min(scored)[1] if scored else None

    def restore_best(self, abstract_params: Any) -> tuple[Any, dict] | None:
        """(params, meta) of the step with the lowest total validation loss, or None;
        ``meta["best"]`` holds that step's ``step``, ``losses`` and ``total``."""
        step = self.best_step()
        if step is None:
            return None
        out = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()))
        return out.params, out.meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def checkpoint_bytes(directory: str | Path) -> int:
    """Bytes in all files under ``directory`` (0 if it does not exist)."""
    directory = Path(directory)
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) if directory.exists() else 0


def release_finished(directory: str | Path, *, best_step: int | None, keep_best_params: bool) -> int:
    """Free the checkpoints of a FINISHED run; returns the bytes freed.

    Without ``keep_best_params`` the whole ``directory`` goes. With it, only step
    ``best_step`` stays, as a params-only step (its ``params`` and ``meta`` items; the
    optimizer state item ``train`` is deleted and the step's ``full`` metric cleared), which
    :meth:`RunCheckpoints.restore_best` still reads. Plain file operations (no orbax
    manager, so one process can do it); call it only once the run's result is recorded.
    """
    directory = Path(directory)
    before = checkpoint_bytes(directory)
    if not directory.exists():
        return 0
    keep = directory / str(best_step) if keep_best_params and best_step is not None else None
    if keep is None or not (keep / "params").is_dir():
        shutil.rmtree(directory, ignore_errors=True)
        return before
    for child in directory.iterdir():
        if child != keep:
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    shutil.rmtree(keep / "train", ignore_errors=True)
    metrics = keep / "metrics" / "metrics"
    if metrics.exists():
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "full": 0.0}))
    metadata = keep / "_CHECKPOINT_METADATA"
    if metadata.exists():
        meta = json.loads(metadata.read_text())
        meta.get("item_handlers", {}).pop("train", None)
        metadata.write_text(json.dumps(meta))
    return before - checkpoint_bytes(directory)
