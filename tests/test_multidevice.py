"""The flash kernel and the LM head's chunked loss on 8 fake CPU devices (issue 19 items
8 and 10), checked in the compiled train step (tests/multidevice_check.py, its own
process): per-device kernels with no all-gather of q/k/v, the head gathered once and its
gradient reduce-scattered once outside the chunk loop, no collective inside any loop, and
the same losses as one device. Slow (interpret-mode Pallas, several compiles on 8 devices):
``pytest -m slow tests/test_multidevice.py``. Not slow: the 1B step lowered for CUDA."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import subprocess_env

SCRIPT = Path(__file__).with_name("multidevice_check.py")


def _check(part: str) -> dict:
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, str(SCRIPT), part], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
def test_flash_kernel_runs_per_device_without_gathering_qkv():
    report = _check("attention")
    # Without shard_map (GSPMD placing the kernel) the step all-gathers q/k/v-shaped arrays.
    assert report["attention_collectives"] == []
    np.testing.assert_allclose(report["flash_mesh_losses"], report["xla_one_losses"], rtol=1e-5)
    assert report["xla_one_losses"][1] < report["xla_one_losses"][0]


@pytest.mark.slow
def test_lm_head_gathered_once_and_gradient_reduce_scattered_once():
    report = _check("head")
    ops = sorted((c["op"], tuple(c["shapes"][0]), c["in_loop"]) for c in report["head_collectives"])
    # FSDP over 8 devices: the (32, 512) head gathered once, its gradient scattered once as (4, 512) shards.
    assert ops == [("all-gather", (32, 512), False), ("reduce-scatter", (4, 512), False)]
    assert report["loop_collectives"] == []  # nothing per chunk (GSPMD: an all-reduce of the head per chunk)
    for label in ("fsdp", "mesh"):  # FSDP, and (2, 2, 2) with the vocabulary split over the tensor axis
        np.testing.assert_allclose(report[f"head_{label}_losses"], report["head_one_losses"], rtol=1e-5)


def test_1b_step_lowers_for_cuda_with_triton_kernels_and_one_head_gather():
    """What an H100 node would compile (lowered for CUDA on CPU, 8 fake devices, FSDP): the
    flash kernels are Triton calls inside the per-device region, each kernel once (the
    remat policy keeps the forward kernel's residuals), and the only explicit collectives
    are the LM head's single gather and single reduce-scatter."""
    report = _check("cuda")
    assert report["cuda_kernels"] == ["mha_backward", "mha_forward", "mha_preprocess_backward"]
    # remat dots_with_no_batch_dims saves the kernel's residuals: the backward runs no second forward kernel
    assert report["cuda_kernel_calls"] == {"mha_backward": 1, "mha_forward": 1, "mha_preprocess_backward": 1}
    assert report["cuda_triton_calls"] >= 3
    assert report["cuda_collectives"]["all_gather"] == 1 and report["cuda_collectives"]["reduce_scatter"] == 1
