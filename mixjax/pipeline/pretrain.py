"""The pretrain stage: a base model trained once on a general plain-text corpus, saved as a
local Hugging Face model directory (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json with a chat template) that every SFT run fine-tunes from, through
the same code path as ``checkpoint=/path/to/Llama-3.1-8B``.

The directory is ``<workdir>/base-models/<fingerprint digest>/``: a config that asks for
the same corpus, tokenizer, model and training reuses it; any change makes a new one.
``fingerprint.json`` is written last and marks it complete.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from mixjax.data.corpus import pretraining_corpus, pretraining_data
from mixjax.data.tokenizer import load_tokenizer, train_bpe_tokenizer
from mixjax.io import barrier, is_primary_process, write_json_atomic
from mixjax.model.llama import ModelConfig
from mixjax.train.loop import Trainer, train
from mixjax.pipeline.training import best_params, run_train_config, steps_for_run
from mixjax.pipeline.config import ConfigError, ExperimentConfig, PretrainConfig
from mixjax.pipeline.fingerprint import config_dict, differences, digest, normalise


# The corpus generator's version: part of the base model's fingerprint (bump it when
# mixjax.data.corpus changes what it writes).
CORPUS_VERSION = "corpus-v1"


def base_fingerprint(pretrain: PretrainConfig, model: ModelConfig, seq_len: int) -> dict:
    return normalise({
        "corpus": {"version": CORPUS_VERSION, "num_documents": pretrain.num_documents, "val_documents": pretrain.val_documents, "seed": pretrain.seed},
        "tokenizer": {"kind": "bpe", "vocab_size": pretrain.vocab_size},
        "model": config_dict(model, drop=("vocab_size",)),
        "train": config_dict(pretrain.train),
        "seq_len": seq_len,
    })


def base_model_dir(workdir: str | Path, fingerprint: dict) -> Path:
    return Path(workdir) / "base-models" / digest(fingerprint)[:16]


def existing_base_model(workdir: str | Path, fingerprint: dict) -> Path | None:
    """The complete base model directory for ``fingerprint``: its own digest's, else one
    whose recorded fingerprint differs only in fields declared neutral since it was
    written (e.g. ``train.prefetch``), so such a declaration retrains nothing."""
    exact = base_model_dir(workdir, fingerprint)
    if (exact / "fingerprint.json").exists():
        return exact
    for record in sorted((Path(workdir) / "base-models").glob("*/fingerprint.json")):
        if not differences(json.loads(record.read_text()).get("fingerprint", {}), fingerprint):
            return record.parent
    return None


def ensure_base_model(
    pretrain: PretrainConfig, model: ModelConfig, workdir: str | Path, *, log: Callable[[str], None] = print,
    progress: bool = True, profile: bool = False,
) -> Path:
    """The base model directory for this config: reused when complete, else trained now."""
    tc = pretrain.train
    fingerprint = base_fingerprint(pretrain, model, tc.seq_len)
    out = existing_base_model(workdir, fingerprint)
    if out is not None:
        log(f"pretrain: reusing the base model {out}")
        return out
    out = base_model_dir(workdir, fingerprint)
    primary = is_primary_process()
    tok_dir = out / "tokenizer"
    if primary:
        train_bpe_tokenizer(pretraining_corpus(pretrain.num_documents, pretrain.seed), pretrain.vocab_size, tok_dir)
    barrier("mixjax-pretrain-tokenizer")
    tokenizer = load_tokenizer(tok_dir)
    model = dataclasses.replace(model, vocab_size=tokenizer.vocab_size)
    examples, val_examples = pretraining_data(tokenizer, pretrain.num_documents, pretrain.val_documents, pretrain.seed, tc.seq_len + 1)
    val = {"corpus": val_examples}
    tokens = sum(e.num_tokens for e in examples)
    steps = steps_for_run(examples, tc)
    cfg = run_train_config(tc, max_steps=steps, eval_every=max(1, steps // 4), seed=pretrain.seed, profile=profile)
    cfg = dataclasses.replace(cfg, best_params_dtype="float32")  # the base model's weights: its float32 master params
    log(f"pretrain: {len(examples):,} documents, {tokens:,} tokens, BPE vocabulary {tokenizer.vocab_size}, {steps} steps -> {out}")
    run_dir = out / "train"
    trainer = Trainer(model, cfg)
    train(trainer, cfg, examples, val, run_dir, progress=progress, log=log)
    params = best_params(trainer, run_dir)
    if primary:
        from mixjax.model.hf import save_hf_checkpoint

        save_hf_checkpoint(out, model, params)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tok_dir / name, out / name)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the HF directory holds the best weights
        result = json.loads((run_dir / "result.json").read_text())
        write_json_atomic(out / "fingerprint.json", {"fingerprint": fingerprint, "best_losses": result["best_losses"], "steps": steps})
    barrier("mixjax-pretrain-done")
    log(f"pretrain: base model saved to {out}")
    return out


def fine_tuning_config(
    config: ExperimentConfig, *, build: bool = True, log: Callable[[str], None] = print, progress: bool = True,
    profile: bool = False,
) -> ExperimentConfig:
    """The config the SFT runs use: for a config with ``pretrain=``, ``checkpoint`` and
    ``tokenizer`` point at its base model directory (its BPE tokenizer, not the config's
    ``tokenizer``); other configs unchanged. The one place the pipeline and ``mixjax.mix``
    resolve the model and tokenizer.

    Args:
      build: pretrain the base model when it is missing; with False that is a ConfigError.
    Raises:
      ConfigError: ``build`` is False and the base model has not been trained.
    """
    if config.pretrain is None:
        return config
    if build:
        base = ensure_base_model(
            config.pretrain, config.model_config(), config.workdir, log=log, progress=progress, profile=profile,
        )
    else:
        fingerprint = base_fingerprint(config.pretrain, config.model_config(), config.pretrain.train.seq_len)
        base = existing_base_model(config.workdir, fingerprint)
        if base is None:
            raise ConfigError(
                f"pretrain: no base model at {base_model_dir(config.workdir, fingerprint)};"
                " run `python -m mixjax.run --config ... --stages pretrain` first"
            )
    return dataclasses.replace(config, checkpoint=str(base), tokenizer=str(base))
