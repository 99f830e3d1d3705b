"""SwiGLU feed-forward block (Llama): down(silu(gate(x)) * up(x)), no biases."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers.params import dense


class SwiGLU(nn.Module):
    d_model: int
    mlp_dim: int
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    init_std: float

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, init_std=self.init_std)
        gate = dense(self.mlp_dim, ("embed", "mlp"), name="gate", **kw)(x)
        up = dense(self.mlp_dim, ("embed", "mlp"), name="up", **kw)(x)
        return dense(self.d_model, ("mlp", "embed"), name="down", **kw)(swiglu(gate, up))


@jax.custom_vjp
def swiglu(gate, up):
    """silu(gate) * up, computed in float32 and rounded once to the inputs' dtype, with its
    derivative written out: autodiff of the bfloat16 expression rounds at every step and ran
    the activation's forward + backward at half the speed on CPU (bench/train_step.py)."""
    return _swiglu_fwd(gate, up)[0]


def _swiglu_fwd(gate, up):
    g = gate.astype(jnp.float32)
    return (g * jax.nn.sigmoid(g) * up.astype(jnp.float32)).astype(gate.dtype), (gate, up)


def _swiglu_bwd(residuals, d_out):
    gate, up = residuals
    g, u, d = gate.astype(jnp.float32), up.astype(jnp.float32), d_out.astype(jnp.float32)
    sig = jax.nn.sigmoid(g)
    d_gate = d * u * sig * (1 + g * (1 - sig))  # d silu(g) / dg = sig * (1 + g * (1 - sig))
    return d_gate.astype(gate.dtype), (d * g * sig).astype(up.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
