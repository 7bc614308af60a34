"""Device mesh (data, fsdp, tensor) and the logical-axis rules that place params on it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes. Batch over data x fsdp, weights' embed axis over fsdp
# (ZeRO-3 style), heads / mlp / vocab over tensor (Megatron style).
LOGICAL_RULES: tuple[tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
)


def make_mesh(shape: Sequence[int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; by default every device on the data axis.

    One ``-1`` entry takes the remaining devices, e.g. (-1, 1, 2).
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape or (len(devices), 1, 1))
    if shape.count(-1) == 1:
        shape[shape.index(-1)] = len(devices) // math.prod(s for s in shape if s != -1)
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp"), None))
