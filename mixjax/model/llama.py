"""A Llama-family decoder in Flax (linen): RMSNorm, RoPE (Llama-3 scaling), SwiGLU,
grouped-query attention, optional qkv bias (Qwen2), tied or untied embeddings.

Parameters are float32 and carry logical axis names (``embed``, ``heads``, ``kv_heads``,
``mlp``, ``vocab``, ``layers``, ...) that :mod:`mixjax.train.sharding` maps onto the
device mesh. Compute runs in ``config.dtype`` (bf16 by default; the CPU demo preset runs
float32, XLA:CPU has no fast bf16 path); logits are float32. Layers are stacked with
``nn.scan`` (one compiled layer, fast compiles at 8B), fully unrolled when
``scan_layers=False`` (same parameter tree; faster for tiny models, where the loop and the
stacked residuals cost more than the layers), and rematerialised by ``remat`` policy.

Attention is causal within each packed example (``segment_ids``; padding, segment 0,
attends only to padding, keeping rows finite) and never materialises a (B, 1, T, T)
mask: ``attention_impl`` None picks "flash" on GPU where its shape rules allow
(:func:`flash_shape_error`), else "xla"; "xla" is blockwise-causal einsum attention (query blocks
skip the key blocks after them; the mask is built in-fusion from segment ids per block),
"flash" is the Pallas flash-attention kernel with segment ids
(``jax.experimental.pallas.ops.gpu.attention.mha``; Triton on GPU, run in interpret mode
on CPU, where tests check it against the XLA path; the XLA path on TPU), per device under
a mesh (``shard_map``), GQA by indexing KV heads (no repeated K/V).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from mixjax.train.sharding import axis_size, constrain, current_mesh

from mixjax.config_fields import neutral

Array = jax.Array
RematPolicy = Literal["none", "full", "dots", "dots_with_no_batch_dims", "offload_dots_with_no_batch_dims"]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 frequency scaling (config.json ``rope_scaling`` with rope_type llama3)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    head_dim: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 500_000.0
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False
    tie_embeddings: bool = False
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    # Speed / memory only (left out of run fingerprints; see mixjax.config_fields).
    remat: RematPolicy = neutral("none", "memory: recomputes the same activations in the backward pass")
    # None: flash on GPU where its shape rules allow (flash_shape_error), else xla.
    attention_impl: Literal["xla", "flash", "cudnn"] | None = neutral(None, "the same attention, another kernel (float rounding only)")
    scan_layers: bool = neutral(True, "the same layers, looped or unrolled (float rounding only)")
    init_std: float = 0.02

    @property
    def head_size(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    def num_params(self) -> int:
        h = self.head_size
        attn = self.dim * h * (self.n_heads * 2 + self.n_kv_heads * 2)
        attn += h * (self.n_heads + 2 * self.n_kv_heads) if self.qkv_bias else 0
        mlp = 3 * self.dim * self.hidden_dim
        embed = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return self.n_layers * (attn + mlp + 2 * self.dim) + embed + self.dim

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x (non-embedding matmul params + lm head) + attention."""
        h = self.head_size
        matmul = self.n_layers * (self.dim * h * (2 * self.n_heads + 2 * self.n_kv_heads) + 3 * self.dim * self.hidden_dim)
        matmul += self.vocab_size * self.dim
        attention = self.n_layers * 2 * 2 * self.n_heads * h * seq_len / 2  # causal: half the scores
        return 6.0 * matmul + 3.0 * attention


PRESETS: dict[str, ModelConfig] = {
    # A few hundred thousand parameters: trains on a laptop CPU in seconds per run.
    # float32 compute (XLA:CPU has no fast bf16 kernels) and unrolled layers (2 tiny layers).
    "demo": ModelConfig(
        vocab_size=263, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=384, rope_theta=10_000.0,
        tie_embeddings=True, dtype="float32", scan_layers=False,
    ),
    "llama3.2-1b": ModelConfig(
        vocab_size=128_256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, hidden_dim=8192, head_dim=64,
        rope_scaling=RopeScaling(factor=32.0), tie_embeddings=True, remat="dots_with_no_batch_dims",
    ),
    "llama3.2-3b": ModelConfig(
        vocab_size=128_256, dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, hidden_dim=8192, head_dim=128,
        rope_scaling=RopeScaling(factor=32.0), tie_embeddings=True, remat="dots_with_no_batch_dims",
    ),
    "llama3.1-8b": ModelConfig(
        vocab_size=128_256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, hidden_dim=14_336,
        rope_scaling=RopeScaling(factor=8.0), remat="dots_with_no_batch_dims",
    ),
    "qwen2.5-0.5b": ModelConfig(
        vocab_size=151_936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, hidden_dim=4864, rope_theta=1_000_000.0,
        norm_eps=1e-6, qkv_bias=True, tie_embeddings=True,
    ),
}


