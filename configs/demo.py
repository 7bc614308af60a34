"""The CPU demo: three embedded synthetic domains (instruct, math, code; see
mixjax/data/synthetic.py), a 0.43M-parameter Llama-style model, byte tokenizer.
13 perturbation runs + 3 validation runs; a few minutes on a laptop CPU.

As in the paper (fixed max steps per budget), every run takes the same number of
optimizer steps: smaller runs repeat their data more, and the best checkpoint by
validation loss absorbs the overfitting. Runs then differ only in what data they saw.

    python -m mixjax.run --config configs/demo.py
"""

from mixjax.data.domain import DomainSpec
from mixjax.pipeline.config import ExperimentConfig, ValidateConfig
from mixjax.train.loop import TrainConfig
from mixjax.train.optimizer import OptimizerConfig

config = ExperimentConfig(
    name="demo",
    domains=tuple(DomainSpec(n, (f"synthetic:{n}:6000",), val_examples=128) for n in ("instruct", "math", "code")),
    base_tokens=20_000,
    target_budgets=(60_000, 120_000),
    model="demo",
    train=TrainConfig(
        seq_len=128, batch_size=16, epochs=1000, max_steps=120,
        optimizer=OptimizerConfig(learning_rate=2e-3, warmup_ratio=0.05),
    ),
    evals_per_run=6,
    validate=ValidateConfig(budget=60_000, baselines=("uniform", "proportional")),
)
