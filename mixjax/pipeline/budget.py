"""Step budgets of the training runs."""

from __future__ import annotations


def steps_for_run(tokens: int, epochs: float, global_batch: int, seq_len: int, cap: int | None) -> int:
    """Optimizer steps of a run: its tokens x epochs in global batches of packed sequences
    (floor: never more batches than the data supplies), capped at ``cap`` (max_steps)."""
    steps = max(1, int(epochs * tokens // (global_batch * seq_len)))
    return min(steps, cap) if cap else steps