def rope_inverse_frequencies(config: ModelConfig) -> Array:
    h = config.head_size
    inv = 1.0 / (config.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    s = config.rope_scaling
    if s is None:
        return inv
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    scaled = jnp.where(wavelen > low_wavelen, inv / s.factor, inv)
    medium = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return jnp.where(medium, (1 - smooth) * inv / s.factor + smooth * inv, scaled)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotate-half RoPE (the Hugging Face Llama convention). x: (B, T, N, H)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # (B, T, H/2)
    cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos + rotated * sin).astype(x.dtype)


def _attend_block(q: Array, k: Array, v: Array, q_segments: Array, k_segments: Array, q_start: int) -> Array:
    """Causal same-segment softmax attention of a block of queries starting at ``q_start``
    over keys 0..S-1. q: (B, t, K, G, H), k/v: (B, S, K, H) -> (B, t, K, G, H) float32.

    Normalised after the value product (one pass less over the (t, S) scores)."""
    t, s, h = q.shape[1], k.shape[1], q.shape[-1]
    scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) * (1.0 / math.sqrt(h))
    causal = (q_start + jnp.arange(t))[:, None] >= jnp.arange(s)[None, :]
    allowed = (q_segments[:, :, None] == k_segments[:, None, :]) & causal  # (B, t, S), fused
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    unnormalised = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
    denominator = jnp.sum(unnormalised, axis=-1)  # (B, K, G, t); >= 1 (the diagonal is always allowed)
    out = jnp.einsum("bkgts,bskh->btkgh", unnormalised.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out / jnp.transpose(denominator, (0, 3, 1, 2))[..., None]


def attention_blocks(seq_len: int, max_blocks: int = 8, min_block: int = 128) -> int:
    """Query blocks for blockwise-causal attention: block i needs keys [0, (i+1) T/n) only,
    so n blocks do (n+1)/2n of the dense work."""
    n = max(1, min(max_blocks, seq_len // min_block))
    while seq_len % n:
        n -= 1
    return n


def xla_attention(q: Array, k: Array, v: Array, segment_ids: Array, blocks: int | None = None) -> Array:
    """Blockwise-causal, same-segment attention in plain XLA ops (CPU and any backend).
    q: (B, T, N, H), k/v: (B, T, K, H) with N a multiple of K (GQA); segment_ids (B, T)."""
    b, t, n, h = q.shape
    kv = k.shape[2]
    grouped = q.reshape(b, t, kv, n // kv, h)
    blocks = blocks or attention_blocks(t)
    size = t // blocks
    outs = [
        _attend_block(grouped[:, i * size:(i + 1) * size], k[:, :(i + 1) * size], v[:, :(i + 1) * size],
                      segment_ids[:, i * size:(i + 1) * size], segment_ids[:, :(i + 1) * size], i * size)
        for i in range(blocks)
    ]
    out = outs[0] if blocks == 1 else jnp.concatenate(outs, axis=1)
    return out.reshape(b, t, n, h).astype(q.dtype)


def kernel_platform() -> str:
    """The platform the attention kernels compile for (the default backend)."""
    return jax.default_backend()


def flash_block_sizes(seq_len: int, head_dim: int):
    """The Pallas kernel's tiles (``jax.experimental.pallas.ops.gpu.attention.BlockSizes``)
    for rows of ``seq_len`` tokens that :func:`flash_shape_error` accepts.

    Forward: 128 x 128 (the kernel's default; 8 warps for head_dim > 64). Backward, for
    head_dim <= 128: 32 query x 128 key rows for dK/dV and 128 x 32 for dQ, the tiles of
    Triton's fused-attention tutorial, whose kernel this one follows (its H100 figures;
    jax's default is 32 x 32 for both, 4 warps either way), with 128-row blocks: a quarter
    of the default's programs, each with 4x larger dots. Larger head dims keep jax's
    defaults (shared memory). The kernel takes min(block, T) per axis and needs
    T / block_q_dq == T / block_kv_dkv: both hold for every T the shape rules allow.
    Chosen from those sources, not measured here (no GPU): launch/gpu_check.sh times them.
    """
    from jax.experimental.pallas.ops.gpu.attention import BlockSizes

    if head_dim > 128:
        return BlockSizes.get_default()
    del seq_len  # the kernel clamps each block to T; listed for the rule above
    return BlockSizes(block_q=128, block_k=128, block_q_dkv=32, block_kv_dkv=128, block_q_dq=128, block_kv_dq=32)


def _flash_kernel(q: Array, k: Array, v: Array, segment_ids: Array, interpret: bool) -> Array:
    """The Pallas GPU flash kernel on (local) arrays; GQA without copying K/V: the kernel
    is vmapped over the G query heads of each KV head with K/V unbatched, so every group
    reads its KV head through the kernel's block index map (no ``jnp.repeat``; the
    backward pass sums the groups' dK/dV)."""
    from jax.experimental.pallas.ops.gpu import attention as pallas_attention

    blocks = flash_block_sizes(q.shape[1], q.shape[-1])
    mha = functools.partial(pallas_attention.mha, sm_scale=1.0 / math.sqrt(q.shape[-1]), causal=True, block_sizes=blocks, interpret=interpret)
    b, t, n, h = q.shape
    kv = k.shape[2]
    if n == kv:
        return mha(q, k, v, segment_ids)
    grouped = q.reshape(b, t, kv, n // kv, h)
    out = jax.vmap(lambda qg: mha(qg, k, v, segment_ids), in_axes=3, out_axes=3)(grouped)
    return out.reshape(b, t, n, h)


def flash_attention(q: Array, k: Array, v: Array, segment_ids: Array) -> Array:
    """Pallas flash attention (Triton on GPU) with segment ids and a causal mask: no (T, T)
    tensor in memory. T must be a multiple of min(T, 128).

    - GPU: the Triton kernel; CPU: the same kernel in the Pallas interpreter (slow: tests).
    - TPU: the XLA path (:func:`xla_attention`): the Triton kernel would only run in the
      Pallas interpreter there (correct but very slow), and TPU's own splash kernel is not
      wired in; XLA's fused blockwise attention is what TPU runs.
    - Under a device mesh the kernel runs per device in ``shard_map`` over the batch axes
      (and the heads where tensor-parallel): a ``pallas_call`` has no partitioning rule, so
      without it XLA would all-gather q/k/v and every device would attend the whole batch.
    """
    platform = kernel_platform()
    if platform == "tpu":
        return xla_attention(q, k, v, segment_ids)
    kernel = functools.partial(_flash_kernel, interpret=platform != "gpu")
    mesh = current_mesh()
    if mesh is None or mesh.size == 1:
        return kernel(q, k, v, segment_ids)
    batch, _, heads, _ = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))
    if q.shape[0] % axis_size(mesh, batch):
        batch = None  # e.g. init's single dummy row: every device attends all rows
    if k.shape[2] % axis_size(mesh, heads):
        heads = None  # KV heads do not split over the tensor axis: every tensor device attends all heads
    qkv_spec, segment_spec = P(batch, None, heads, None), P(batch, None)
    return jax.shard_map(
        kernel, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, segment_spec), out_specs=qkv_spec, check_vma=False,
    )(q, k, v, segment_ids)


def flash_shape_error(seq_len: int, head_dim: int) -> str | None:
    """Why the Pallas flash kernel cannot run rows of ``seq_len`` tokens with ``head_dim``
    on CUDA (Triton), or None. Its blocks are min(128, T) positions by the head dim, and
    Triton needs power-of-two block sizes and dots of at least 16: T must be a multiple of
    128, or a power of two from 16 up to 128; head_dim a power of two >= 16. (The CPU
    interpreter runs the other shapes too: tests there would not show it.)"""
    power_of_two = lambda n: n > 0 and n & (n - 1) == 0
    if seq_len % 128 and not (power_of_two(seq_len) and 16 <= seq_len < 128):
        return f"seq_len {seq_len} is neither a multiple of 128 nor a power of two in [16, 128)"
    if not (power_of_two(head_dim) and head_dim >= 16):
        return f"head_dim {head_dim} is not a power of two >= 16"
    return None


def cudnn_shape_error(seq_len: int, head_dim: int, dtype: str) -> str | None:
    """Why cuDNN's fused attention cannot train rows of ``seq_len`` tokens with ``head_dim``
    in compute ``dtype``, or None (jax's checks, ``jax._src.cudnn.fused_attention_stablehlo``:
    fp16 / bf16 inputs; head_dim a multiple of 8, at most 128 before Hopper (256 from
    Hopper on; 128 here, as the config cannot know the GPU); with a bias, which the
    same-segment mask becomes, even lengths in training)."""
    if dtype not in ("bfloat16", "float16"):
        return f"model.dtype {dtype!r} is not 'bfloat16' or 'float16'"
    if head_dim > 128 or head_dim % 8:
        return f"head_dim {head_dim} is not a multiple of 8 <= 128"
    if seq_len % 2:
        return f"seq_len {seq_len} is odd"
    return None


def cudnn_attention(q: Array, k: Array, v: Array, segment_ids: Array) -> Array:
    """cuDNN's fused flash attention (``jax.nn.dot_product_attention(implementation=
    "cudnn")``), causal, with packed examples kept apart by a same-segment mask. jax's
    public call takes no segment ids, so the mask goes to cuDNN as a (B, 1, T, T) bias in
    the compute dtype, materialised per layer (32 MiB per 4096-token row) and kept for the
    backward pass; GQA without repeating K/V. CUDA GPUs only: jax reads the cuDNN version
    when it traces the call ("cuDNN is not detected" elsewhere). q: (B, T, N, H), k / v:
    (B, T, K, H), segment_ids (B, T) -> (B, T, N, H)."""
    same = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=True, implementation="cudnn")


def resolve_attention(impl: str | None, seq_len: int, head_dim: int, platform: str) -> str:
    """The attention path: ``impl`` when set; by default (None) the fastest valid one: the
    flash kernel on GPU where :func:`flash_shape_error` allows it, else XLA's."""
    if impl is not None:
        return impl
    return "flash" if platform == "gpu" and flash_shape_error(seq_len, head_dim) is None else "xla"


def attention(q: Array, k: Array, v: Array, segment_ids: Array, impl: str | None = None) -> Array:
    """Causal attention within packed examples; see the module docstring for ``impl``
    (None: :func:`resolve_attention`)."""
    impl = resolve_attention(impl, q.shape[1], q.shape[-1], kernel_platform())
    if impl == "xla":
        return xla_attention(q, k, v, segment_ids)
    if impl == "flash":
        return flash_attention(q, k, v, segment_ids)
    if impl == "cudnn":
        return cudnn_attention(q, k, v, segment_ids)
    raise ValueError(f"attention_impl must be None, 'xla', 'flash' or 'cudnn', got {impl!r}")


def _matmul_operand(x: Array, dtype) -> Array:
    """``x`` rounded to ``dtype`` as a matmul operand. XLA:CPU has no bf16 x bf16 -> f32
    dot, so there the rounded values go in as float32 (the same numbers: products of two
    bf16 values are exact in float32, and the accumulation is float32 either way)."""
    x = x.astype(dtype)
    return x.astype(jnp.float32) if kernel_platform() == "cpu" else x


@jax.custom_vjp
def _cpu_matmul(x: Array, w: Array) -> Array:
    """x (M, K) @ w (K, N) whose backward pass multiplies row-major operands only: the
    forward saves x transposed, so dW = x^T dY and dX = dY w^T run on XLA:CPU's XNNPACK
    kernels. Autodiff's own dW contracts the rows of both operands, which XLA:CPU runs on
    Eigen after transposing activations inside elementwise fusions (strided writes): the
    demo model's step at 1 thread is 1.2x faster this way (README, Benchmarks)."""
    return x @ w


def _cpu_matmul_fwd(x, w):
    return x @ w, (x.T, w)


def _cpu_matmul_bwd(residuals, g):
    x_t, w = residuals
    return g @ w.T, x_t @ g


_cpu_matmul.defvjp(_cpu_matmul_fwd, _cpu_matmul_bwd)


def cpu_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None, preferred_element_type=None) -> Array:
    """``lax.dot_general`` for the projections on CPU: a contraction of ``lhs``'s trailing
    dims with ``rhs``'s leading dims (every Dense/DenseGeneral here), operands of one dtype,
    no precision or preferred type, goes through :func:`_cpu_matmul` as one 2-D matmul;
    anything else to ``lax.dot_general``."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n = len(lhs_contract)
    plain = precision is None and preferred_element_type is None and lhs.dtype == rhs.dtype
    if not plain or lhs_batch or rhs_batch or tuple(lhs_contract) != tuple(range(lhs.ndim - n, lhs.ndim)) \
            or tuple(rhs_contract) != tuple(range(n)):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type)
    k = math.prod(lhs.shape[lhs.ndim - n:])
    out = _cpu_matmul(lhs.reshape(-1, k), rhs.reshape(k, -1))
    return out.reshape(*lhs.shape[:lhs.ndim - n], *rhs.shape[n:])


def projection_dot_general():
    """The projections' ``dot_general``: :func:`cpu_dot_general` on CPU, XLA's own
    elsewhere (GPU/TPU matmul libraries take transposed operands without copies)."""
    return cpu_dot_general if kernel_platform() == "cpu" else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def head_logits(h: jax.Array, head: jax.Array, dtype) -> jax.Array:
    """Logits (..., V) float32 = h (..., D) @ head (D, V) with ``dtype`` operands and
    float32 accumulation, forward AND backward: the logits' float32 cotangent is cast to
    ``dtype`` so both gradient matmuls also run at the ``dtype`` rate (jax's own transpose
    would multiply a float32 cotangent, i.e. a float32/TF32 matmul); each gradient is
    accumulated in float32 and returned in its input's dtype (the head's: float32)."""
    return jnp.einsum("...d,dv->...v", _matmul_operand(h, dtype), _matmul_operand(head, dtype), preferred_element_type=jnp.float32)


def _head_logits_fwd(h, head, dtype):
    return head_logits(h, head, dtype), (h, head)


def _sum_to_varying_axes_of(cotangent: jax.Array, primal: jax.Array) -> jax.Array:
    """Inside ``shard_map``: sum a cotangent over the mesh axes along which it varies but
    its primal does not (what jax's own transpose does; e.g. the hidden states' gradient
    over a vocabulary-parallel head's tensor axis). Outside, a no-op."""
    varying = lambda x: jax.typeof(x).mat.varying
    extra = tuple(a for a in varying(cotangent) if a not in varying(primal))
    return jax.lax.psum(cotangent, extra) if extra else cotangent


def _head_logits_bwd(dtype, residuals, g):
    h, head = residuals
    g = _matmul_operand(g, dtype)
    dh = jnp.einsum("...v,dv->...d", g, _matmul_operand(head, dtype), preferred_element_type=jnp.float32)
    dhead = jnp.einsum("...d,...v->dv", _matmul_operand(h, dtype), g, preferred_element_type=jnp.float32)
    return _sum_to_varying_axes_of(dh, h).astype(h.dtype), _sum_to_varying_axes_of(dhead, head).astype(head.dtype)


head_logits.defvjp(_head_logits_fwd, _head_logits_bwd)


def _init(config: ModelConfig, *names: str):
    return nn.with_logical_partitioning(nn.initializers.normal(config.init_std), names)


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale).astype(x.dtype)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, positions: Array, segment_ids: Array) -> Array:
        cfg = self.config
        h, dtype = cfg.head_size, jnp.dtype(cfg.dtype)
        dense = lambda n, heads, name: nn.DenseGeneral(
            (n, h), use_bias=cfg.qkv_bias, dtype=dtype, param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=_init(cfg, "embed", heads, "kv"), dot_general=projection_dot_general(),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (heads, "kv")), name=name,
        )
        q = dense(cfg.n_heads, "heads", "q_proj")(x)
        k = dense(cfg.n_kv_heads, "kv_heads", "k_proj")(x)
        v = dense(cfg.n_kv_heads, "kv_heads", "v_proj")(x)
        inv_freq = rope_inverse_frequencies(cfg)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        out = attention(q, k, v, segment_ids, cfg.attention_impl)
        return nn.DenseGeneral(
            cfg.dim, axis=(-2, -1), use_bias=False, dtype=dtype, param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=_init(cfg, "heads", "kv", "embed"), dot_general=projection_dot_general(), name="o_proj",
        )(out)


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dense = lambda features, axes, name: nn.Dense(
            features, use_bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=_init(cfg, *axes), dot_general=projection_dot_general(), name=name,
        )
        gate = dense(cfg.hidden_dim, ("embed", "mlp"), "gate_proj")(x)
        up = dense(cfg.hidden_dim, ("embed", "mlp"), "up_proj")(x)
        return dense(cfg.dim, ("mlp", "embed"), "down_proj")(nn.silu(gate) * up)


