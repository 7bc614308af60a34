"""Hugging Face checkpoints (Llama-3.x, Qwen2.5) <-> mixjax Flax params.

Reads ``config.json`` and ``*.safetensors`` from a local directory (never downloads) and
writes them back, so a fine-tuned model can be used by any HF-compatible tool.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mixjax.model.llama import ModelConfig, RopeScaling

Params = dict[str, Any]


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    kind = hf.get("model_type")
    if kind not in ("llama", "qwen2"):
        raise ValueError(f"unsupported model_type {kind!r} (supported: llama, qwen2)")
    # transformers >= 5 writes "rope_parameters"; older checkpoints "rope_theta" + "rope_scaling".
    scaling = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = scaling.pop("rope_theta", None) or hf.get("rope_theta", 10_000.0)
    kind_of_rope = scaling.get("rope_type", scaling.get("type", "default"))
    rope = None
    if kind_of_rope == "llama3":
        rope = RopeScaling(
            factor=scaling["factor"], low_freq_factor=scaling["low_freq_factor"], high_freq_factor=scaling["high_freq_factor"],
            original_max_position=scaling["original_max_position_embeddings"],
        )
    elif kind_of_rope != "default":
        raise ValueError(f"unsupported rope scaling {scaling}")
    config = ModelConfig(
        vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        hidden_dim=hf["intermediate_size"], head_dim=hf.get("head_dim"), norm_eps=hf.get("rms_norm_eps", 1e-5),
        rope_theta=theta, rope_scaling=rope, qkv_bias=kind == "qwen2" or hf.get("attention_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )
    return ModelConfig(**{**config.__dict__, **overrides})


def config_to_hf(config: ModelConfig) -> dict:
    hf = {
        "model_type": "qwen2" if config.qkv_bias else "llama",
        "architectures": ["Qwen2ForCausalLM" if config.qkv_bias else "LlamaForCausalLM"],
        "vocab_size": config.vocab_size, "hidden_size": config.dim, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "intermediate_size": config.hidden_dim, "head_dim": config.head_size, "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta, "tie_word_embeddings": config.tie_embeddings, "hidden_act": "silu",
        "torch_dtype": "float32", "max_position_embeddings": 131072,
    }
    if config.rope_scaling is not None:
        s = config.rope_scaling
        hf["rope_scaling"] = {
            "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_position,
        }
    return hf


def _read_tensors(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors files")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def params_from_hf(tensors: dict[str, np.ndarray], config: ModelConfig) -> Params:
    """Map HF tensor names (Linear weights are (out, in)) onto the Flax tree (kernels (in, out))."""
    d, h, n, kv = config.dim, config.head_size, config.n_heads, config.n_kv_heads
    get = lambda name: tensors[name].astype(np.float32)
    layer = lambda i, name: get(f"model.layers.{i}.{name}")
    stack = lambda fn: np.stack([fn(i) for i in range(config.n_layers)])
    attn: Params = {
        "q_proj": {"kernel": stack(lambda i: layer(i, "self_attn.q_proj.weight").T.reshape(d, n, h))},
        "k_proj": {"kernel": stack(lambda i: layer(i, "self_attn.k_proj.weight").T.reshape(d, kv, h))},
        "v_proj": {"kernel": stack(lambda i: layer(i, "self_attn.v_proj.weight").T.reshape(d, kv, h))},
        "o_proj": {"kernel": stack(lambda i: layer(i, "self_attn.o_proj.weight").T.reshape(n, h, d))},
    }
    if config.qkv_bias:
        for proj, heads in (("q_proj", n), ("k_proj", kv), ("v_proj", kv)):
            attn[proj]["bias"] = stack(lambda i, p=proj, m=heads: layer(i, f"self_attn.{p}.bias").reshape(m, h))
    params: Params = {
        "embed_tokens": {"embedding": get("model.embed_tokens.weight")},
        "layers": {
            "self_attn": attn,
            "mlp": {p: {"kernel": stack(lambda i, p=p: layer(i, f"mlp.{p}.weight").T)} for p in ("gate_proj", "up_proj", "down_proj")},
            "input_layernorm": {"scale": stack(lambda i: layer(i, "input_layernorm.weight"))},
            "post_attention_layernorm": {"scale": stack(lambda i: layer(i, "post_attention_layernorm.weight"))},
        },
        "norm": {"scale": get("model.norm.weight")},
    }
    if not config.tie_embeddings:
        params["lm_head"] = {"kernel": get("lm_head.weight").T}
    return params


def params_to_hf(params: Params, config: ModelConfig) -> dict[str, np.ndarray]:
    d, h, n, kv = config.dim, config.head_size, config.n_heads, config.n_kv_heads
    p = lambda *keys: np.asarray(_dig(params, keys), np.float32)
    out = {"model.embed_tokens.weight": p("embed_tokens", "embedding"), "model.norm.weight": p("norm", "scale")}
    if not config.tie_embeddings:
        out["lm_head.weight"] = p("lm_head", "kernel").T
    attn, mlp = ("layers", "self_attn"), ("layers", "mlp")
    for i in range(config.n_layers):
        pre = f"model.layers.{i}."
        out[pre + "self_attn.q_proj.weight"] = p(*attn, "q_proj", "kernel")[i].reshape(d, n * h).T
        out[pre + "self_attn.k_proj.weight"] = p(*attn, "k_proj", "kernel")[i].reshape(d, kv * h).T
        out[pre + "self_attn.v_proj.weight"] = p(*attn, "v_proj", "kernel")[i].reshape(d, kv * h).T
        out[pre + "self_attn.o_proj.weight"] = p(*attn, "o_proj", "kernel")[i].reshape(n * h, d).T
        if config.qkv_bias:
            for proj in ("q_proj", "k_proj", "v_proj"):
                out[pre + f"self_attn.{proj}.bias"] = p(*attn, proj, "bias")[i].reshape(-1)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            out[pre + f"mlp.{proj}.weight"] = p(*mlp, proj, "kernel")[i].T
        out[pre + "input_layernorm.weight"] = p("layers", "input_layernorm", "scale")[i]
        out[pre + "post_attention_layernorm.weight"] = p("layers", "post_attention_layernorm", "scale")[i]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _dig(tree: Params, keys) -> Any:
    for k in keys:
        tree = tree[k]
    return tree


def load_hf_checkpoint(path: str | Path, **overrides) -> tuple[ModelConfig, Params]:
    """(config, float32 unboxed params) from a local HF model directory."""
    directory = Path(path)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory}: no config.json (expected a local Hugging Face model directory)")
    config = config_from_hf(json.loads((directory / "config.json").read_text()), **overrides)
    return config, params_from_hf(_read_tensors(directory), config)


def save_hf_checkpoint(path: str | Path, config: ModelConfig, params: Params, tokenizer_dir: str | Path | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` (and, given ``tokenizer_dir``, its tokenizer files)."""
    from safetensors.numpy import save_file

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(params_to_hf(params, config), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config_to_hf(config), indent=1))
    if tokenizer_dir is not None:
        save_tokenizer_files(tokenizer_dir, directory)


def save_tokenizer_files(tokenizer_dir: str | Path, model_dir: str | Path) -> list[Path]:
    """Copy a tokenizer directory's files (tokenizer.json, tokenizer_config.json and, where
    present, chat_template.jinja, special_tokens_map.json) into a model directory, so that the
    model directory loads with its tokenizer as a Hugging Face checkpoint does."""
    from mixjax.data.tokenizer import TOKENIZER_FILES

    source, target = Path(tokenizer_dir), Path(model_dir)
    if source.is_file():
        source = source.parent
    if not (source / "tokenizer.json").exists():
        raise FileNotFoundError(f"{source}: no tokenizer.json")
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TOKENIZER_FILES:
        if (source / name).exists() and (source / name).resolve() != (target / name).resolve():
            (target / name).write_bytes((source / name).read_bytes())
            written.append(target / name)
    return written
