"""The paper's main experiment: IF / math / code on Llama-3.1-8B, optimised for 5M, 20M
and 200M-token SFT budgets (arXiv 2508.11953). Point the environment variables at local
copies; nothing is downloaded.

    MIXJAX_CKPT=/models/Llama-3.1-8B MIXJAX_DATA=/data/sft \\
    bash launch/submit_multinode.sh 1 configs/paper_if_math_code.py    # or 2 nodes: batch 16 = 1 row per GPU

Data: $MIXJAX_DATA/{if,math,code}.jsonl in Alpaca, ShareGPT or OpenAI format. The paper
uses batches of 256 sequences of up to 4,096 tokens, 3 epochs with a cosine schedule and
max steps 200 / 400 / 2,500 at 5M / 20M / 200M. ``train.max_steps`` is a CAP: each run
trains min(cap, tokens x epochs / (batch x seq_len)) steps, so the perturbation runs
(a few hundred thousand tokens each) take the few dozen steps their data gives and only
runs at the target budget reach the cap. Sequences are packed here, so a batch of
16 x 4,096 packed tokens holds about what 256 unpacked SFT examples do.
"""

import os

from mixjax.data.domain import DomainSpec
from mixjax.model.llama import PRESETS
from mixjax.pipeline.config import ExperimentConfig, ValidateConfig
from mixjax.train.loop import TrainConfig
from mixjax.train.optimizer import OptimizerConfig

DATA = os.environ.get("MIXJAX_DATA", "/path/to/sft-data")
CKPT = os.environ.get("MIXJAX_CKPT", "/path/to/Llama-3.1-8B")
BUDGET = int(os.environ.get("MIXJAX_BUDGET", 5_000_000))
MAX_STEPS = {5_000_000: 200, 20_000_000: 400, 200_000_000: 2_500}

config = ExperimentConfig(
    name=f"paper-if-math-code-{BUDGET // 1_000_000}M",
    domains=tuple(DomainSpec(n, (f"{DATA}/{n}.jsonl",), val_examples=1000) for n in ("if", "math", "code")),
    base_tokens=660_000,  # n = 0.66M tokens per domain, as in the worked example
    target_budgets=(5_000_000, 20_000_000, 200_000_000),
    model=PRESETS["llama3.1-8b"],
    checkpoint=CKPT,
    tokenizer=CKPT,
    train=TrainConfig(
        seq_len=4096, batch_size=16, epochs=3, max_steps=MAX_STEPS.get(BUDGET), mesh_shape=(1, -1, 1),  # FSDP within a node, data parallel across
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_ratio=0.03, min_lr_ratio=0.0, weight_decay=0.0),
    ),
    evals_per_run=10,
    validate=ValidateConfig(budget=BUDGET, baselines=("uniform", "proportional"), grid_step=0.1),
    workdir=os.environ.get("MIXJAX_WORKDIR", "experiments"),
)