class Block(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, positions: Array, segment_ids: Array):
        cfg = self.config
        x = x + Attention(cfg, name="self_attn")(RMSNorm(cfg.norm_eps, name="input_layernorm")(x), positions, segment_ids)
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.norm_eps, name="post_attention_layernorm")(x))
        x = constrain(x, ("batch", "length", "embed"))
        return x, None


def _is_flash_call(prim, params: dict) -> bool:
    """Whether an equation is the Pallas flash kernel's custom_vjp call: its primal is
    jax's jitted ``mha`` (``jax.experimental.pallas.ops.gpu.attention``)."""
    if prim.name != "custom_vjp_call":
        return False
    return any(e.primitive.name in ("jit", "pjit") and e.params.get("name") == "mha" for e in params["call_jaxpr"].jaxpr.eqns)


def saving_flash_residuals(policy):
    """``policy``, and the flash kernel's custom_vjp call saveable: its output and
    log-sum-exp are kept for the backward pass, which then runs the backward kernels only,
    not ``mha_forward`` a second time (q, k, v are recomputed from the saved projections as
    before). Costs per layer the output (B, T, N, H) in the compute dtype and a (B, N, T)
    float32 log-sum-exp (``jax.ad_checkpoint.print_saved_residuals``; 8B, one 4096-token
    row per device: 32.5 MiB per layer, 1.0 GiB for 32 layers). A
    ``checkpoint_name`` on the kernel's output with ``save_only_these_names`` does not do
    this: the residuals are made inside the custom_vjp's forward rule, which the policy is
    asked about as one equation, and a saved name after it left that equation recomputed
    (two ``mha_forward`` in the CUDA lowering; docs/cluster.md)."""
    return lambda prim, *args, **params: True if _is_flash_call(prim, params) else policy(prim, *args, **params)


