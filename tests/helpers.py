"""Shared test data and helpers (imported as ``from helpers import ...``; fixtures live in
conftest.py)."""

import os
from pathlib import Path

import numpy as np

from mixjax.mixing.law import LawParams, evaluate, token_losses

# The paper's worked example (arXiv 2508.11953; README, "Fit and solve on your own runs"):
# Llama-3.2-3B; IF, math, code; n = 0.66, units of 1e6 tokens.
WORKED_SCALES = np.array([0.25, 0.5, 1.0, 2.0, 3.0])
WORKED_N = 0.66
WORKED_LOSSES = {
    "if": [2.309398127536653, 2.2919550197611414, 2.2601072040502985, 2.2253171055400482, 2.2078428253445472],
    "math": [2.2891207768582373, 2.275715067349909, 2.2601072040502985, 2.2340252519100123, 2.2223123883020706],
    "code": [2.2946755321189904, 2.2822197449260098, 2.2601072040502985, 2.2327336034851544, 2.2183251314478096],
}
PUBLISHED_PARAMS = LawParams(
    beta=np.array([0.051, 0.043, 0.0439]),
    c=np.array([1.156484125642086, 0.7508495582040167, 0.9828179869932256]),
    gamma=np.array([0.19780651007960018, 0.040025262958907154, 0.1260596510875358]),
    alpha=np.array([0.4759641653939281, 0.43503938591132635, 0.46702823082847034]),
    e=np.array([1.0964457298437293, 1.4937431374616452, 1.267061465923874]),
)
PUBLISHED_WEIGHTS = {
    5.0: [0.4116, 0.2684, 0.3200],
    20.0: [0.4200, 0.2573, 0.3227],
    200.0: [0.4231, 0.2513, 0.3256],
}


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python that imports mixjax from this checkout, installed or not."""
    root = str(Path(__file__).parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path, **extra)


def use_train(monkeypatch, fake) -> None:
    """Route the pipeline's training (the runs and the pretrain stage) to ``fake``, which
    takes :func:`mixjax.train.loop.train`'s arguments."""
    from mixjax.pipeline import pretrain, stages

    monkeypatch.setattr(stages, "train", fake)
    monkeypatch.setattr(pretrain, "train", fake)


def law_losses(params, tokens) -> np.ndarray:
    """The law's per-domain losses (R, k) of runs with ``tokens`` (R, k): synthetic tables."""
    return evaluate(token_losses, params, np.asarray(tokens, np.float64))


def two_stage_config(leave_one_out: bool = True, **fields):
    """The FitConfig of the paper's two-stage fit with ``fields`` of its section
    (``leave_one_out=False``: no folds)."""
    from mixjax.mixing.fit import FitConfig, FoldConfig, TwoStageConfig

    return FitConfig(family="paper", paper_fit="two-stage", two_stage=TwoStageConfig(**fields), folds=FoldConfig(enabled=leave_one_out))
