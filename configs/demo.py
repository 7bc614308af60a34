"""The CPU demo, a miniature of the paper on a collection built like real SFT mixtures (see
README "The demo"): a large, easy ``general`` domain that touches every skill, a medium
``math`` domain of two-step word problems, and a scarce, hard ``code`` domain whose answers
trace the program in math's step format (mixjax/data/synthetic.py), with a small
Llama-style model.

Stage ``pretrain`` first trains the model once on a general plain-text corpus with a BPE
tokenizer and saves it as a local Hugging Face directory (cached under
``experiments/base-models/``); the 13 perturbation runs and the validation runs (3
mixtures x 3 seeds) then fine-tune from it through the same code path as
``checkpoint=/path/to/Llama-3.1-8B``, with the paper's recipe: 3 epochs, cosine schedule,
best checkpoint.
"""

from mixjax.data.domain import DomainSpec
from mixjax.pipeline.config import ExperimentConfig, PretrainConfig, ValidateConfig
from mixjax.train.loop import TrainConfig
from mixjax.train.optimizer import OptimizerConfig

# Examples per domain (64 distinct ones of each are held out for validation): ~98.7k : 43.9k :
# 9.7k training tokens (BPE, chat template included).
DOMAINS = (("general", "general", 2_560), ("math", "math_steps", 490), ("code", "code_trace", 164))

config = ExperimentConfig(
    name="demo",
    domains=tuple(DomainSpec(name, (f"synthetic:{source}:{count}",), val_examples=64) for name, source, count in DOMAINS),
    base_tokens=3_000,  # the x3 run takes ~9k of code's ~9.7k tokens
    target_budgets=(24_000, 48_000),  # code's availability (<= 9.7k / N) binds the optimum from N ~ 30k
    model="demo",
    pretrain=PretrainConfig(
        num_documents=5_000, val_documents=256, vocab_size=512,  # ~380k BPE tokens, ~180 steps
        train=TrainConfig(seq_len=128, batch_size=16, epochs=1.0, optimizer=OptimizerConfig(learning_rate=3e-3, warmup_ratio=0.02)),
    ),
    train=TrainConfig(
        seq_len=128, batch_size=8, epochs=3,
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_ratio=0.05),
    ),
    evals_per_run=2,
    validate=ValidateConfig(budget=24_000, baselines=("uniform", "proportional"), seeds=3),
)
