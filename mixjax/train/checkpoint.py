"""orbax checkpoints of a run: ``latest/`` (for resume: state + data position + history)
and ``best/`` (the state with the lowest total validation loss so far).

Each save is atomic (orbax writes to a temporary directory and renames), so a crash at any
moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings; ``shardings`` may be a prefix tree of ``state``
    (flax's partition boxes sit above the arrays they describe)."""
    attach = lambda s, sub: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), sub)
    return jax.tree.map(attach, shardings, state)


class RunCheckpoints:
    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
        self.latest = ocp.CheckpointManager(directory / "latest", options=options)
        self.best = ocp.CheckpointManager(directory / "best", options=options)

    def save_latest(self, step: int, state: Any, meta: dict) -> None:
        self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def save_best(self, step: int, state: Any, losses: dict[str, float]) -> None:
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(losses)), force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """(state, meta) of the newest checkpoint for resuming, or None."""
        return self._restore(self.latest, abstract_state)

    def restore_best(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """(state, per-domain losses) of the best checkpoint, or None."""
        return self._restore(self.best, abstract_state)

    @staticmethod
    def _restore(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict] | None:
        step = manager.latest_step()
        if step is None:
            return None
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        out = manager.restore(step, args=args)
        return out.state, out.meta

    def close(self) -> None:
        self.latest.close()
        self.best.close()
