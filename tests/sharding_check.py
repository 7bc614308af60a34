"""Run by tests/test_train.py in a subprocess with 8 fake CPU devices: the same train step
on a 1-device mesh and on a 2x2x2 (data, fsdp, tensor) mesh must agree."""

import json
import re
import sys

import jax
import numpy as np
from flax import linen as nn

from mixjax.model.llama import ModelConfig
from mixjax.train.loop import TrainConfig, Trainer, _to_global
from mixjax.train.optimizer import OptimizerConfig
from mixjax.train.sharding import LOGICAL_RULES

assert jax.device_count() == 8, jax.devices()
model = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, dtype="float32", rope_theta=10_000.0)
rng = np.random.default_rng(0)
batch = {
    "inputs": rng.integers(0, 64, (8, 16)).astype(np.int32),
    "targets": rng.integers(0, 64, (8, 16)).astype(np.int32),
    "weights": (rng.random((8, 16)) > 0.3).astype(np.float32),
    "segment_ids": np.repeat(np.array([[1] * 6 + [2] * 7 + [0] * 3]), 8, 0).astype(np.int32),
    "positions": np.tile(np.r_[np.arange(6), np.arange(7), np.zeros(3)], (8, 1)).astype(np.int32),
}
# eps=1e-3: Adam's first update is ~lr * g / (|g| + eps); with the default 1e-8 it turns
# float reduction-order noise in near-zero gradients into O(lr) differences.
results = {}
for label, shape, devices in (("one", (1, 1, 1), jax.devices()[:1]), ("mesh", (2, 2, 2), jax.devices())):
    trainer = Trainer(model, TrainConfig(mesh_shape=shape, optimizer=OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, eps=1e-3)), devices)
    state = trainer.init(jax.random.key(0), 10)
    losses = []
    for i in range(3):
        state, metrics = trainer.step(state, batch)
        losses.append(float(metrics["loss"]))
        if i == 0:  # params after one step (later Adam steps amplify reduction-order noise)
            params = jax.tree.map(lambda a: np.asarray(jax.device_get(a)), nn.unbox(state.params))
    q_sharding = nn.unbox(state.params)["layers"]["self_attn"]["q_proj"]["kernel"].sharding
    results[label] = (losses, params, str(q_sharding.spec))
one, mesh = results["one"], results["mesh"]
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(one[1]), jax.tree.leaves(mesh[1])))

# FSDP over all 8 devices: the activations' placement in the compiled step. The blocks'
# batch constraint must reach the program (under the Trainer's `with mesh:`, flax's
# with_logical_constraint did not: XLA split activations along embed like the params and
# moved them back and forth with all-to-alls).
fsdp = Trainer(model, TrainConfig(batch_size=8, seq_len=16, mesh_shape=(1, 8, 1)), jax.devices())
fsdp_state = fsdp.init(jax.random.key(0), 10)
with fsdp.mesh, nn.logical_axis_rules(LOGICAL_RULES):
    lowered = fsdp._train.lower(fsdp_state, _to_global({k: v[None] for k, v in batch.items()}, fsdp.step_sharding))
compiled = lowered.compile().as_text()
collectives = {op: len(re.findall(rf"\s{op}(?:-start)?\(", compiled)) for op in ("all-gather", "all-to-all", "all-reduce", "reduce-scatter")}
json.dump({"loss_one": one[0], "loss_mesh": mesh[0], "max_param_diff": diff, "q_spec": mesh[2],
           "fsdp_constraints": lowered.as_text().count("sharding_constraint"), "fsdp_collectives": collectives}, sys.stdout)
