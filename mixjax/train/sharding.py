"""Device mesh (data, fsdp, tensor) and the logical-axis rules that place params on it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

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


def resolve_mesh_shape(shape: Sequence[int] | None, device_count: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes on ``device_count`` devices; by default every device
    on the data axis, and one ``-1`` entry takes the remaining devices, e.g. (-1, 1, 2).
    ValueError when the sizes do not multiply to ``device_count``."""
    shape = list(shape or (device_count, 1, 1))
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) == 1:
        shape[shape.index(-1)] = device_count // max(1, math.prod(s for s in shape if s != -1))
    if math.prod(shape) != device_count or min(shape) < 1:
        raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, have {device_count}")
    return tuple(shape)


def mesh_sizes(shape: Sequence[int] | None, device_count: int, dcn_shape: Sequence[int] | None = None, nodes: int = 1) -> tuple[int, int, int]:
    """The global (data, fsdp, tensor) sizes. Without ``dcn_shape``: ``shape`` over all
    ``device_count`` devices. With it (MaxText's dcn/ici split): ``shape`` lays out the
    devices of ONE node (``device_count // nodes``) and ``dcn_shape`` the ``nodes``; the
    sizes multiply, e.g. (1, -1, 1) within 8-GPU nodes and (-1, 1, 1) across 4 nodes give
    (4, 8, 1): FSDP over NVLink, data parallel over the network. ValueError on a mismatch."""
    if dcn_shape is None:
        return resolve_mesh_shape(shape, device_count)
    if nodes < 1 or device_count % nodes:
        raise ValueError(f"{device_count} devices do not split evenly over {nodes} nodes")
    ici, dcn = resolve_mesh_shape(shape, device_count // nodes), resolve_mesh_shape(dcn_shape, nodes)
    return tuple(i * d for i, d in zip(ici, dcn))


def batch_split_error(
    batch_size: int, shape: Sequence[int] | None, device_count: int, key: str = "train",
    dcn_shape: Sequence[int] | None = None, nodes: int = 1,
) -> str | None:
    """Why a global batch of ``batch_size`` rows cannot be split over the data-parallel
    devices (data x fsdp) of the mesh (:func:`mesh_sizes`), with the numbers and the fix;
    None when it can. Each data-parallel device holds whole rows (``batch_sharding``), so
    data x fsdp must divide the batch (else jax raises at the first step)."""
    try:
        data, fsdp, tensor = mesh_sizes(shape, device_count, dcn_shape, nodes)
    except ValueError as err:
        return f"{key}.mesh_shape: {err}"
    parallel = data * fsdp
    if batch_size % parallel == 0:
        return None
    where = f"{device_count} devices" if dcn_shape is None else f"{nodes} nodes x {device_count // nodes} devices"
    head = (
        f"{key}.batch_size={batch_size} cannot be split over the {parallel} data-parallel devices"
        f" (mesh (data, fsdp, tensor) = ({data}, {fsdp}, {tensor}) on {where}; every device"
        f" needs whole rows): set {key}.batch_size to a multiple of {parallel}"
        f" (e.g. --set {key}.batch_size={-(-batch_size // parallel) * parallel})"
    )
    if dcn_shape is None:
        rows = math.gcd(batch_size, device_count)
        return head + f", or {key}.mesh_shape so that data x fsdp divides {batch_size} (e.g. --set '{key}.mesh_shape=({rows},1,{device_count // rows})')"
    return head + _node_fixes(batch_size, device_count // nodes, resolve_mesh_shape(dcn_shape, nodes), key)


def _node_fixes(batch_size: int, per_node: int, dcn: tuple[int, int, int], key: str) -> str:
    """The multi-node fixes: tensor parallelism within each node, or fewer nodes."""
    across = dcn[0] * dcn[1]
    tensor = next((t for t in range(2, per_node + 1) if per_node % t == 0 and batch_size % (across * per_node // t) == 0), None)
    fixes = [f"--set '{key}.mesh_shape=(1,-1,{tensor})' (tensor parallel over {tensor} devices of a node)"] if tensor else []
    fewer = [n for n in range(across - 1, 0, -1) if batch_size % (n * per_node) == 0]
    fixes += [f"sbatch --nodes={fewer[0]}"] if fewer and dcn[2] == 1 else []
    return "".join(f", or {fix}" for fix in fixes)


def make_mesh(
    shape: Sequence[int] | None = None, devices: Sequence[jax.Device] | None = None, dcn_shape: Sequence[int] | None = None,
) -> Mesh:
    """A (data, fsdp, tensor) mesh; by default every device on the data axis.

    One ``-1`` entry takes the remaining devices, e.g. (-1, 1, 2). With ``dcn_shape``,
    ``shape`` lays out each process's devices (one process per node) and ``dcn_shape`` the
    processes (:func:`hybrid_device_grid`).
    """
    devices = list(devices if devices is not None else jax.devices())
    if dcn_shape is None:
        return Mesh(np.asarray(devices).reshape(resolve_mesh_shape(shape, len(devices))), MESH_AXES)
    return Mesh(hybrid_device_grid(devices, shape, dcn_shape, node_of=lambda d: d.process_index), MESH_AXES)


def hybrid_device_grid(devices: Sequence, shape: Sequence[int] | None, dcn_shape: Sequence[int], node_of: Callable) -> np.ndarray:
    """Devices (any objects with an ``id``) as a (data, fsdp, tensor) array: each node's
    devices (``node_of(device)``, ordered by id) laid out by ``shape``, the nodes by
    ``dcn_shape`` (:func:`mesh_sizes`). Along every axis the node index varies slowest, so
    an axis that ``dcn_shape`` leaves at 1 has all its devices, and its collectives, within
    one node. ValueError when nodes hold different numbers of devices."""
    groups: dict = {}
    for d in sorted(devices, key=lambda d: d.id):
        groups.setdefault(node_of(d), []).append(d)
    sizes = {len(g) for g in groups.values()}
    if len(sizes) != 1:
        raise ValueError(f"nodes hold different numbers of devices: {sorted(sizes)}")
    ici, dcn = resolve_mesh_shape(shape, sizes.pop()), resolve_mesh_shape(dcn_shape, len(groups))
    grid = np.empty((len(groups), *ici), dtype=object)
    for i, key in enumerate(sorted(groups)):
        grid[i] = np.asarray(groups[key], dtype=object).reshape(ici)
    return grid.reshape(*dcn, *ici).transpose(0, 3, 1, 4, 2, 5).reshape([d * i for d, i in zip(dcn, ici)])


def current_mesh() -> Mesh | AbstractMesh | None:
    """The mesh a step is being traced under: ``jax.set_mesh``'s (abstract inside jit),
    else the legacy ``with mesh:`` context's (the Trainer's); None outside any mesh. Code
    that places explicit per-device computations (``shard_map``) reads it at trace time."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        from jax._src.mesh import thread_resources  # `with mesh:` sets only this (jax 0.10)

        mesh = thread_resources.env.physical_mesh
    return None if mesh.empty else mesh


def constrain(x: jax.Array, logical_axes: tuple[str, ...]) -> jax.Array:
    """``x`` placed on the mesh the step is traced under as its logical axes say (rules:
    flax's ``logical_axis_rules`` context), a dimension left unsplit where its size does
    not divide its mesh axes; unchanged outside a mesh, on one device or without rules.

    flax's ``nn.with_logical_constraint`` sees only ``jax.set_mesh``'s mesh, so under the
    Trainer's ``with mesh:`` it constrained nothing and XLA chose the activations'
    placement by itself (with FSDP it may split them along ``embed`` instead of the batch).
    """
    mesh = current_mesh()
    if mesh is None or mesh.size == 1 or not nn.get_logical_axis_rules():
        return x  # no rules: no placement to impose (as flax's)
    axes = nn.logical_to_mesh_axes(logical_axes)
    spec = [a if a is None or n % axis_size(mesh, a) == 0 else None for a, n in zip(axes, x.shape)]
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))


def axis_size(mesh: Mesh, axes) -> int:
    """Devices along mesh axis ``axes`` (a name, a tuple of names, or None: 1)."""
    if axes is None:
        return 1
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp"), None))
