"""The CPU demo, a miniature of the paper: three embedded synthetic domains (instruct,
math, code; see mixjax/data/synthetic.py) and a small Llama-style model.

Stage ``pretrain`` first trains the model once on a general plain-text corpus with a BPE
tokenizer and saves it as a local Hugging Face directory (cached under
``experiments/base-models/``); the 13 perturbation runs and 3 validation runs then
fine-tune from it through the same code path as ``checkpoint=/path/to/Llama-3.1-8B``,
with the paper's recipe: 3 epochs, cosine schedule, best checkpoint.
"""

from mixjax.data.domain import DomainSpec
from mixjax.pipeline.config import ExperimentConfig, PretrainConfig, ValidateConfig
from mixjax.train.loop import TrainConfig
from mixjax.train.optimizer import OptimizerConfig

config = ExperimentConfig(
    name="demo",
    domains=tuple(DomainSpec(n, (f"synthetic:{n}:6000",), val_examples=128) for n in ("instruct", "math", "code")),
    base_tokens=6_000,
    target_budgets=(36_000, 72_000),
    model="demo",
    pretrain=PretrainConfig(
        num_documents=5_000, val_documents=256, vocab_size=512,  # ~380k BPE tokens, ~180 steps
        train=TrainConfig(seq_len=128, batch_size=16, epochs=1.0, optimizer=OptimizerConfig(learning_rate=3e-3, warmup_ratio=0.02)),
    ),
    train=TrainConfig(
        seq_len=128, batch_size=8, epochs=3,
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_ratio=0.05),
    ),
    evals_per_run=4,
    validate=ValidateConfig(budget=36_000, baselines=("uniform", "proportional")),
)
