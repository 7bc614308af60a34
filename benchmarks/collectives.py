"""Collectives of the train step under FSDP: how many per layer, in which dtype (issue 27 item 5).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/collectives.py [--layers 2] [--seq 256]

Compiles (does not run) the llama3.2-1b train step (its widths, ``--layers`` layers,
bf16 compute, remat dots_with_no_batch_dims) on a (1, 8, 1) FSDP mesh of 8 fake CPU
devices, and counts its all-gathers, reduce-scatters and all-reduces
(mixjax.train.collectives): inside the layer loops (the forward and the backward
``while`` bodies run once per layer) and outside them, by element type, with the MiB
each category moves per step. Two views: after XLA's SPMD partitioner (the same on any
backend: what a GPU moves), and the final XLA:CPU program (whose float-normalization pass
rewrites every bf16 collective as float32: do not read dtypes there). Collectives over
one-device groups are left out; a tuple all-reduce counts once.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from mixjax.model.llama import PRESETS
from mixjax.train.collectives import count_collectives, partitioned_hlo
from mixjax.train.loop import BATCH_KEYS, TrainConfig, Trainer
from mixjax.train.sharding import LOGICAL_RULES


def lowered_step(layers: int, seq: int, batch: int = 8):
    """The lowered train step of llama3.2-1b widths with ``layers`` layers, FSDP over all devices."""
    model = dataclasses.replace(PRESETS["llama3.2-1b"], n_layers=layers)
    trainer = Trainer(model, TrainConfig(seq_len=seq, batch_size=batch, mesh_shape=(1, -1, 1)))
    spec = lambda dtype: jax.ShapeDtypeStruct((1, batch, seq), dtype, sharding=trainer.step_sharding)
    abstract = {k: spec(jnp.float32 if k == "weights" else jnp.int32) for k in BATCH_KEYS}
    with trainer.mesh, nn.logical_axis_rules(LOGICAL_RULES):
        return trainer._train.lower(trainer.abstract_state, abstract)


def table(title: str, counts: dict) -> None:
    print(title)
    print(f"  {'where':9s} {'collective':17s} {'dtype':5s} {'count':>5s} {'MiB':>8s}")
    for (where, op, dtype), (n, mib) in sorted(counts.items()):
        print(f"  {where:9s} {op:17s} {dtype:5s} {n:5d} {mib:8.1f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    args = p.parse_args()
    lowered = lowered_step(args.layers, args.seq)
    print(f"llama3.2-1b widths, {args.layers} layers, seq {args.seq}, batch 8, mesh (1, 8, 1) on {jax.device_count()} {jax.default_backend()} devices")
    table("after the SPMD partitioner (what a GPU moves):", count_collectives(partitioned_hlo(lowered)))
    table("final XLA:CPU program (bf16 collectives normalised to f32):", count_collectives(lowered.compile().as_text()))


if __name__ == "__main__":
    main()
