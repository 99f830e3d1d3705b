"""swiglu's written-out derivative == autodiff of silu(gate) * up; in bfloat16 it is float32
maths rounded once."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers.mlp import swiglu


def _value_and_grads(fn, gate, up, cot):
    out, vjp = jax.vjp(fn, gate, up)
    return out, vjp(cot.astype(out.dtype))


def test_float32_equals_autodiff_of_the_expression():
    gate, up, cot = (jax.random.normal(k, (4, 6, 32)) * 3 for k in jax.random.split(
        jax.random.key(0), 3))
    got = _value_and_grads(swiglu, gate, up, cot)
    want = _value_and_grads(lambda g, u: nn.silu(g) * u, gate, up, cot)
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_bfloat16_is_float32_maths_rounded_once():
    gate, up, cot = (jax.random.normal(k, (4, 6, 32)) * 3 for k in jax.random.split(
        jax.random.key(1), 3))
    g16, u16, c16 = (x.astype(jnp.bfloat16) for x in (gate, up, cot))
    out, (d_gate, d_up) = _value_and_grads(swiglu, g16, u16, c16)
    want_out, (want_gate, want_up) = _value_and_grads(
        lambda g, u: nn.silu(g) * u, *(x.astype(jnp.float32) for x in (g16, u16, c16)))
    assert out.dtype == d_gate.dtype == d_up.dtype == jnp.bfloat16
    chex.assert_trees_all_equal(out, want_out.astype(jnp.bfloat16))
    chex.assert_trees_all_close(d_gate, want_gate.astype(jnp.bfloat16), atol=0, rtol=2 ** -7)
    chex.assert_trees_all_close(d_up, want_up.astype(jnp.bfloat16), atol=0, rtol=2 ** -7)
