"""SwiGLU feed-forward block (Llama): down(silu(gate(x)) * up(x)), no biases."""

import flax.linen as nn
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
        return dense(self.d_model, ("mlp", "embed"), name="down", **kw)(nn.silu(gate) * up)
