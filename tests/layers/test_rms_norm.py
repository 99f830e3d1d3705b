"""RMSNorm with its written-out backward == flax.linen.RMSNorm: same params, same values, same
gradients (float32), and the same float32-then-round numbers in bfloat16."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from zoo.layers.rms_norm import RMSNorm


def _value_and_grads(module, params, x, cot):
    out, vjp = jax.vjp(module.apply, params, x)
    return out, vjp(cot.astype(out.dtype))


@pytest.mark.parametrize("in_dtype, dtype", [(jnp.float32, jnp.float32),
                                             (jnp.bfloat16, jnp.bfloat16),
                                             (jnp.float32, jnp.bfloat16)])
def test_equals_flax_rms_norm(in_dtype, dtype):
    x = (jax.random.normal(jax.random.key(0), (3, 5, 32)) * 4).astype(in_dtype)
    cot = jax.random.normal(jax.random.key(1), (3, 5, 32))
    ours = RMSNorm(1e-6, dtype, jnp.float32)
    flax_norm = nn.RMSNorm(epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32)
    params = ours.init(jax.random.key(2), x)
    assert jax.tree.structure(params) == jax.tree.structure(flax_norm.init(jax.random.key(2), x))
    params = {"params": {"scale": jax.random.uniform(jax.random.key(3), (32,)) + 0.5}}
    out, (d_params, dx) = _value_and_grads(ours, params, x, cot)
    want, (want_params, want_x) = _value_and_grads(flax_norm, params, x, cot)
    assert out.dtype == jnp.dtype(dtype) and dx.dtype == jnp.dtype(in_dtype)
    tol = 1e-5 if dtype == jnp.float32 else 2 ** -7
    chex.assert_trees_all_close(out, want, atol=tol, rtol=tol)
    chex.assert_trees_all_close(d_params, want_params, atol=tol * 10, rtol=tol)
    chex.assert_trees_all_close(dx, want_x, atol=tol, rtol=tol)
