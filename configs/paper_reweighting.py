"""The paper's reweighting experiments: re-mix the sources of Tulu3 or Orca SFT data
(max 6,000 steps, batch 256 x 4,096 in the paper). Each source file becomes a domain.

    MIXJAX_MIX=tulu3 MIXJAX_DATA=/data/tulu3 MIXJAX_CKPT=/models/Llama-3.1-8B \\
    python -m mixjax.run --config configs/paper_reweighting.py

$MIXJAX_DATA holds one JSONL file per source (e.g. Tulu3's per-source splits); the
domain names are the file names. The budget defaults to the union of all sources.
``train.max_steps`` (6,000) is a cap: each run trains min(6,000, tokens x epochs /
(batch x seq_len)) steps, so perturbation runs over a few hundred thousand tokens take
only the steps their data gives.
"""

import os
from pathlib import Path

from mixjax.data.domain import DomainSpec
from mixjax.model.llama import PRESETS
from mixjax.pipeline.config import ExperimentConfig, ValidateConfig
from mixjax.train.loop import TrainConfig
from mixjax.train.optimizer import OptimizerConfig

MIX = os.environ.get("MIXJAX_MIX", "tulu3")  # or "orca"
DATA = Path(os.environ.get("MIXJAX_DATA", f"/path/to/{MIX}"))
CKPT = os.environ.get("MIXJAX_CKPT", "/path/to/Llama-3.1-8B")
sources = sorted(DATA.glob("*.jsonl")) or [DATA / "source-a.jsonl", DATA / "source-b.jsonl"]

config = ExperimentConfig(
    name=f"paper-{MIX}-reweighting",
    domains=tuple(DomainSpec(p.stem, (str(p),), val_examples=500) for p in sources),
    base_tokens=int(os.environ.get("MIXJAX_BASE_TOKENS", 660_000)),
    target_budgets=(int(os.environ.get("MIXJAX_BUDGET", 200_000_000)),),
    model=PRESETS["llama3.1-8b"],
    checkpoint=CKPT,
    tokenizer=CKPT,
    train=TrainConfig(
        seq_len=4096, batch_size=16, epochs=3, max_steps=int(os.environ.get("MIXJAX_MAX_STEPS", 6_000)), mesh_shape=(1, -1, 1),
        optimizer=OptimizerConfig(learning_rate=1e-5, warmup_ratio=0.03, min_lr_ratio=0.0),
    ),
    evals_per_run=10,
    validate=ValidateConfig(baselines=("uniform", "proportional")),
    workdir=os.environ.get("MIXJAX_WORKDIR", "experiments"),
)
