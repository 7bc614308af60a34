"""Model-level numerics: the blockwise-causal attention and the Pallas flash path equal
dense masked attention on packed segments; unrolled layers and remat policies leave the
logits and gradients unchanged."""

import contextlib
import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mixjax.model.llama import PRESETS, Decoder, ModelConfig, attention, attention_blocks, xla_attention

# Tolerances below assume full float32 matmuls (not TF32 on a GPU): tests/conftest.py.
pytestmark = pytest.mark.usefixtures("full_f32_matmuls")

CONFIG = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, dtype="float32")


def packed_segments(b: int, t: int, seed: int = 0) -> np.ndarray:
    """Rows of several examples of random lengths, then padding (segment 0)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(b):
        row, seg = [], 1
        while len(row) < t - 6:
            row += [seg] * int(rng.integers(1, t // 2))
            seg += 1
        row = row[: t - 6] + [0] * 6
        rows.append(row)
    return np.asarray(rows, np.int32)


def dense_reference(q, k, v, segment_ids):
    """The previous implementation: a dense (B, 1, T, T) same-segment mask + is_causal."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=same[:, None], is_causal=True, implementation="xla")


def qkv(b, t, n=4, kv=2, h=16, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (b, t, n, h)), jax.random.normal(ks[1], (b, t, kv, h)), jax.random.normal(ks[2], (b, t, kv, h)))


def test_attention_blocks():
    assert [attention_blocks(t) for t in (8, 128, 256, 384, 4096, 8192)] == [1, 1, 2, 3, 8, 8]
    assert attention_blocks(640) == 5 and attention_blocks(896) == 7


