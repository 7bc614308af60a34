"""HF checkpoint conversion. Parity tests need the ``hf`` extra (torch, transformers) and
skip cleanly without it."""

import dataclasses
import re

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


# ---------------------------------------------------------------------- issue 16 item 3


def _hf_checkpoint(tmp_path, family: str, **options):
    """A tiny checkpoint written by transformers' save_pretrained."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
    cls, config_cls = {"llama": ("LlamaForCausalLM", "LlamaConfig"), "qwen2": ("Qwen2ForCausalLM", "Qwen2Config")}[family]
    model = getattr(transformers, cls)(getattr(transformers, config_cls)(**common, **options))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name else 0.0))
    model.eval().save_pretrained(tmp_path, safe_serialization=True)
    return model


@pytest.mark.parametrize(
    "family, options, named",
    [
        ("llama", dict(attention_bias=True), "attention_bias=true"),
        ("llama", dict(mlp_bias=True), "mlp_bias=true"),
        ("llama", dict(hidden_act="gelu"), 'hidden_act="gelu"'),
        ("llama", dict(attention_dropout=0.1), "attention_dropout=0.1"),
        ("llama", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}), "rope_type 'yarn'"),
        ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_type 'linear'"),
        ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1), "use_sliding_window=true with sliding_window=16"),
        ("qwen2", dict(hidden_act="relu"), 'hidden_act="relu"'),
    ],
)
def test_unimplemented_config_fields_are_errors_before_training(tmp_path, family, options, named):
    from mixjax.model.hf import UnsupportedCheckpoint, check_hf_checkpoint

    _hf_checkpoint(tmp_path, family, **options)
    for check in (check_hf_checkpoint, load_hf_checkpoint):
        with pytest.raises(UnsupportedCheckpoint, match="config.json: " + re.escape(named)):
            check(tmp_path)


def test_unconsumed_weights_and_unknown_fields_are_errors(tmp_path):
    import json

    from safetensors.numpy import load_file, save_file

    from mixjax.model.hf import UnsupportedCheckpoint, check_hf_checkpoint

    _hf_checkpoint(tmp_path, "qwen2", tie_word_embeddings=False)
    check_hf_checkpoint(tmp_path)  # as written: every field and tensor implemented
    tensors = load_file(str(tmp_path / "model.safetensors"))
    save_file({**tensors, "model.layers.1.self_attn.q_norm.weight": np.ones(16, np.float32)}, str(tmp_path / "model.safetensors"))
    for check in (check_hf_checkpoint, load_hf_checkpoint):
        with pytest.raises(UnsupportedCheckpoint, match=r"weights that mixjax's converter does not use: model\.layers\.1\.self_attn\.q_norm\.weight;"):
            check(tmp_path)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "attn_logit_softcapping": 30.0}))
    with pytest.raises(UnsupportedCheckpoint, match="config.json: unknown field 'attn_logit_softcapping' for model_type qwen2"):
        check_hf_checkpoint(tmp_path)


def test_head_dim_and_legacy_rope_fields_match_transformers(tmp_path):
    """Implemented options load with transformers' logits: head_dim != hidden/heads, a
    transformers-4 style config.json (rope_theta + rope_scaling) with tied embeddings."""
    import json

    torch = pytest.importorskip("torch")
    model = _hf_checkpoint(tmp_path, "llama", head_dim=32, tie_word_embeddings=True, rope_theta=50_000.0)
    config = json.loads((tmp_path / "config.json").read_text())
    rope = config.pop("rope_parameters")
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_theta": rope["rope_theta"], "rope_scaling": None, "torch_dtype": "float32"}))
    config, params = load_hf_checkpoint(tmp_path, dtype="float32")
    assert config.head_size == 32 and config.rope_theta == 50_000.0 and config.tie_embeddings
    tokens = np.random.default_rng(0).integers(0, 96, (1, 24))
    with torch.no_grad():
        expected = model(torch.tensor(tokens)).logits.numpy()
    ours = Decoder(config).apply({"params": params}, jnp.asarray(tokens), jnp.asarray(np.arange(24)[None]), jnp.ones((1, 24), jnp.int32))
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-4, rtol=1e-4)


def test_pipeline_stops_at_plan_on_an_unimplemented_checkpoint(tmp_path, capsys):
    from pathlib import Path

    from mixjax.run import main

    _hf_checkpoint(tmp_path / "ckpt", "llama", mlp_bias=True)
    capsys.readouterr()  # transformers' own progress output
    tiny = Path(__file__).parent / "fixtures" / "tiny_config.py"
    args = ["--config", str(tiny), "--no-progress", "--stages", "plan,perturb", "--set", f"workdir='{tmp_path}'", f"checkpoint='{tmp_path / 'ckpt'}'"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json: mlp_bias=true is not implemented by mixjax's llama converter" in err and "\n" not in err
    assert not (tmp_path / "tiny" / "runs").exists()  # nothing trained


def test_safetensors_reader_reads_bf16_without_mmap(tmp_path):
    import ml_dtypes

    from mixjax.model.hf import SafetensorsReader, write_safetensors

    a = np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16)
    b = np.linspace(0, 1, 5, dtype=np.float32)
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": a})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": b})
    reader = SafetensorsReader(tmp_path)
    assert reader.names == {"a", "b"}
    assert reader.get("a").dtype == ml_dtypes.bfloat16 and np.array_equal(reader.get("a"), a)
    np.testing.assert_array_equal(reader.get("b"), b)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_load_hf_params_equals_the_host_conversion_and_starts_the_same_run(tmp_path, qkv_bias):
    """Tensor by tensor onto the trainer's devices: the same values as the host conversion;
    Trainer.with_params makes the same float32 state from device arrays (bf16 here, cast
    on the devices) as from host arrays."""
    import ml_dtypes

    from mixjax.model.hf import load_hf_params
    from mixjax.train.loop import TrainConfig, Trainer

    config = dataclasses.replace(CONFIG, qkv_bias=qkv_bias, tie_embeddings=not qkv_bias)
    params = nn.unbox(Decoder(config).init(jax.random.key(0), *(jnp.ones((1, 8), jnp.int32),) * 3))["params"]
    save_hf_checkpoint(tmp_path, config, params)
    loaded_config, host = load_hf_checkpoint(tmp_path, dtype="float32")
    trainer = Trainer(loaded_config, TrainConfig(seq_len=16, batch_size=2))
    device = load_hf_params(tmp_path, loaded_config, trainer.state_shardings.params)
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(device)):
        assert isinstance(b, jax.Array) and b.dtype == jnp.float32
        np.testing.assert_array_equal(a, np.asarray(b))
    bf16 = load_hf_params(tmp_path, loaded_config, trainer.state_shardings.params, dtype="bfloat16")
    state = trainer.init(jax.random.key(1))
    from_device = trainer.with_params(state, bf16).params
    from_host = trainer.with_params(state, jax.tree.map(lambda a: a.astype(ml_dtypes.bfloat16), host)).params
    for a, b in zip(jax.tree.leaves(nn.unbox(from_device)), jax.tree.leaves(nn.unbox(from_host))):
        assert a.dtype == jnp.float32 and a.sharding == b.sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
