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

# Dense (no sparsity) bf16 peak FLOP/s of ONE device, keyed on the exact ``device_kind``
# string jax reports (``jax.devices()[0].device_kind``), from the vendors' datasheets.
# Exact keys, not substrings: "NVIDIA H100 PCIe" must not read as the SXM part, nor
# "NVIDIA L40S" as the L4, and jax reports TPU v5p as "TPU v5" and v5e as "TPU v5 lite".
PEAK_FLOPS: dict[str, float] = {
    # Hopper (H100/H200 datasheets, "BF16 Tensor Core" without sparsity)
    "NVIDIA H100 80GB HBM3": 989e12,  # H100 SXM5
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12,  # H200 SXM
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA GH200 480GB": 989e12,
    # Ampere (A100 datasheet: 312 TFLOP/s bf16 for SXM4 and PCIe, 40 and 80 GB)
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A10": 125e12,
    # Ada (L4: 121, L40: 181, L40S: 362 TFLOP/s bf16 dense)
    "NVIDIA L4": 121e12,
    "NVIDIA L40": 181e12,
    "NVIDIA L40S": 362e12,
    # Cloud TPU (per chip; jax reports one device per chip on v4 and later)
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5": 459e12,  # v5p
    "TPU v6 lite": 918e12,  # v6e (Trillium)
}


def peak_flops(device_kind: str) -> float | None:
    """Datasheet dense bf16 peak FLOP/s of one device of this exact ``device_kind``, or
    None where unknown (CPU, an unlisted accelerator: MFU is then left blank)."""
    return PEAK_FLOPS.get(device_kind.strip())


def total_peak_flops(devices) -> float | None:
    """Peak FLOP/s of all ``devices`` together (the sum of their peaks; a mesh's
    ``devices.flat``), or None if any device's kind is unknown. MFU divides the throughput
    of all devices by this, never by one device's peak."""
    peaks = [peak_flops(d.device_kind) for d in devices]
    return None if not peaks or any(p is None for p in peaks) else float(sum(peaks))


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
