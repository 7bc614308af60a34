"""Per-step training metrics of one run: ``metrics.jsonl`` (one row per optimizer step)
and TensorBoard event files under ``tensorboard/``.

TensorBoard writing goes through tensorboardX: a small pure-Python writer (numpy +
protobuf; no TensorFlow, no torch) that writes standard event files any TensorBoard
reads, with ``purge_step`` so a resumed run hides the killed run's later points. clu's
metric writers would pull in TensorFlow for their TensorBoard backend.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# Dense bf16 peak FLOP/s per device by device_kind substring (datasheets), for MFU.
PEAK_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
    "TPU v6": 918e12,
}


def peak_flops(device_kind: str) -> float | None:
    """Datasheet peak for a device kind, or None where unknown (CPU)."""
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return flops
    return None


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunMetrics:
    """Writes one row per optimizer step (and evaluations to TensorBoard); a no-op when
    ``enabled`` is False (every process but the primary). ``resume_step``: rows after it,
    left by a killed run, are dropped so each step has exactly one row."""

    def __init__(self, workdir: str | Path, *, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        workdir = Path(workdir)
        self.path = workdir / "metrics.jsonl"
        kept = []
        if resume_step and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self._file = self.path.open("a")
        self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None, flush_secs=30)

    def step(self, step: int, row: dict[str, float | None]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in row.items()}}
        self._file.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key != "step" and value is not None:
                self._tb.add_scalar(f"train/{key}", value, step)

    def evaluation(self, step: int, losses: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._tb.add_scalar("val/total", sum(losses.values()), step)
        for name, loss in losses.items():
            self._tb.add_scalar(f"val/{name}", loss, step)

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()
