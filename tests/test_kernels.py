"""Attention and loss kernels as compiled per platform (issue 19 items 5, 9, 10): TPU takes
the XLA attention path; grouped-query flash attention reads the KV heads without a
repeated copy; the LM head's matmuls take compute-dtype (bf16) operands and accumulate in
float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mixjax.model.llama as llama
from mixjax.model.llama import attention, xla_attention
from mixjax.train.step import chunked_cross_entropy

# Tolerances below assume full float32 matmuls (not TF32 on a GPU): tests/conftest.py.
pytestmark = pytest.mark.usefixtures("full_f32_matmuls")


def _equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in its equations' params."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    yield from _equations(inner)


def _qkv(b=2, t=64, n=4, kv=2, h=16):
    ks = jax.random.split(jax.random.key(0), 3)
    segments = jnp.asarray(np.repeat([[1] * 30 + [2] * 24 + [0] * 10], b, 0), jnp.int32)
    return jax.random.normal(ks[0], (b, t, n, h)), jax.random.normal(ks[1], (b, t, kv, h)), jax.random.normal(ks[2], (b, t, kv, h)), segments


def test_flash_gqa_reads_kv_heads_without_repeating_them():
    q, k, v, segments = _qkv()
    loss = lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, segments, "flash")))
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v).jaxpr
    kernels = [e for e in _equations(jaxpr) if e.primitive.name == "pallas_call"]
    assert len(kernels) >= 2  # forward and backward
    shapes = [tuple(x.aval.shape) for e in kernels for x in (*e.invars, *e.outvars)]
    assert k.shape in shapes  # the kernels take K/V with their 2 heads...
    assert (2, 64, 4, 16) not in shapes  # ...never K/V repeated to the 4 query heads (jnp.repeat)
    # The values (forward and gradients, GQA 4 query / 2 KV heads) against the XLA path:
    # tests/test_model.py::test_flash_attention_equals_dense_masked_on_packed_segments.


def test_flash_on_tpu_takes_the_xla_path(monkeypatch):
    """No GPU Triton kernel in the Pallas interpreter on TPU: the XLA path, same numbers."""
    monkeypatch.setattr(llama, "kernel_platform", lambda: "tpu")
    q, k, v, segments = _qkv()
    jaxpr = jax.make_jaxpr(lambda q, k, v: attention(q, k, v, segments, "flash"))(q, k, v).jaxpr
    assert not [e for e in _equations(jaxpr) if e.primitive.name == "pallas_call"]
    np.testing.assert_array_equal(attention(q, k, v, segments, "flash"), xla_attention(q, k, v, segments))


def test_lm_head_matmuls_take_bf16_operands_and_accumulate_in_float32(monkeypatch):
    b, t, d, vocab, chunk = 2, 24, 32, 96, 8
    hidden = jax.random.normal(jax.random.key(1), (b, t, d))
    head = jax.random.normal(jax.random.key(2), (d, vocab)) * 0.1
    targets = jax.random.randint(jax.random.key(3), (b, t), 0, vocab)
    loss = lambda h, w, dtype: jnp.sum(chunked_cross_entropy(h, w, targets, chunk, dtype))
    with monkeypatch.context() as m:  # the program for a GPU (traced only; XLA:CPU has no bf16 x bf16 -> f32 dot)
        m.setattr(llama, "kernel_platform", lambda: "gpu")
        jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(hidden, head, jnp.bfloat16).jaxpr
    dots = [e for e in _equations(jaxpr) if e.primitive.name == "dot_general"]
    assert len(dots) >= 3  # logits (forward, recomputed), and the two gradient matmuls
    assert all(x.aval.dtype == jnp.bfloat16 for e in dots for x in e.invars)
    assert all(e.params["preferred_element_type"] == jnp.float32 and e.outvars[0].aval.dtype == jnp.float32 for e in dots)
    # On CPU the same rounding with float32 matmuls: the numbers a GPU computes.
    grads = jax.grad(loss, argnums=(0, 1))(hidden, head, jnp.bfloat16)
    assert grads[1].dtype == jnp.float32  # the head's gradient accumulates over chunks in float32
    exact = jax.grad(loss, argnums=(0, 1))(hidden, head, jnp.float32)
    assert float(loss(hidden, head, jnp.bfloat16)) == pytest.approx(float(loss(hidden, head, jnp.float32)), rel=2e-3)
    for a, e in zip(grads, exact):
        assert float(jnp.max(jnp.abs(a - e))) < 0.02 * float(jnp.max(jnp.abs(e)))