_REMAT_POLICIES = {
    "full": lambda: jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer (flash forward included)
    "dots": lambda: saving_flash_residuals(jax.checkpoint_policies.checkpoint_dots),  # every matmul output (incl. scores)
    "dots_with_no_batch_dims": lambda: saving_flash_residuals(jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims),
    "offload_dots_with_no_batch_dims": lambda: saving_flash_residuals(
        jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host")),
}


def remat_policy(name: str):
    if name not in _REMAT_POLICIES:
        raise ValueError(f"remat must be 'none' or one of {sorted(_REMAT_POLICIES)}, got {name!r}")
    return _REMAT_POLICIES[name]()


class Decoder(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, tokens: Array, positions: Array, segment_ids: Array, return_hidden: bool = False) -> Array:
        """tokens, positions, segment_ids: (B, T) int32 -> logits (B, T, vocab) float32;
        ``return_hidden``: the final-norm hidden states (B, T, dim) instead (for a chunked loss)."""
        cfg = self.config
        embed = nn.Embed(
            cfg.vocab_size, cfg.dim, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
            embedding_init=_init(cfg, "vocab", "embed"), name="embed_tokens",
        )
        x = embed(tokens)
        block = Block
        if cfg.remat != "none":
            block = nn.remat(Block, policy=remat_policy(cfg.remat), prevent_cse=False)
        layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast),
            length=cfg.n_layers,
            unroll=1 if cfg.scan_layers else cfg.n_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = layers(cfg, name="layers")(x, positions, segment_ids)
        x = RMSNorm(cfg.norm_eps, name="norm")(x)
        if return_hidden:
            return x
        if cfg.tie_embeddings:  # compute-dtype operands, float32 accumulation
            logits = head_logits(x, embed.embedding.T, x.dtype)
        else:
            logits = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=jnp.float32, param_dtype=jnp.dtype(cfg.param_dtype),
                kernel_init=_init(cfg, "embed", "vocab"), name="lm_head",
            )(x)
        return logits.astype(jnp.float32)
