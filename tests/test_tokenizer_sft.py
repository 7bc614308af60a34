"""A few SFT steps from a saved Hugging Face checkpoint with its own Llama-3-style or
Qwen2.5-style tokenizer and chat template give finite losses (issue 8 item 2). One family
(Llama-3, whose 128,256-row embedding the old extra specials overflowed) to keep it fast.

Kept minimal on purpose: it only needs ``train(trainer, cfg, examples, val_sets, workdir,
init_params=...)`` and ``TrainConfig(seq_len, batch_size, max_steps, eval_every, ...)``."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from mixjax.data.domain import DomainSpec, load_domains  # noqa: E402
from mixjax.data.pipeline import select_mixture  # noqa: E402
from mixjax.data.tokenizer import check_vocab, load_tokenizer  # noqa: E402
from mixjax.model.hf import load_hf_checkpoint, save_hf_checkpoint  # noqa: E402
from mixjax.model.llama import Decoder, ModelConfig  # noqa: E402
from mixjax.train.loop import TrainConfig, Trainer, train  # noqa: E402
from mixjax.train.optimizer import OptimizerConfig  # noqa: E402
from test_tokenizer import build_family  # noqa: E402


def test_sft_steps_from_hf_checkpoint_with_its_tokenizer_are_finite(tmp_path, family="llama3"):
    tokenizer_dir = build_family(tmp_path / "tokenizer", family)
    vocab = load_tokenizer(tokenizer_dir).vocab_size
    config = ModelConfig(
        vocab_size=vocab, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64, dtype="float32",
        qkv_bias=family == "qwen25", tie_embeddings=family == "qwen25",
    )
    params = nn.unbox(Decoder(config).init(jax.random.key(0), *(jnp.ones((1, 8), jnp.int32),) * 3))["params"]
    save_hf_checkpoint(tmp_path / "model", config, params, tokenizer_dir=tokenizer_dir)

    # exactly what a run from checkpoint=/path/to/model does
    model, init_params = load_hf_checkpoint(tmp_path / "model", dtype="float32")
    tok = load_tokenizer(tmp_path / "model")
    assert tok.fingerprint() == load_tokenizer(tokenizer_dir).fingerprint()
    check_vocab(tok, model.vocab_size)
    domains = load_domains([DomainSpec(n, (f"synthetic:{n}:60",), 8) for n in ("instruct", "math")], tok, 129)
    assert all(int(e.tokens.max()) < model.vocab_size for d in domains.values() for e in d.train)
    examples = select_mixture(domains, {"instruct": 1500, "math": 1500}, seed=0)
    cfg = TrainConfig(seq_len=128, batch_size=4, max_steps=3, eval_every=3, checkpoint_every=3, optimizer=OptimizerConfig(learning_rate=1e-3))
    result = train(Trainer(model, cfg), cfg, examples, {n: d.val for n, d in domains.items()}, tmp_path / "run", init_params=init_params, progress=False, log=lambda s: None)
    losses = [v for h in result.history for v in h["losses"].values()]
    assert result.final_step == 3 and losses and all(math.isfinite(v) for v in losses)
    assert all(d.val and all(e.loss_mask.sum() > 0 for e in d.val) for d in domains.values())
    assert all(abs(v - np.log(vocab)) < 1.0 for v in losses)  # a random model: about log(vocab), not 0 (no target)
