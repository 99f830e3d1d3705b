"""masked_attention == jax.nn.dot_product_attention (values and gradients) under every mask kind
and grouped-query layout; in bfloat16 every product of its backward reads bfloat16."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.layers.attention import attention_mask
from zoo.layers.masked_attention import masked_attention, reference_masked_attention


def _inputs(dtype, b=2, t=8, h=4, kv=2, d=16):
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (b, t, h, d), dtype)
    k = jax.random.normal(ks[1], (b, t, kv, d), dtype)
    v = jax.random.normal(ks[2], (b, t, kv, d), dtype)
    cot = jax.random.normal(ks[3], (b, t, h, d), jnp.float32)
    return q, k, v, cot


def _value_and_grads(attn, q, k, v, mask, cot):
    def loss(q, k, v):
        out = attn(q, k, v, mask)
        return jnp.sum(out.astype(jnp.float32) * cot), out
    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


MASKS = {
    "causal": lambda b, t: attention_mask("causal", t),
    "bidirectional": lambda b, t: attention_mask("bidirectional", t),
    "block_causal": lambda b, t: attention_mask("block_causal", t, block_size=4),
    "block_diffusion": lambda b, t: attention_mask("block_diffusion", t, block_size=2),
    "causal, packed": lambda b, t: attention_mask(
        "causal", t, segment_ids=jnp.array([[0] * 3 + [1] * (t - 3), [0] * t])),
    "a row sees nothing": lambda b, t: attention_mask("causal", t).at[..., 2, :].set(False),
}


@pytest.mark.parametrize("mask_kind, heads", [(kind, (4, 2)) for kind in MASKS]
                         + [("causal", (4, 4)), ("block_diffusion", (3, 1))])
def test_float32_equals_reference(mask_kind, heads):
    h, kv = heads
    q, k, v, cot = _inputs(jnp.float32, h=h, kv=kv)
    mask = MASKS[mask_kind](2, 8)
    out, grads = _value_and_grads(masked_attention, q, k, v, mask, cot)
    want_out, want_grads = _value_and_grads(reference_masked_attention, q, k, v, mask, cot)
    chex.assert_trees_all_close(out, want_out, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(grads, want_grads, atol=1e-5, rtol=1e-5)


def test_bfloat16_is_as_close_to_float32_maths_as_the_reference():
    """Both round to bfloat16 at different places; neither may stray further than the other's
    error allows (twice the reference's, plus an ulp at the values' scale)."""
    q, k, v, cot = _inputs(jnp.bfloat16, t=32)
    mask = attention_mask("causal", 32)
    truth = _value_and_grads(reference_masked_attention, *(x.astype(jnp.float32)
                                                           for x in (q, k, v)), mask, cot)
    ours = _value_and_grads(masked_attention, q, k, v, mask, cot)
    ref = _value_and_grads(reference_masked_attention, q, k, v, mask, cot)
    for t, o, r in zip(jax.tree.leaves(truth), jax.tree.leaves(ours), jax.tree.leaves(ref)):
        assert o.dtype == jnp.bfloat16
        t, o, r = (np.asarray(x, np.float32) for x in (t, o, r))
        ulp = 2.0 ** -8 * np.max(np.abs(t))
        assert np.max(np.abs(o - t)) <= 2 * np.max(np.abs(r - t)) + ulp


def test_bfloat16_backward_products_read_bfloat16():
    """The speed: all four products of the backward (and both of the forward) take bfloat16
    operands and accumulate in float32; the reference's autodiff upcasts them."""
    q, k, v, cot = _inputs(jnp.bfloat16)
    mask = attention_mask("causal", 8)

    def dots(attn):
        grad = jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v, mask).astype(jnp.float32) * cot),
                        argnums=(0, 1, 2))
        text = jax.jit(grad).lower(q, k, v).as_text()
        return [line for line in text.splitlines() if "stablehlo.dot_general" in line]

    ours = dots(masked_attention)
    assert len(ours) == 6
    for line in ours:
        operands = line.split(":")[-1].split("->")[0]
        assert "f32" not in operands and "bf16" in operands, line
    assert any("f32" in line.split(":")[-1].split("->")[0] for line in dots(
        reference_masked_attention))


def test_bad_mask_shape_is_named():
    q, k, v, _ = _inputs(jnp.float32)
    with pytest.raises(ValueError, match=r"\[B or 1, 1, 8, 8\]"):
        masked_attention(q, k, v, jnp.ones((8, 8), bool))
