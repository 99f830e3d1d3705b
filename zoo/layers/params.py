"""Parameter factories that annotate every weight with logical axis names.

Logical names ("embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "norm") are mapped to
mesh axes by sharding rules; the layers only say what each dimension *is*.
"""

from typing import Sequence

import flax.linen as nn


class TokenDense(nn.DenseGeneral):
    """DenseGeneral over the trailing `axis` dims, with every leading (token) dim flattened into
    one first: the kernel's gradient is then a single GEMM. Contracting batch and time as two
    axes made XLA:CPU's backward of a SwiGLU 1.5-2x slower (bench/vs_transformers.py)."""

    def __call__(self, x):
        n_in = len(self.axis) if isinstance(self.axis, tuple) else 1
        lead = x.shape[:-n_in]
        out = super().__call__(x.reshape(-1, *x.shape[-n_in:]))
        return out.reshape(*lead, *out.shape[1:])


def dense(features, axes: Sequence[str], *, dtype, param_dtype, init_std, name, in_axes=1):
    """A bias-free dense layer whose kernel carries logical `axes` (inputs first, then
    outputs)."""
    init = nn.with_logical_partitioning(nn.initializers.normal(init_std), tuple(axes))
    return TokenDense(features, axis=tuple(range(-in_axes, 0)), use_bias=False, dtype=dtype,
                      param_dtype=param_dtype, kernel_init=init, name=name)


def rms_norm(eps: float, *, dtype, param_dtype, name):
    return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)))
