"""Hugging Face checkpoints (Llama-3.x, Qwen2.5) <-> mixjax Flax params.

Reads ``config.json`` and ``*.safetensors`` from a local directory (never downloads) and
writes them back, so a fine-tuned model can be used by any HF-compatible tool.

The converter knows every ``config.json`` field of the supported ``model_type``s
(transformers' ``LlamaConfig`` / ``Qwen2Config`` and their modeling code, 4.x and 5.x
spellings), in three kinds: fields it maps onto :class:`ModelConfig`; fields that do not
change the computation (ids, dtype, cache, generation defaults, ...); and fields whose
value changes the computation in a way mixjax does not implement, accepted only at the
value mixjax computes (``hidden_act`` silu, no ``attention_bias`` / ``mlp_bias``, no
dropout, no sliding window, RoPE ``default`` or ``llama3``). Anything else, and any
tensor of the safetensors files that it does not consume, is an :class:`UnsupportedCheckpoint`
error naming the field or tensor, raised when the checkpoint is read (before training).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mixjax.model.llama import ModelConfig, RopeScaling

Params = dict[str, Any]

SUPPORTED = ("llama", "qwen2")

# Fields that do not change the forward computation (identity, ids, dtype, cache, and the
# generic / generation attributes that older transformers versions write into config.json).
NEUTRAL_FIELDS = frozenset({
    "model_type", "architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache",
    "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "max_position_embeddings", "pretraining_tp", "output_attentions", "output_hidden_states", "return_dict",
    "is_encoder_decoder", "is_decoder", "add_cross_attention", "cross_attention_hidden_size", "tie_encoder_decoder",
    "id2label", "label2id", "problem_type", "finetuning_task", "tokenizer_class", "prefix", "task_specific_params",
    "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "return_dict_in_generate", "output_scores",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "chunk_size_feed_forward",
})
# Fields mapped onto ModelConfig.
IMPLEMENTED_FIELDS = frozenset({
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings",
})


def _is(value) -> Callable[[Any], bool]:
    return lambda v: v == value


def _no_sliding_layers(hf: dict) -> bool:
    """Qwen2: no layer uses sliding-window attention (transformers' layer_types rule)."""
    if not hf.get("use_sliding_window", False) or hf.get("sliding_window") is None:
        return True  # transformers then sets sliding_window to None: every layer attends fully
    if hf.get("layer_types") is not None:
        return all(t == "full_attention" for t in hf["layer_types"])
    return hf.get("max_window_layers", 28) >= hf["num_hidden_layers"]


# Fields that change the computation, accepted only where mixjax computes the same thing:
# model_type -> {field: (accepts(value, config), what mixjax implements)}.
RESTRICTED_FIELDS: dict[str, dict[str, tuple[Callable[[Any, dict], bool], str]]] = {
    "llama": {
        "hidden_act": (lambda v, hf: v == "silu", "silu"),
        "attention_bias": (lambda v, hf: not v, "false (mixjax has no o_proj bias; Llama's attention_bias adds one)"),
        "mlp_bias": (lambda v, hf: not v, "false"),
        "attention_dropout": (lambda v, hf: not v, "0.0 (mixjax trains without dropout)"),
        "partial_rotary_factor": (lambda v, hf: v == 1.0, "1.0"),
    },
    "qwen2": {
        "hidden_act": (lambda v, hf: v == "silu", "silu"),
        "attention_dropout": (lambda v, hf: not v, "0.0 (mixjax trains without dropout)"),
        "use_sliding_window": (lambda v, hf: _no_sliding_layers(hf), "full attention in every layer"),
        "sliding_window": (lambda v, hf: True, "checked with use_sliding_window"),
        "max_window_layers": (lambda v, hf: True, "checked with use_sliding_window"),
        "layer_types": (lambda v, hf: True, "checked with use_sliding_window"),
        "partial_rotary_factor": (lambda v, hf: v == 1.0, "1.0"),
    },
}
# RoPE: the rope_type mixjax implements -> the keys its parameters may have.
ROPE_KEYS = {
    "default": frozenset({"rope_type", "type", "rope_theta"}),
    "llama3": frozenset({"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}),
}


class UnsupportedCheckpoint(ValueError):
    """A checkpoint whose config field or tensor the converter does not implement."""


def check_hf_config(hf: dict) -> None:
    """Raise UnsupportedCheckpoint naming the first config.json field whose value mixjax
    would not compute (see the module docstring); unknown fields are errors too."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise UnsupportedCheckpoint(f"unsupported model_type {kind!r} (supported: {', '.join(SUPPORTED)})")
    restricted = RESTRICTED_FIELDS[kind]
    if kind == "qwen2" and not _no_sliding_layers(hf):
        raise UnsupportedCheckpoint(
            f"config.json: use_sliding_window=true with sliding_window={hf.get('sliding_window')} (layer_types /"
            " max_window_layers give some layers sliding-window attention) is not implemented by mixjax's qwen2 converter"
            " (it implements full attention in every layer)"
        )
    for field, value in hf.items():
        if field in restricted:
            accepts, implemented = restricted[field]
            if not accepts(value, hf):
                raise UnsupportedCheckpoint(
                    f"config.json: {field}={json.dumps(value)} is not implemented by mixjax's {kind} converter"
                    f" (it implements {implemented}); its logits would differ from transformers'"
                )
        elif field in ("quantization_config", "auto_map"):
            what = "quantized weights" if field == "quantization_config" else "custom modeling code (trust_remote_code)"
            raise UnsupportedCheckpoint(f"config.json: {field}: {what} are not implemented by mixjax's converter")
        elif field not in IMPLEMENTED_FIELDS and field not in NEUTRAL_FIELDS:
            raise UnsupportedCheckpoint(
                f"config.json: unknown field {field!r} for model_type {kind}: mixjax's converter does not know whether it"
                " changes the computation, so it does not load this checkpoint"
            )


def _rope(hf: dict) -> tuple[float, RopeScaling | None]:
    """(rope_theta, Llama-3 scaling or None) from ``rope_parameters`` (transformers >= 5) or
    ``rope_theta`` + ``rope_scaling`` (older)."""
    scaling = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_KEYS:
        raise UnsupportedCheckpoint(
            f"config.json: rope_type {kind!r} is not implemented by mixjax's converter (it implements {', '.join(ROPE_KEYS)})"
        )
    extra = sorted(set(scaling) - ROPE_KEYS[kind])
    if extra:
        raise UnsupportedCheckpoint(f"config.json: rope parameter {extra[0]!r} of rope_type {kind} is not implemented by mixjax's converter")
    theta = scaling.get("rope_theta") or hf.get("rope_theta", 10_000.0)
    if kind == "default":
        return theta, None
    if missing := sorted(ROPE_KEYS[kind] - {"rope_type", "type", "rope_theta"} - set(scaling)): raise UnsupportedCheckpoint(f"config.json: rope_scaling of rope_type {kind} lacks {missing[0]!r}; add it as the model's published config.json has it (Llama 3.1/3.2: factor 8 / 32, low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192)")  # noqa: E701
    return theta, RopeScaling(
        factor=scaling["factor"], low_freq_factor=scaling["low_freq_factor"], high_freq_factor=scaling["high_freq_factor"],
        original_max_position=scaling["original_max_position_embeddings"],
    )


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """The ModelConfig of a config.json; UnsupportedCheckpoint for anything not implemented."""
    check_hf_config(hf)
    kind = hf["model_type"]
    theta, rope = _rope(hf)
    config = ModelConfig(
        vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        hidden_dim=hf["intermediate_size"], head_dim=hf.get("head_dim"), norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta, rope_scaling=rope, qkv_bias=kind == "qwen2",
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


def _safetensors_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors files")
    return files


def _read_tensors(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors: dict[str, np.ndarray] = {}
    for f in _safetensors_files(directory):
        tensors.update(load_file(str(f)))
    return tensors


# Buffers that older transformers versions saved and that are derived from the config.
DERIVED_TENSORS = ("rotary_emb.inv_freq",)


def hf_tensor_names(config: ModelConfig) -> set[str]:
    """The tensors a checkpoint of ``config`` has, as transformers names them."""
    names = {"model.embed_tokens.weight", "model.norm.weight"} | (set() if config.tie_embeddings else {"lm_head.weight"})
    per_layer = [f"self_attn.{p}_proj.weight" for p in "qkvo"] + [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    per_layer += ["input_layernorm.weight", "post_attention_layernorm.weight"]
    per_layer += [f"self_attn.{p}_proj.bias" for p in "qkv"] if config.qkv_bias else []
    return names | {f"model.layers.{i}.{n}" for i in range(config.n_layers) for n in per_layer}


def check_tensor_names(names, config: ModelConfig) -> None:
    """UnsupportedCheckpoint naming a tensor the converter would not consume, or one it needs
    that is missing. With tied embeddings a stored ``lm_head.weight`` is let through here
    (:func:`check_tensors` compares it with the embedding)."""
    expected = hf_tensor_names(config)
    unused = sorted(n for n in set(names) - expected if not n.endswith(DERIVED_TENSORS))
    if config.tie_embeddings and "lm_head.weight" in unused:
        unused.remove("lm_head.weight")
    if unused:
        more = f" (and {len(unused) - 3} more)" if len(unused) > 3 else ""
        raise UnsupportedCheckpoint(
            f"the safetensors hold weights that mixjax's converter does not use: {', '.join(unused[:3])}{more};"
            " the model they belong to is not the one mixjax would compute"
        )
    missing = sorted(expected - set(names))
    if missing:
        raise UnsupportedCheckpoint(f"the safetensors lack {len(missing)} weight(s) the model needs, e.g. {', '.join(missing[:3])}")


def check_tensors(tensors: dict[str, np.ndarray], config: ModelConfig) -> None:
    """:func:`check_tensor_names`, and a stored ``lm_head.weight`` of a tied model must equal
    the embedding (transformers would use the embedding)."""
    check_tensor_names(tensors, config)
    if config.tie_embeddings and "lm_head.weight" in tensors:
        if not np.array_equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]):
            raise UnsupportedCheckpoint("lm_head.weight differs from model.embed_tokens.weight but tie_word_embeddings is true")


def check_hf_checkpoint(path: str | Path) -> ModelConfig:
    """Check a local HF model directory without reading its weights (config.json and the
    safetensors headers): the ModelConfig, or UnsupportedCheckpoint / FileNotFoundError."""
    from safetensors import safe_open

    directory = Path(path)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory}: no config.json (expected a local Hugging Face model directory)")
    config = config_from_hf(json.loads((directory / "config.json").read_text()))
    names = set()
    for f in _safetensors_files(directory):
        with safe_open(str(f), "np") as handle:
            names |= set(handle.keys())
    check_tensor_names(names, config)
    return config


def params_from_hf(tensors: dict[str, np.ndarray], config: ModelConfig) -> Params:
    """Map HF tensor names (Linear weights are (out, in)) onto the Flax tree (kernels (in, out)),
    float32 host arrays. Every tensor must be consumed (:func:`check_tensors`). For a large
    checkpoint use :func:`load_hf_params` (one tensor at a time, straight onto devices)."""
    check_tensors(tensors, config)
    return jax_tree_map(lambda make: make().astype(np.float32), _param_makers(tensors.__getitem__, config))


def jax_tree_map(fn: Callable, tree: Params) -> Params:
    """``fn`` on every leaf of a nested dict (the param tree without importing jax)."""
    return {k: jax_tree_map(fn, v) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def _stacked(layer: Callable[[int], np.ndarray], n: int) -> Callable[[], np.ndarray]:
    """A maker of the (n, ...) stack of ``layer(i)``: filled in place, so it holds the stack
    and one layer at a time (np.stack would hold every layer twice)."""

    def make() -> np.ndarray:
        first = layer(0)
        out = np.empty((n, *first.shape), first.dtype)
        out[0] = first
        for i in range(1, n):
            out[i] = layer(i)
        return out

    return make


def _param_makers(get: Callable[[str], np.ndarray], config: ModelConfig) -> Params:
    """The Flax param tree whose leaves are makers: ``make()`` reads (``get(hf_name)``,
    the checkpoint's dtype) and lays out that one param, so a caller can hold one at a time."""
    d, h, n, kv, L = config.dim, config.head_size, config.n_heads, config.n_kv_heads, config.n_layers
    layer = lambda name, shape=None: _stacked(lambda i: _layout(get(f"model.layers.{i}.{name}"), shape), L)
    attn: Params = {
        "q_proj": {"kernel": layer("self_attn.q_proj.weight", (d, n, h))},
        "k_proj": {"kernel": layer("self_attn.k_proj.weight", (d, kv, h))},
        "v_proj": {"kernel": layer("self_attn.v_proj.weight", (d, kv, h))},
        "o_proj": {"kernel": layer("self_attn.o_proj.weight", (n, h, d))},
    }
    if config.qkv_bias:
        for proj, heads in (("q_proj", n), ("k_proj", kv), ("v_proj", kv)):
            attn[proj]["bias"] = _stacked(lambda i, p=proj, m=heads: get(f"model.layers.{i}.self_attn.{p}.bias").reshape(m, h), L)
    params: Params = {
        "embed_tokens": {"embedding": lambda: get("model.embed_tokens.weight")},
        "layers": {
            "self_attn": attn,
            "mlp": {p: {"kernel": layer(f"mlp.{p}.weight", ())} for p in ("gate_proj", "up_proj", "down_proj")},
            "input_layernorm": {"scale": _stacked(lambda i: get(f"model.layers.{i}.input_layernorm.weight"), L)},
            "post_attention_layernorm": {"scale": _stacked(lambda i: get(f"model.layers.{i}.post_attention_layernorm.weight"), L)},
        },
        "norm": {"scale": lambda: get("model.norm.weight")},
    }
    if not config.tie_embeddings:
        params["lm_head"] = {"kernel": lambda: _layout(get("lm_head.weight"), ())}
    return params


def _layout(weight: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    """A Linear weight (out, in) as a kernel (in, out), reshaped to ``shape`` (() keeps it 2-D)."""
    kernel = weight.T
    return kernel.reshape(shape) if shape else np.ascontiguousarray(kernel)


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


SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64", "I32": "int32"}


class SafetensorsReader:
    """The tensors of a directory's ``*.safetensors`` files, read one at a time with plain
    file reads (no mmap: the pages of a memory-mapped file count in the process's RSS once
    touched and stay until unmapped; read() pages land in the kernel's page cache, which
    the kernel reclaims). ``names``: every tensor; ``get(name)``: a new host array in the
    file's dtype (bfloat16 as ml_dtypes.bfloat16)."""

    def __init__(self, directory: str | Path) -> None:
        self.index: dict[str, tuple[Path, int, str, tuple[int, ...], int]] = {}
        for f in _safetensors_files(Path(directory)):
            with open(f, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size))
            for name, entry in header.items():
                if name != "__metadata__":
                    start, end = entry["data_offsets"]
                    self.index[name] = (f, 8 + size + start, entry["dtype"], tuple(entry["shape"]), end - start)

    @property
    def names(self) -> set[str]:
        return set(self.index)

    def get(self, name: str) -> np.ndarray:
        import ml_dtypes  # a jax dependency

        path, offset, kind, shape, nbytes = self.index[name]
        if kind not in SAFETENSORS_DTYPES:
            raise UnsupportedCheckpoint(f"{path.name}: tensor {name} has dtype {kind} (mixjax reads {', '.join(SAFETENSORS_DTYPES)})")
        dtype = np.dtype(ml_dtypes.bfloat16 if kind == "BF16" else SAFETENSORS_DTYPES[kind])
        out = np.empty(shape, dtype)
        with open(path, "rb") as handle:
            handle.seek(offset)
            if handle.readinto(memoryview(out.reshape(-1).view(np.uint8))) != nbytes:
                raise UnsupportedCheckpoint(f"{path.name}: tensor {name} is truncated")
        return out


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file as the format specifies it (8-byte little-endian header size,
    JSON header, then the tensors' bytes), bfloat16 (ml_dtypes) included."""
    kinds = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items() if k != "BF16"}
    header, offset = {}, 0
    for name, array in tensors.items():
        kind = "BF16" if array.dtype.name == "bfloat16" else kinds[array.dtype]
        header[name] = {"dtype": kind, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array).tobytes())


def load_hf_params(path: str | Path, config: ModelConfig, shardings: Any = None, dtype: str | None = None) -> Params:
    """The params of a local HF model directory as device arrays, loaded tensor by tensor.

    Each param is read (:class:`SafetensorsReader`), laid out (a stacked layer param: one
    layer at a time into its (n_layers, ...) host array) and put onto its devices
    (``jax.make_array_from_callback``: each process transfers its own shards) before the
    next one is read, so host memory holds at most one param beside what is already on the
    devices (on CPU the devices' memory IS host memory: the params themselves).

    Args:
      path: the model directory (config.json and *.safetensors).
      config: its ModelConfig (:func:`check_hf_checkpoint`).
      shardings: a tree of jax Shardings like the unboxed params (e.g. a Trainer's
        ``state_shardings.params``); None: the default device.
      dtype: the arrays' dtype; None keeps the checkpoint's (bf16 for Llama-3: half of
        float32; ``Trainer.with_params`` makes the float32 master copy on the devices).
    Returns:
      The unboxed param tree of jax.Arrays.
    Raises:
      UnsupportedCheckpoint: a tensor the converter does not consume, or one missing.
    """
    import jax

    reader = SafetensorsReader(path)
    check_tensor_names(reader.names, config)
    if config.tie_embeddings and "lm_head.weight" in reader.names:
        check_tensors({n: reader.get(n) for n in ("lm_head.weight", "model.embed_tokens.weight")}, config)
    makers = _param_makers(reader.get, config)
    shardings = shardings if shardings is not None else jax_tree_map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), makers)

    def put(make: Callable[[], np.ndarray], sharding) -> jax.Array:
        host = make()
        host = host.astype(dtype) if dtype is not None else host
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, makers, shardings, is_leaf=callable)


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
