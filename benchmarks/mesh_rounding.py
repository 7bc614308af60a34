"""Does the device mesh change a run's numbers? (why TrainConfig.mesh_shape is neutral)

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python benchmarks/mesh_rounding.py

Trains the same 40 steps (tiny model, two synthetic domains, default AdamW) on a 1-device
mesh, on 2x2x2 and 4x1x2 meshes, and with another init seed; prints the per-domain
validation losses every 10 steps and their relative difference from the 1-device run.
Measured (2-core CPU): meshes within 4.5e-8 relative, another seed 4e-3 to 3.6e-2.
"""
import jax
from mixjax.model.llama import ModelConfig
from mixjax.train.loop import TrainConfig, Trainer
from mixjax.train.optimizer import OptimizerConfig
from mixjax.data.domain import DomainSpec, load_domains
from mixjax.data.tokenizer import ByteTokenizer
from mixjax.data.pipeline import select_mixture, optimizer_step_batches, multi_domain_eval_batches

model = ModelConfig(vocab_size=264, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, dtype="float32", rope_theta=10_000.0)
domains = load_domains([DomainSpec(n, (f"synthetic:{n}:300",), val_examples=16) for n in ("instruct", "math")], ByteTokenizer(), 97)
ex = select_mixture(domains, {"instruct": 8000, "math": 8000}, 0)
val = {n: d.val for n, d in domains.items()}
out = {}
for label, shape, devices, seed in (("one", (1, 1, 1), jax.devices()[:1], 0), ("mesh", (2, 2, 2), jax.devices(), 0), ("mesh41", (4, 1, 2), jax.devices(), 0), ("seed1", (1, 1, 1), jax.devices()[:1], 1)):
    cfg = TrainConfig(seq_len=96, batch_size=8, mesh_shape=shape, optimizer=OptimizerConfig(learning_rate=3e-3))
    tr = Trainer(model, cfg, devices)
    steps = 40
    state = tr.init(jax.random.key(seed), steps)
    data = iter(optimizer_step_batches(ex, seq_len=96, batch_size=8, grad_accum=1, epochs=3, seed=0, prefetch=0))
    vb = multi_domain_eval_batches(val, seq_len=96, batch_size=8)
    losses = []
    for i in range(steps):
        state, m = tr.step(state, next(data))
        if (i + 1) % 10 == 0:
            losses.append(tr.evaluate(state.params, vb, list(val)))
    out[label] = losses
for i in range(len(out["one"])):
    one = out["one"][i]
    for k in ("mesh", "mesh41", "seed1"):
        print(f"eval {10 * (i + 1)} {k}: " + ", ".join(f"{n} {one[n]:.6f} vs {out[k][i][n]:.6f} rel {abs(one[n] - out[k][i][n]) / one[n]:.2e}" for n in one))
