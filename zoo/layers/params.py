"""Parameter factories that annotate every weight with logical axis names.

Logical names ("embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "norm") are mapped to
mesh axes by sharding rules; the layers only say what each dimension *is*.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers.rms_norm import RMSNorm
from zoo.platform import on_cpu

_MATMUL = (((1,), (0,)), ((), ()))  # x [N, K] . w [K, M]
# XLA:CPU runs a bfloat16 GEMM of 1-3 rows 1.1-10x slower than one of 4 (a 1-row [512, 2048]
# product: 1.1 ms, 4 rows: 0.12 ms), so in CPU programs fewer rows are padded to 4: batch-1
# bfloat16 decoding 269 -> 301-320 tokens/s (bench/ar_decode.py --dtype bfloat16).
MIN_LOW_PRECISION_ROWS = 4


@jax.custom_vjp
def _low_precision_matmul(x, w):
    return jax.lax.dot_general(x, w, _MATMUL, preferred_element_type=jnp.float32).astype(x.dtype)


def _low_precision_matmul_fwd(x, w):
    return _low_precision_matmul(x, w), (x, w)


def _low_precision_matmul_bwd(residuals, g):
    """dx = g w^T and dw = x^T g, both bfloat16 GEMMs accumulating in float32 (AMX where the
    CPU has it). XLA:CPU runs a bfloat16 GEMM contracting the leading (token) axis as a float32
    one, and folds a plain transpose of x back into that form, so on CPU x^T is materialised
    first: dw of a [2048, 512] x [2048, 1408] pair 10.7 -> 3.1 ms (bench/train_step.py)."""
    x, w = residuals
    dx = jax.lax.dot_general(g, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    dw = jax.lax.dot_general(materialized(x.T), g.astype(x.dtype), _MATMUL,
                             preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


def materialized(x):
    """x (made by a transpose) as its own row-major array when it is 16-bit in a CPU program; x
    itself otherwise. XLA:CPU folds a transpose into the dot that reads it (or into a layout
    change the dot reads transposed) and then runs a bfloat16 dot as a float32 GEMM; the barrier
    on the flat view keeps the transpose a copy of its own. TPU and GPU programs never see it."""
    if jnp.dtype(x.dtype).itemsize >= 4:
        return x
    return on_cpu(lambda x: jax.lax.optimization_barrier(x.reshape(-1)).reshape(x.shape),
                  lambda x: x, x)


_low_precision_matmul.defvjp(_low_precision_matmul_fwd, _low_precision_matmul_bwd)


def token_dot(x, kernel, dimension_numbers, precision=None):
    """`DenseGeneral`'s dot_general for TokenDense: x [N, *in] . kernel [*in, *out] as one 2-D
    GEMM. In bfloat16/float16 it accumulates in float32 and rounds the result once: XLA:CPU runs
    a bfloat16 GEMM with a float32 result several times faster than one with a bfloat16 result
    (bench/train_step.py), and autodiff of the plain dot would give the bfloat16-result kind."""
    (contract, _), _ = dimension_numbers
    n, k = x.shape[0], math.prod(x.shape[1:])
    x2, w2 = x.reshape(n, k), kernel.reshape(k, -1)
    if jnp.dtype(x.dtype).itemsize < 4:
        if n < MIN_LOW_PRECISION_ROWS:  # XLA:CPU's 1-3 row bfloat16 GEMM is its slow path
            def padded(x2, w2):
                rows = jnp.pad(x2, ((0, MIN_LOW_PRECISION_ROWS - n), (0, 0)))
                return _low_precision_matmul(rows, w2)[:n]

            y = on_cpu(padded, _low_precision_matmul, x2, w2)
        else:
            y = _low_precision_matmul(x2, w2)
    else:
        y = jax.lax.dot_general(x2, w2, _MATMUL, precision=precision)
    return y.reshape(n, *kernel.shape[len(contract):])


class TokenDense(nn.DenseGeneral):
    """DenseGeneral over the trailing `axis` dims, with every leading (token) dim flattened into
    one first: the kernel's gradient is then a single GEMM. Contracting batch and time as two
    axes made XLA:CPU's backward of a SwiGLU 1.5-2x slower (bench/vs_transformers.py)."""

    def __call__(self, x):
        n_in = len(self.axis) if isinstance(self.axis, tuple) else 1
        lead = x.shape[:-n_in]
        out = super().__call__(x.reshape(-1, *x.shape[-n_in:]))
        return out.reshape(*lead, *out.shape[1:])


def dense(features, axes: Sequence[str], *, dtype, param_dtype, init_std, name, in_axes=1,
          bias=False):
    """A dense layer whose kernel carries logical `axes` (inputs first, then outputs); bias-free
    unless `bias` (zeros at init, over the output axes)."""
    init = nn.with_logical_partitioning(nn.initializers.normal(init_std), tuple(axes))
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(axes[in_axes:]))
    return TokenDense(features, axis=tuple(range(-in_axes, 0)), use_bias=bias, dtype=dtype,
                      param_dtype=param_dtype, kernel_init=init, bias_init=bias_init,
                      dot_general=token_dot, name=name)


def rms_norm(eps: float, *, dtype, param_dtype, name):
    return RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
                   scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)))
