"""Run by tests/test_multidevice.py in a subprocess with 8 fake CPU devices (issue 19
items 8 and 10): the compiled train step's collectives around the flash kernel and the
LM head's chunked loss, and its losses against one device. Prints one JSON object.

    python tests/multidevice_check.py [attention] [head] [cuda] [--no-shard-map]   # the latter: GSPMD's placement, to compare
"""

import dataclasses
import json
import re
import sys

import jax
import numpy as np
from flax import linen as nn

import mixjax.model.llama as llama
import mixjax.train.step as step
from mixjax.model.llama import ModelConfig
from mixjax.train.loop import TrainConfig, Trainer, _to_global
from mixjax.train.optimizer import OptimizerConfig
from mixjax.train.sharding import LOGICAL_RULES

assert jax.device_count() == 8, jax.devices()
if "--no-shard-map" in sys.argv:  # what XLA does with the kernel and loss left to GSPMD
    llama.current_mesh = step.current_mesh = lambda: None

B, T = 8, 64
OPT = OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, eps=1e-3)


def batch(vocab: int) -> dict:
    rng = np.random.default_rng(0)
    segments = np.repeat(np.array([[1] * 20 + [2] * 30 + [0] * 14]), B, 0).astype(np.int32)
    return {
        "inputs": rng.integers(0, vocab, (B, T)).astype(np.int32), "targets": rng.integers(0, vocab, (B, T)).astype(np.int32),
        "weights": (rng.random((B, T)) > 0.3).astype(np.float32), "segment_ids": segments,
        "positions": np.tile(np.r_[np.arange(20), np.arange(30), np.zeros(14)], (B, 1)).astype(np.int32),
    }


def hlo_of_step(trainer: Trainer, data: dict) -> tuple[str, str]:
    """(lowered StableHLO, compiled HLO) of the train step."""
    state = trainer.init(jax.random.key(0), 10)
    with trainer.mesh, nn.logical_axis_rules(LOGICAL_RULES):
        global_batch = _to_global({k: v[None] for k, v in data.items()}, trainer.step_sharding)
        lowered = trainer._train.lower(state, global_batch)
        return lowered.as_text(), lowered.compile().as_text()


def losses(trainer: Trainer, data: dict, steps: int = 2) -> list[float]:
    state, out = trainer.init(jax.random.key(0), 10), []
    for _ in range(steps):
        state, metrics = trainer.step(state, data)
        out.append(float(metrics["loss"]))
    return out


COLLECTIVE = re.compile(r"=\s*(\(?[a-z0-9]+\[[0-9,]*\][^ ]*)\s+(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(-start)?\(")


def collectives(hlo: str) -> list[dict]:
    """Every collective of the compiled module: op, result shape(s), whether it runs inside
    a while loop's body (or a computation a body calls), and whether it is trivial (every
    replica group one device)."""
    computations, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current = header.group(1)
            computations[current] = []
        elif current is not None:
            computations[current].append(line)
    calls = {name: set(re.findall(r"(?:body|condition|to_apply|calls|branch_computations)=\{?%?([\w.\-]+)", "\n".join(lines)))
             for name, lines in computations.items()}
    in_loop, todo = set(), [b for lines in computations.values() for b in re.findall(r"body=%?([\w.\-]+)", "\n".join(lines))]
    while todo:
        name = todo.pop()
        if name not in in_loop:
            in_loop.add(name)
            todo.extend(calls.get(name, ()))
    found = []
    for name, lines in computations.items():
        for line in lines:
            m = COLLECTIVE.search(line)
            if m:
                shapes = [tuple(int(x) for x in dims.split(",") if x) for dims in re.findall(r"\[([0-9,]*)\]", m.group(1))]
                trivial = re.search(r"replica_groups=\{(\{\d+\},?)+\}", line) is not None  # groups of one device: no traffic
                found.append({"op": m.group(2), "shapes": shapes, "in_loop": name in in_loop, "trivial": trivial})
    return found


