"""FSDP moves the weights and the LM head in bf16 (issue 27 item 5): the collectives of a
bf16 model's train step on 8 fake CPU devices, read after XLA's SPMD partitioner
(mixjax.train.collectives; the final XLA:CPU program shows every bf16 collective as f32)."""

import json
import subprocess
import sys

from helpers import subprocess_env

SCRIPT = """
import json
import jax, jax.numpy as jnp
from flax import linen as nn
from mixjax.model.llama import ModelConfig
from mixjax.train.collectives import count_collectives, partitioned_hlo
from mixjax.train.loop import BATCH_KEYS, TrainConfig, Trainer
from mixjax.train.sharding import LOGICAL_RULES

model = ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, tie_embeddings=True, dtype="bfloat16")
trainer = Trainer(model, TrainConfig(seq_len=32, batch_size=8, mesh_shape=(1, -1, 1), loss_chunk=16))
abstract = {k: jax.ShapeDtypeStruct((1, 8, 32), jnp.float32 if k == "weights" else jnp.int32, sharding=trainer.step_sharding) for k in BATCH_KEYS}
with trainer.mesh, nn.logical_axis_rules(LOGICAL_RULES):
    hlo = partitioned_hlo(trainer._train.lower(trainer.abstract_state, abstract))
print(json.dumps([[*key, n] for key, (n, mib) in count_collectives(hlo).items()]))
"""


def test_weights_and_head_gathered_and_scattered_in_bf16():
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = {(where, op, dtype): n for where, op, dtype, n in json.loads(out.stdout)}
    gathers = {k: n for k, n in counts.items() if k[1] == "all-gather" and k[2] != "s32"}  # s32: the targets
    # 7 weights per layer forward, 7 again in the backward pass (remat none: the scan's
    # transpose gathers them again), and the head once: all bf16 (before: the head in f32).
    assert gathers == {("per layer", "all-gather", "bf16"): 14, ("once", "all-gather", "bf16"): 1}
    # The head's gradient: one bf16 reduce-scatter (before: f32); each layer's 7 weight
    # gradients: a bf16 all-reduce of which each device keeps its shard (XLA:GPU's
    # ReduceScatterCreator makes these reduce-scatters).
    assert counts[("once", "reduce-scatter", "bf16")] == 1 and ("once", "reduce-scatter", "f32") not in counts
    assert counts[("per layer", "all-reduce+slice", "bf16")] == 7


def test_casting_the_head_first_changes_no_loss(monkeypatch):
    """compute_head casts what head_logits casts anyway: the same loss, bit for bit; the
    same gradients, but the head's (the tied embedding's), rounded to bf16 once before its
    bf16 reduce-scatter."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    import mixjax.train.step as step
    from mixjax.model.llama import Decoder, ModelConfig

    model = ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, tie_embeddings=True, dtype="bfloat16")
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 512)
    batch = {"inputs": tokens, "targets": jnp.roll(tokens, -1, 1), "weights": jnp.ones((2, 32)), "segment_ids": jnp.ones((2, 32), jnp.int32),
             "positions": jnp.tile(jnp.arange(32), (2, 1))}
    params = Decoder(model).init(jax.random.key(0), tokens, batch["positions"], batch["segment_ids"])["params"]
    run = lambda: jax.jit(jax.value_and_grad(lambda p: step.token_losses(model, p, batch, 16)[0]))(params)
    loss, grads = run()
    monkeypatch.setattr(step, "compute_head", step._head)
    loss_before, grads_before = run()
    assert float(loss) == float(loss_before)
    flat, flat_before = (jax.tree_util.tree_leaves_with_path(nn.unbox(g)) for g in (grads, grads_before))
    for (path, a), (_, b) in zip(flat, flat_before):
        if "embed_tokens" in jax.tree_util.keystr(path):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2 ** -7, atol=2 ** -8 * float(jnp.abs(b).max()))
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