@pytest.mark.parametrize("blocks", [1, 4])
def test_blockwise_attention_equals_dense_masked_on_packed_segments(blocks):
    q, k, v = qkv(3, 64)
    segments = jnp.asarray(packed_segments(3, 64))
    assert len(np.unique(segments[0])) >= 3  # several examples and padding in a row
    expected = dense_reference(q, k, v, segments)
    got = xla_attention(q, k, v, segments, blocks=blocks)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-6)
    grad = lambda f: jax.grad(lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, segments))), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(grad(lambda *x: xla_attention(*x, blocks=blocks)), grad(dense_reference)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_flash_attention_equals_dense_masked_on_packed_segments():
    """The GPU kernel's code (Pallas, here in interpret mode) on packed segments, forward and backward."""
    q, k, v = qkv(2, 64, h=16)
    segments = jnp.asarray(packed_segments(2, 64, seed=1))
    np.testing.assert_allclose(attention(q, k, v, segments, "flash"), dense_reference(q, k, v, segments), atol=2e-5, rtol=2e-5)
    loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, segments, impl)))
    for a, b in zip(jax.grad(loss("flash"), argnums=(0, 1, 2))(q, k, v), jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_unknown_attention_impl_is_an_error():
    q, k, v = qkv(1, 8)
    with pytest.raises(ValueError, match="attention_impl"):
        attention(q, k, v, jnp.ones((1, 8), jnp.int32), "splash")


def _inputs(b=2, t=32):
    tokens = jax.random.randint(jax.random.key(1), (b, t), 0, CONFIG.vocab_size)
    segments = jnp.asarray(packed_segments(b, t, seed=2))
    pos = np.zeros((b, t), np.int32)
    for r in range(b):
        for i in range(1, t):
            pos[r, i] = pos[r, i - 1] + 1 if segments[r, i] == segments[r, i - 1] else 0
    return tokens, jnp.asarray(pos), segments


def _loss_and_grads(config, params, inputs):
    def loss(p):
        return jnp.mean(Decoder(config).apply({"params": p}, *inputs) ** 2)
    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("change", [{"scan_layers": False}, {"remat": "full"}, {"remat": "dots", "scan_layers": False}])
def test_unrolled_layers_and_remat_policies_leave_numerics_unchanged(change):
    inputs = _inputs()
    params = nn.unbox(Decoder(CONFIG).init(jax.random.key(0), *inputs)["params"])
    variant = dataclasses.replace(CONFIG, **change)
    assert jax.tree.structure(nn.unbox(Decoder(variant).init(jax.random.key(0), *inputs)["params"])) == jax.tree.structure(params)
    (l0, g0), (l1, g1) = _loss_and_grads(CONFIG, params, inputs), _loss_and_grads(variant, params, inputs)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_unknown_remat_policy_is_an_error():
    with pytest.raises(ValueError, match="remat"):
        Decoder(dataclasses.replace(CONFIG, remat="everything")).init(jax.random.key(0), *_inputs())


def test_demo_preset_runs_float32_unrolled():
    demo = PRESETS["demo"]
    assert (demo.dtype, demo.scan_layers) == ("float32", False)
    assert PRESETS["llama3.2-1b"].remat == "dots_with_no_batch_dims" and PRESETS["llama3.2-1b"].scan_layers


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU projection path")
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_cpu_projections_give_autodiff_gradients(monkeypatch, qkv_bias):
    """On CPU the projections run through a matmul with its own backward pass (row-major
    operands only, for XLA:CPU's speed): the loss and every gradient equal autodiff's."""
    import mixjax.model.llama as llama

    assert llama.projection_dot_general() is llama.cpu_dot_general  # the tests run on CPU
    cfg = dataclasses.replace(CONFIG, qkv_bias=qkv_bias, tie_embeddings=False)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    positions = jnp.tile(jnp.arange(16), (2, 1))
    segments = jnp.ones((2, 16), jnp.int32)
    params = Decoder(cfg).init(jax.random.key(0), tokens, positions, segments)["params"]

    def loss_and_grads():
        loss = lambda p: jnp.mean(Decoder(cfg).apply({"params": p}, tokens, positions, segments) ** 2)
        return jax.value_and_grad(loss)(params)

    ours = loss_and_grads()
    monkeypatch.setattr(llama, "projection_dot_general", lambda: None)  # lax.dot_general and autodiff
    theirs = loss_and_grads()
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(nn.unbox(ours[1])), jax.tree.leaves(nn.unbox(theirs[1]))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_cpu_dot_general_passes_other_contractions_to_lax():
    from mixjax.model.llama import cpu_dot_general

    x, w = jax.random.normal(jax.random.key(0), (3, 4, 5)), jax.random.normal(jax.random.key(1), (3, 5, 2))
    batched = (((2,), (1,)), ((0,), (0,)))  # a batch dimension: not a projection
    np.testing.assert_array_equal(cpu_dot_general(x, w, batched), jax.lax.dot_general(x, w, batched))
    y = jax.random.normal(jax.random.key(2), (4, 5, 6))
    two = (((2, 1), (1, 0)), ((), ()))  # contracting dims out of order
    np.testing.assert_allclose(cpu_dot_general(x, y, two), jax.lax.dot_general(x, y, two), rtol=1e-6)
    plain = (((2,), (0,)), ((), ()))
    a, b = x.astype(jnp.bfloat16), jax.random.normal(jax.random.key(3), (5, 2)).astype(jnp.bfloat16)
    wide = cpu_dot_general(a, b, plain, preferred_element_type=jnp.float32)  # a preferred type: lax's
    assert wide.dtype == jnp.float32
    np.testing.assert_array_equal(wide, jax.lax.dot_general(a, b, plain, preferred_element_type=jnp.float32))


@pytest.mark.parametrize("seq_len, head_dim, ok", [
    (4096, 128, True), (256, 64, True), (64, 64, True), (16, 16, True),
    (96, 64, False), (200, 64, False), (8, 64, False), (4096, 8, False), (4096, 48, False),
])
def test_flash_shape_rules(seq_len, head_dim, ok):
    """What the Triton kernel compiles (the CPU interpreter runs every shape)."""
    from mixjax.model.llama import flash_shape_error, resolve_attention

    assert (flash_shape_error(seq_len, head_dim) is None) == ok
    assert resolve_attention(None, seq_len, head_dim, "gpu") == ("flash" if ok else "xla")  # the default: fastest valid
    assert resolve_attention(None, seq_len, head_dim, "cpu") == "xla" and resolve_attention("flash", seq_len, head_dim, "cpu") == "flash"


def test_flash_with_rows_it_cannot_run_is_a_config_error():
    from pathlib import Path

    from mixjax.pipeline.config import ConfigError, apply_overrides, load_config, validate

    config = load_config(Path(__file__).parent / "fixtures" / "tiny_config.py")
    validate(apply_overrides(config, ["model.attention_impl='flash'", "model.dim=64", "train.seq_len=128"]), device_count=1)
    with pytest.raises(ConfigError, match=r"model.attention_impl='flash' cannot run train.seq_len=96 on GPU: seq_len 96 is neither"):
        validate(apply_overrides(config, ["model.attention_impl='flash'", "model.dim=64", "train.seq_len=96"]), device_count=1)


def test_module_runs_full_float32_matmuls():
    assert jax.config.jax_default_matmul_precision == "highest"  # tests/conftest.py full_f32_matmuls


@pytest.mark.parametrize("seq_len", [16, 32, 64, 128, 256, 384, 4096])
@pytest.mark.parametrize("head_dim", [16, 64, 128, 256])
def test_flash_tiles_fit_every_shape_the_rules_allow(seq_len, head_dim):
    """The kernel's own checks (blocks of min(block, T) dividing T; as many dQ query blocks
    as dK/dV key blocks) hold for every shape flash_shape_error lets through."""
    from mixjax.model.llama import flash_block_sizes, flash_shape_error

    assert flash_shape_error(seq_len, head_dim) is None
    b = flash_block_sizes(seq_len, head_dim)
    blocks = {name: min(getattr(b, name), seq_len) for name in ("block_q", "block_k", "block_q_dkv", "block_kv_dkv", "block_q_dq", "block_kv_dq")}
    assert all(seq_len % size == 0 and size >= 16 for size in blocks.values())
    assert seq_len // blocks["block_q_dq"] == seq_len // blocks["block_kv_dkv"]
    expected = (32, 128, 128, 32) if head_dim <= 128 else (32, 32, 32, 32)  # Triton's tutorial tiles; jax's defaults
    assert (b.block_q, b.block_k) == (128, 128) and (b.block_q_dkv, b.block_kv_dkv, b.block_q_dq, b.block_kv_dq) == expected


def test_flash_with_its_tiles_equals_xla_on_256_tokens():
    """Rows of 256: the 32 x 128 / 128 x 32 backward tiles cover two key blocks (interpret mode)."""
    q, k, v = qkv(1, 256, n=2, kv=1, h=16)
    segments = jnp.asarray(packed_segments(1, 256, seed=3))
    loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, segments, impl)))
    np.testing.assert_allclose(attention(q, k, v, segments, "flash"), attention(q, k, v, segments, "xla"), atol=2e-5, rtol=2e-5)
    for a, b in zip(jax.grad(loss("flash"), argnums=(0, 1, 2))(q, k, v), jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("remat", ["dots_with_no_batch_dims", "full"])
def test_flash_under_remat_keeps_the_gradients_and_its_residuals(remat):
    """The remat policies that save the flash kernel's residuals (its output and
    log-sum-exp) give the gradients of no remat; "full" saves neither."""
    from jax.ad_checkpoint import print_saved_residuals

    from mixjax.model.llama import _flash_kernel, remat_policy

    q, k, v = qkv(1, 32, n=4, kv=2, h=16)
    segments = jnp.asarray(packed_segments(1, 32, seed=4))
    body = lambda q, k, v: jnp.sin(_flash_kernel(q * 2.0, k, v, segments, interpret=True))
    loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v))
    remat_fn = jax.checkpoint(body, policy=remat_policy(remat))
    for a, b in zip(jax.grad(loss(remat_fn), argnums=(0, 1, 2))(q, k, v), jax.grad(loss(body), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        print_saved_residuals(loss(remat_fn), q, k, v)
    kernel_outputs = [line for line in out.getvalue().splitlines() if "custom_vjp_call" in line]
    # (groups, B, T, kv, H) output and (groups, B, kv, T) log-sum-exp, or nothing
    assert [line.split()[0] for line in kernel_outputs] == (["f32[2,1,32,2,16]", "f32[2,1,2,32]"] if remat != "full" else [])


@pytest.mark.parametrize("seq_len, head_dim, dtype, error", [
    (4096, 128, "bfloat16", None), (4096, 64, "float16", None), (96, 8, "bfloat16", None),
    (4096, 128, "float32", "model.dtype 'float32' is not 'bfloat16' or 'float16'"),
    (4096, 256, "bfloat16", "head_dim 256 is not a multiple of 8 <= 128"),
    (4096, 60, "bfloat16", "head_dim 60 is not a multiple of 8 <= 128"),
    (4095, 128, "bfloat16", "seq_len 4095 is odd"),
])
def test_cudnn_shape_rules(seq_len, head_dim, dtype, error):
    from mixjax.model.llama import cudnn_shape_error

    assert cudnn_shape_error(seq_len, head_dim, dtype) == error


def test_cudnn_with_rows_it_cannot_run_is_a_config_error():
    from pathlib import Path

    from mixjax.pipeline.config import ConfigError, apply_overrides, load_config, validate

    config = load_config(Path(__file__).parent / "fixtures" / "tiny_config.py")
    ok = ["model.attention_impl='cudnn'", "model.dim=64", "model.dtype='bfloat16'"]
    validate(apply_overrides(config, ok), device_count=1)  # head_dim 32, seq_len 96
    with pytest.raises(ConfigError, match=r"^model.attention_impl='cudnn' cannot run train.seq_len=96 with model.head_dim=32 and"
                       r" model.dtype='float32': model.dtype 'float32' is not 'bfloat16' or 'float16'; fix that, or set"
                       r" model.attention_impl=None \(flash where it runs, else xla\)$"):
        validate(apply_overrides(config, ok[:2]), device_count=1)


def test_cudnn_needs_cuda_when_traced():
    """Why no CPU test runs the cuDNN path: jax reads the cuDNN version when it traces it."""
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv(1, 16, h=16))
    with pytest.raises(RuntimeError, match="cuDNN is not detected"):
        attention(q, k, v, jnp.ones((1, 16), jnp.int32), "cudnn")


def test_cudnn_train_step_lowers_for_cuda(monkeypatch):
    """With jax's cuDNN version probe answered (9.10, as a GPU node would), the model's train
    step lowers for CUDA to cuDNN's fused attention with the same-segment mask as a
    (B, 1, T, T) bias, forward and backward (what cuDNN accepts at run time is not checked)."""
    import re

    from jax._src.cudnn import fused_attention_stablehlo

    from mixjax.train.loop import TrainConfig, Trainer
    from mixjax.train.sharding import LOGICAL_RULES

    monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 91000)
    model = dataclasses.replace(CONFIG, dim=64, n_heads=4, n_kv_heads=2, dtype="bfloat16", attention_impl="cudnn")
    trainer = Trainer(model, TrainConfig(seq_len=64, batch_size=2))
    batch = {key: jax.ShapeDtypeStruct((1, 2, 64), jnp.float32 if key == "weights" else jnp.int32, sharding=trainer.step_sharding)
             for key in ("inputs", "targets", "weights", "segment_ids", "positions")}
    with trainer.mesh, nn.logical_axis_rules(LOGICAL_RULES):
        text = trainer._train.trace(trainer.abstract_state, batch).lower(lowering_platforms=("cuda",)).as_text()
    assert sorted(set(re.findall(r"__cudnn\$\w+", text))) == ["__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward"]
    assert "tensor<2x1x64x64xbf16>" in text  # the mask as a bias, one per row
