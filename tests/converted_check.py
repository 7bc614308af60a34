"""Run by tests/test_converted.py with 8 fake CPU devices: convert once, restore into a
mesh's shardings, compare with the direct load. Prints one JSON object."""

import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mixjax.model import hf
from mixjax.model.llama import Decoder, ModelConfig
from mixjax.pipeline import converted
from mixjax.train.loop import TrainConfig, Trainer

assert jax.device_count() == 8, jax.devices()
CONFIG = ModelConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, dtype="bfloat16", rope_theta=10_000.0)


def check(root: Path, mesh: tuple[int, int, int]) -> dict:
    params = nn.unbox(Decoder(CONFIG).init(jax.random.key(0), *(jnp.ones((1, 8), jnp.int32),) * 3))["params"]
    hf.save_hf_checkpoint(root / "ckpt", CONFIG, params)
    model = hf.check_hf_checkpoint(root / "ckpt")
    shardings = Trainer(model, TrainConfig(seq_len=16, batch_size=8, mesh_shape=mesh)).state_shardings.params
    direct = hf.load_hf_params(root / "ckpt", model, shardings, dtype="bfloat16")
    lines = []
    for _ in range(2):
        restored = converted.load_init_params(root / "ckpt", model, shardings, root / "init", dtype="bfloat16", log=lines.append)
    pairs = list(zip(jax.tree.leaves(direct), jax.tree.leaves(restored)))
    identical = all(a.sharding == b.sharding and a.dtype == b.dtype and np.array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16))
                    for a, b in pairs)
    return {
        "conversions": sum("converted" in line for line in lines), "identical": identical,
        "sharded_leaves": sum(not b.sharding.is_fully_replicated for _, b in pairs),
        "devices_per_leaf": min(len(b.sharding.device_set) for _, b in pairs),
    }


if __name__ == "__main__":
    report = {}
    for mesh in ((1, 8, 1), (2, 2, 2)):
        with tempfile.TemporaryDirectory() as tmp:
            report[",".join(map(str, mesh))] = check(Path(tmp), mesh)
    json.dump(report, sys.stdout)
    print()
