"""The pipeline's one point of contact with the trainer, the tokenizers, the pretraining
corpus and the mixing package's feasibility check.

Every call the stages make into those parts goes through a function here, so a change of
their API is a change of this file only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mixjax.data.domain import Example
from mixjax.data.tokenizer import SPECIALS, ByteTokenizer, HFTokenizer, Tokenizer
from mixjax.model.llama import ModelConfig
from mixjax.train.loop import TrainConfig, train

TrainFn = Callable[..., object]  # the signature of mixjax.train.loop.train
DEFAULT_TRAIN: TrainFn = train


class VocabError(ValueError):
    """A tokenizer whose ids exceed the model's embedding rows."""


# ------------------------------------------------------------------ tokenizers


def load_tokenizer(spec: str) -> Tokenizer:
    """"byte" or a local tokenizer directory / tokenizer.json."""
    return ByteTokenizer() if spec == "byte" else HFTokenizer(spec)


def tokenizer_fingerprint(spec: str, tokenizer: Tokenizer) -> str:
    """Content hash of the tokenizer files ("byte" for the byte tokenizer)."""
    if spec == "byte":
        return "byte"
    path = Path(spec)
    files = [path / "tokenizer.json", path / "tokenizer_config.json"] if path.is_dir() else [path, path.with_name("tokenizer_config.json")]
    digest = hashlib.sha256()
    for f in files:
        if f.exists():
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    if tokenizer.vocab_size > model_vocab_size:
        raise VocabError(
            f"the tokenizer has {tokenizer.vocab_size:,} ids but the model only {model_vocab_size:,} embedding rows;"
            " use the checkpoint's own tokenizer"
        )


# ------------------------------------------------------------------ pretraining corpus


CORPUS_VERSION = "synthetic-flattened-v1"  # part of the base model's fingerprint


def pretraining_corpus(num_documents: int, seed: int) -> list[str]:
    """General plain text sharing vocabulary and skills with the synthetic SFT domains.

    Stand-in until mixjax.data.corpus lands: synthetic conversations of every domain,
    flattened to plain text, drawn from a seed stream the SFT domains do not use.
    """
    from mixjax.data import synthetic

    per_domain = -(-num_documents // len(synthetic.DOMAINS))
    docs = []
    for name in synthetic.DOMAINS:
        for conversation in synthetic.generate(name, per_domain, seed=10_007 + seed):
            docs.append("\n".join(text for _, text in conversation))
    order = np.random.default_rng(seed).permutation(len(docs))[:num_documents]
    return [docs[i] for i in order]


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{{ eos_token }}"
)


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int, out_dir: str | Path) -> Path:
    """A byte-level BPE trained on ``texts``; writes tokenizer.json + tokenizer_config.json
    (with the chat template) into ``out_dir``. Stand-in until mixjax.data.tokenizer's lands."""
    from tokenizers import Tokenizer as _Tokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(list(texts), trainer)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "chat_template": CHAT_TEMPLATE}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return out_dir


def text_examples(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> list[Example]:
    """Plain-text pretraining examples (loss on every token), cut into pieces of max_len."""
    special = getattr(tokenizer, "special", None)  # today's tokenizers; the ChatML ones may have none
    around = ([special("<bos>")], [special("<eos>")]) if special is not None else ([], [])
    out = []
    for text in texts:
        ids = np.asarray([*around[0], *tokenizer.encode(text), *around[1]], np.int32)
        for start in range(0, len(ids) - 1, max_len):
            piece = ids[start : start + max_len]
            if len(piece) >= 2:
                out.append(Example(piece, np.ones_like(piece)))
    return out


# ------------------------------------------------------------------ training


def run_train_config(base: TrainConfig, *, max_steps: int, eval_every: int, seed: int, profile: bool) -> TrainConfig:
    """The TrainConfig of one run: its exact step count, eval/checkpoint cadence and seed."""
    cfg = dataclasses.replace(base, max_steps=max_steps, eval_every=eval_every, checkpoint_every=eval_every, seed=seed)
    if hasattr(cfg, "profile"):  # TrainConfig.profile arrives with the train branch
        cfg = dataclasses.replace(cfg, profile=profile)
    return cfg


def make_trainer(model: ModelConfig, cfg: TrainConfig):
    """One Trainer (one compile) shared by every run of a stage. Today's Trainer bakes the
    schedule length into its compiled step, so each run builds its own: None."""
    return None


def call_train(train_fn: TrainFn, model: ModelConfig, cfg: TrainConfig, examples, val_sets, workdir, *, init_params, progress, log, trainer=None):
    kwargs = {"trainer": trainer} if trainer is not None else {}
    return train_fn(model, cfg, examples, val_sets, workdir, init_params=init_params, progress=progress, log=log, **kwargs)


# Errors of one run that the pipeline records and moves past (NonFiniteLossError and
# DataExhaustedError are RuntimeErrors).
RUN_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, FloatingPointError)


def best_params(model: ModelConfig, cfg: TrainConfig, run_dir: str | Path):
    """The unboxed float32 parameters of a finished run's best checkpoint (host numpy)."""
    import jax
    from flax import linen as nn

    from mixjax.train.checkpoint import RunCheckpoints
    from mixjax.train.loop import Trainer

    trainer = Trainer(model, cfg, cfg.max_steps or 1)
    checkpoints = RunCheckpoints(Path(run_dir) / "checkpoints")
    try:
        restored = checkpoints.restore_best(trainer.abstract_state)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{run_dir}: no best checkpoint")
    return jax.device_get(nn.unbox(restored[0].params))


# ------------------------------------------------------------------ mixing


def feasible_mask(weights: np.ndarray, budget: float, constraints) -> np.ndarray:
    """Mixtures (rows of ``weights``) within the bounds whose shares every domain can supply
    (w_i N <= D_i). Stand-in for mixjax.mixing.baselines.feasible_mask (same signature)."""
    w = np.atleast_2d(np.asarray(weights, np.float64))
    tol = 1e-9
    lower, upper = np.asarray(constraints.lower), np.asarray(constraints.upper)
    in_bounds = np.all((w >= lower - tol) & (w <= upper + tol), axis=1)
    supplied = np.all(w * budget <= np.asarray(constraints.available, np.float64) * (1 + tol), axis=1)
    return in_bounds & supplied