def attention_part(report: dict) -> None:
    """Item 8: flash attention under (data, fsdp, tensor) = (2, 2, 2); q (B, T, 4, 16), k/v (B, T, 2, 16)."""
    model = ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64, head_dim=16,
                        dtype="float32", rope_theta=10_000.0, attention_impl="flash")
    data = batch(64)
    flash_mesh = Trainer(model, TrainConfig(mesh_shape=(2, 2, 2), seq_len=T, batch_size=B, optimizer=OPT))
    found = [c for c in collectives(hlo_of_step(flash_mesh, data)[1]) if not c["trivial"]]
    report["attention_collectives"] = [c for c in found if any(len(s) == 4 and s[1] == T and s[-1] == 16 for s in c["shapes"])]
    report["flash_mesh_losses"] = losses(flash_mesh, data)
    one = Trainer(dataclasses.replace(model, attention_impl="xla"), TrainConfig(mesh_shape=(1, 1, 1), seq_len=T, batch_size=B, optimizer=OPT), jax.devices()[:1])
    report["xla_one_losses"] = losses(one, data)


def head_part(report: dict) -> None:
    """Item 10: the LM head (D=32, V=512, untied) and a 4-chunk loss under FSDP (1, 8, 1) and (2, 2, 2)."""
    model = ModelConfig(vocab_size=512, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64, dtype="float32", rope_theta=10_000.0)
    data = batch(512)
    for label, shape, devices in (("fsdp", (1, 8, 1), None), ("mesh", (2, 2, 2), None), ("one", (1, 1, 1), jax.devices()[:1])):
        trainer = Trainer(model, TrainConfig(mesh_shape=shape, seq_len=T, batch_size=B, loss_chunk=16, optimizer=OPT), devices)
        if label == "fsdp":
            found = [c for c in collectives(hlo_of_step(trainer, data)[1]) if not c["trivial"]]
            report["head_collectives"] = [c for c in found if any(s in ((32, 512), (4, 512)) for s in c["shapes"])]  # the head, a shard
            report["loop_collectives"] = [c for c in found if c["in_loop"]]
        report[f"head_{label}_losses"] = losses(trainer, data)


def cuda_part(report: dict) -> None:
    """The 1B preset's bf16 train step (seq 4096, flash, FSDP over 8 devices) lowered for
    CUDA without a GPU: the Triton kernels, and the head's one gather / one reduce-scatter."""
    import jax.numpy as jnp

    from mixjax.model.llama import PRESETS

    llama.kernel_platform = lambda: "gpu"
    model = dataclasses.replace(PRESETS["llama3.2-1b"], attention_impl="flash", dtype="bfloat16")
    trainer = Trainer(model, TrainConfig(seq_len=4096, batch_size=8, mesh_shape=(1, -1, 1)))
    batch = {k: jax.ShapeDtypeStruct((1, 8, 4096), jnp.float32 if k == "weights" else jnp.int32, sharding=trainer.step_sharding)
             for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
    with trainer.mesh, nn.logical_axis_rules(LOGICAL_RULES):
        text = trainer._train.trace(trainer.abstract_state, batch).lower(lowering_platforms=("cuda",)).as_text()
    names = re.findall(r'name = "(mha\w*)"', text)
    report["cuda_kernels"] = sorted(set(names))
    report["cuda_kernel_calls"] = {n: names.count(n) for n in report["cuda_kernels"]}  # kernels in the lowered module
    report["cuda_triton_calls"] = text.count("__gpu$xla.gpu.triton")
    report["cuda_collectives"] = {op: text.count(f"stablehlo.{op}") for op in ("all_gather", "reduce_scatter", "all_reduce")}


if __name__ == "__main__":
    parts = [a for a in sys.argv[1:] if not a.startswith("--")] or ["attention", "head"]
    report = {}
    for part in parts:
        {"attention": attention_part, "head": head_part, "cuda": cuda_part}[part](report)
    json.dump(report, sys.stdout)
