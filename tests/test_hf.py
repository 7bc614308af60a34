"""HF checkpoint conversion. Parity tests need the ``hf`` extra (torch, transformers) and
skip cleanly without it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mixjax.model.llama import Decoder, ModelConfig, RopeScaling

safetensors = pytest.importorskip("safetensors")

from mixjax.model.hf import load_hf_checkpoint, save_hf_checkpoint  # noqa: E402

CONFIG = ModelConfig(
    vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, dtype="float32",
    rope_scaling=RopeScaling(factor=8.0, original_max_position=64),
)


def test_save_load_roundtrip(tmp_path):
    params = nn.unbox(Decoder(CONFIG).init(jax.random.key(0), *(jnp.ones((1, 8), jnp.int32),) * 3))["params"]
    save_hf_checkpoint(tmp_path, CONFIG, params)
    config, loaded = load_hf_checkpoint(tmp_path, dtype="float32")
    assert config == dataclasses.replace(CONFIG, head_dim=CONFIG.head_size)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_checkpoint(tmp_path)


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_logits_match_transformers(tmp_path, family):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
    if family == "llama3":
        hf_config = transformers.LlamaConfig(
            **common, rope_theta=500000.0, tie_word_embeddings=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        )
        model = transformers.LlamaForCausalLM(hf_config)
    else:
        hf_config = transformers.Qwen2Config(**common, rope_theta=1e6, tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(hf_config)
    with torch.no_grad():  # random norms and biases, so the test sees them
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name else 0.0))
    model.eval().save_pretrained(tmp_path, safe_serialization=True)
    config, params = load_hf_checkpoint(tmp_path, dtype="float32")
    tokens = np.random.default_rng(0).integers(0, 96, (2, 40))
    with torch.no_grad():
        expected = model(torch.tensor(tokens)).logits.numpy()
    positions = np.tile(np.arange(40), (2, 1))
    ours = Decoder(config).apply({"params": params}, jnp.asarray(tokens), jnp.asarray(positions), jnp.ones((2, 40), jnp.int32))
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-4, rtol=1e-4)
