"""MFU's peak table: exact device_kind strings as jax reports them (issue 19 item 7)."""

import types

import pytest

from mixjax.train.metrics import PEAK_FLOPS, peak_flops, total_peak_flops

# device_kind as jax reports it -> datasheet dense bf16 TFLOP/s of one device.
KINDS = {
    "NVIDIA H100 80GB HBM3": 989,  # SXM
    "NVIDIA H100 PCIe": 756,
    "NVIDIA H100 NVL": 835,
    "NVIDIA H200": 989,
    "NVIDIA H200 NVL": 835,
    "NVIDIA GH200 480GB": 989,
    "NVIDIA A100-SXM4-40GB": 312,
    "NVIDIA A100-SXM4-80GB": 312,
    "NVIDIA A100-PCIE-40GB": 312,
    "NVIDIA A100 80GB PCIe": 312,
    "NVIDIA A10": 125,
    "NVIDIA L4": 121,
    "NVIDIA L40": 181,
    "NVIDIA L40S": 362,
    "TPU v4": 275,
    "TPU v5 lite": 197,
    "TPU v5": 459,  # v5p, as jax names it
    "TPU v6 lite": 918,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_peak_per_device_kind(kind):
    assert peak_flops(kind) == KINDS[kind] * 1e12


def test_table_has_exactly_the_tested_kinds():
    assert set(PEAK_FLOPS) == set(KINDS)


@pytest.mark.parametrize("kind", ["cpu", "Host", "NVIDIA H100", "H100", "TPU v5e", "NVIDIA L4S", "NVIDIA GeForce RTX 4090"])
def test_unknown_or_partial_kinds_give_no_peak(kind):
    """No substring matching: a kind that is not exactly in the table has no peak."""
    assert peak_flops(kind) is None


def test_total_peak_is_per_device_peak_times_devices():
    dev = lambda kind: types.SimpleNamespace(device_kind=kind)
    assert total_peak_flops([dev("NVIDIA H100 PCIe")] * 8) == 8 * 756e12
    assert total_peak_flops([dev("TPU v5")] * 4) == 4 * 459e12
    assert total_peak_flops([dev("NVIDIA H100 PCIe"), dev("cpu")]) is None
    assert total_peak_flops([]) is None
