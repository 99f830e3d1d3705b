"""The chunked SSD (training, prefill) equals the token-by-token recurrence (the definition)."""

import chex
import jax
import jax.numpy as jnp
import pytest

from zoo.layers import ssd

# Jitted: eager dispatch would compile each of the many small ops once per shape.
ssd_chunked = jax.jit(ssd.ssd_chunked, static_argnames="chunk_size")
ssd_recurrent = jax.jit(ssd.ssd_recurrent)


def _inputs(seed, bt, length, h, p, g, n, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 7)
    return (jax.random.normal(k[0], (bt, length, h, p), dtype),
            jax.nn.softplus(jax.random.normal(k[1], (bt, length, h))),
            -jnp.exp(jax.random.normal(k[2], (h,))),
            jax.random.normal(k[3], (bt, length, g, n), dtype),
            jax.random.normal(k[4], (bt, length, g, n), dtype),
            jax.random.normal(k[5], (h,)),
            jax.random.normal(k[6], (bt, h, p, n)))


@pytest.mark.parametrize("length, chunk", [(1, 64), (37, 8), (64, 16), (50, 64), (33, 1)])
@pytest.mark.parametrize("groups", [1, 2])
def test_chunked_equals_recurrence(length, chunk, groups):
    x, dt, a, b, c, d, h0 = _inputs(length + groups, 2, length, 4, 8, groups, 16)
    want_y, want_h = ssd_recurrent(x, dt, a, b, c, d, h0)
    got_y, got_h = ssd_chunked(x, dt, a, b, c, d, h0, chunk_size=chunk)
    chex.assert_trees_all_close(got_y, want_y, atol=1e-4, rtol=1e-4)
    chex.assert_trees_all_close(got_h, want_h, atol=1e-4, rtol=1e-4)


def test_zero_initial_state_is_the_default_and_bfloat16_is_accumulated_in_float32():
    x, dt, a, b, c, d, _ = _inputs(3, 1, 40, 2, 16, 1, 16, jnp.bfloat16)
    want_y, want_h = ssd_recurrent(x, dt, a, b, c, d)
    got_y, got_h = ssd_chunked(x, dt, a, b, c, d, chunk_size=16)
    assert got_y.dtype == jnp.bfloat16 and got_h.dtype == jnp.float32
    chex.assert_trees_all_close(got_y.astype(jnp.float32), want_y.astype(jnp.float32), atol=5e-2,
                                rtol=5e-2)
    chex.assert_trees_all_close(got_h, want_h, atol=1e-3, rtol=1e-3)


def test_dt_zero_leaves_the_state_alone():
    """Prefill relies on it: positions past a row's length get dt = 0."""
    x, dt, a, b, c, d, h0 = _inputs(4, 1, 20, 2, 8, 1, 8)
    _, at_12 = ssd_recurrent(x[:, :12], dt[:, :12], a, b[:, :12], c[:, :12], d, h0)
    padded = dt.at[:, 12:].set(0.0)
    _, final = ssd_chunked(x, padded, a, b, c, d, h0, chunk_size=8)
    chex.assert_trees_all_close(final, at_12, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("heads, groups", [(6, 1), (6, 2), (6, 3)])
def test_chunked_gradients_equal_the_recurrence_with_grouped_heads(heads, groups):
    """Gradients too (training runs the chunked form), with several heads reading each group's
    B and C."""
    x, dt, a, b, c, d, h0 = _inputs(heads + groups, 2, 21, heads, 4, groups, 8)
    k = jax.random.split(jax.random.key(9), 2)
    wy, wh = jax.random.normal(k[0], x.shape), jax.random.normal(k[1], h0.shape)

    def loss(fn, *args):
        y, final = fn(*args)
        return jnp.sum(y * wy) + jnp.sum(final * wh)

    args = (x, dt, a, b, c, d, h0)
    want = jax.grad(lambda *v: loss(ssd_recurrent, *v), argnums=range(7))(*args)
    got = jax.grad(lambda *v: loss(lambda *u: ssd_chunked(*u, chunk_size=8), *v),
                   argnums=range(7))(*args)
    chex.assert_trees_all_close(got, want, atol=2e-4, rtol=2e-4)
