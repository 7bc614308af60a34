"""The CPU demo: three embedded synthetic domains (instruct, math, code; see
mixjax/data/synthetic.py), a 0.43M-parameter Llama-style model, byte tokenizer.
13 perturbation runs + 3 validation runs; a few minutes on a laptop CPU.

As in the paper, each run trains a fixed number of epochs over its own data (steps scale
with its tokens) and keeps its best checkpoint. The paper uses 3 epochs of a pretrained
model; this randomly initialised model needs more passes to get out of the phase where
the number of steps, not the data, decides the loss, so the demo uses 10.
"""

from mixjax.data.domain import DomainSpec
from mixjax.pipeline.config import ExperimentConfig, ValidateConfig
from mixjax.train.loop import TrainConfig
from mixjax.train.optimizer import OptimizerConfig

config = ExperimentConfig(
    name="demo",
    domains=tuple(DomainSpec(n, (f"synthetic:{n}:6000",), val_examples=128) for n in ("instruct", "math", "code")),
    base_tokens=8_000,
    target_budgets=(48_000, 96_000),
    model="demo",
    train=TrainConfig(
        seq_len=128, batch_size=16, epochs=10,
        optimizer=OptimizerConfig(learning_rate=2e-3, warmup_ratio=0.05),
    ),
    evals_per_run=6,
    validate=ValidateConfig(budget=48_000, baselines=("uniform", "proportional")),
)
