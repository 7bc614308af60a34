"""Bytes a run writes into its checkpoints, at 2 and at 10 evaluations (issue 27 item 1).

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/checkpoint_bytes.py   # from the repository root
    PYTHONPATH=/path/to/an/older/checkout JAX_PLATFORMS=cpu python benchmarks/checkpoint_bytes.py   # "before"

Trains one 20-step run of a small model (dim 64, 2 layers, float32 compute: the CPU demo's)
through ``mixjax.train.loop.train`` with the pipeline's own ``run_train_config`` (the
cadence every perturbation run gets), evaluating 2 or 10 times, and counts the bytes of
every checkpoint step orbax writes (each save waited for and measured before the
preservation policy deletes anything), split into full (params + Adam + data position)
and params-only steps. Also prints what those counts mean for Llama-3.1-8B (8.03e9
params: a full state 12 bytes/param, best params 2 bytes/param in bf16).
"""

from __future__ import annotations

import collections
import dataclasses
import tempfile
from pathlib import Path

import orbax.checkpoint as ocp

from mixjax.data.domain import DomainSpec, load_domains
from mixjax.data.pipeline import select_mixture
from mixjax.data.tokenizer import ByteTokenizer
from mixjax.model.llama import ModelConfig
from mixjax.pipeline.training import run_train_config
from mixjax.train.checkpoint import checkpoint_bytes
from mixjax.train.loop import TrainConfig, Trainer, train
from mixjax.train.optimizer import OptimizerConfig

MODEL = ModelConfig(vocab_size=263, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, dtype="float32",
                    rope_theta=10_000.0, tie_embeddings=True)
STEPS = 20


def measure_saves(written: collections.Counter) -> None:
    """Patch CheckpointManager.save to wait for each save and add its step's bytes to ``written``."""
    save = ocp.CheckpointManager.save

    def counted(self, step, *args, **kwargs):
        out = save(self, step, *args, **kwargs)
        self.wait_until_finished()
        path = Path(self.directory) / str(step)
        kind = "full" if (path / "train").exists() else "params-only"
        written[kind] += checkpoint_bytes(path)
        written[kind + " saves"] += 1
        return out

    ocp.CheckpointManager.save = counted


def main() -> None:
    domains = load_domains([DomainSpec(n, (f"synthetic:{n}:400",), 16) for n in ("instruct", "math")], ByteTokenizer(), 65)
    examples = select_mixture(domains, {"instruct": 8000, "math": 8000}, seed=0)
    val = {n: d.val for n, d in domains.items()}
    base = TrainConfig(seq_len=64, batch_size=8, epochs=3, async_checkpoints=False, optimizer=OptimizerConfig(learning_rate=3e-3))
    trainer = Trainer(MODEL, base)
    params = MODEL.num_params()
    written: collections.Counter = collections.Counter()
    measure_saves(written)
    bf16 = ["bfloat16"] if "best_params_dtype" in TrainConfig.__dataclass_fields__ else []  # after issue 27 only
    for evaluations, dtype in [(2, None), (10, None)] + [(10, d) for d in bf16]:
        written.clear()
        cfg = run_train_config(base, max_steps=STEPS, eval_every=STEPS // evaluations, seed=0, profile=False)
        if dtype:
            cfg = dataclasses.replace(cfg, best_params_dtype=dtype)  # what a bf16 model keeps by default
        with tempfile.TemporaryDirectory() as tmp:
            result = train(trainer, cfg, examples, val, Path(tmp) / "run", progress=False, log=lambda s: None)
        total = written["full"] + written["params-only"]
        full_equiv = total / (params * 12)
        print(f"{evaluations:2d} evaluations{', best in ' + dtype if dtype else ''} ({len(result.history)} done, best step {result.best_step}): {total:,} bytes written"
              f" = {full_equiv:.2f} x the full state; full saves {written['full saves']} ({written['full']:,} B),"
              f" params-only saves {written['params-only saves']} ({written['params-only']:,} B);"
              f" at 8B (these bytes/param): ~{total / params * 8.03e9 / 2**30:,.0f} GiB")


if __name__ == "__main__":
    main()
