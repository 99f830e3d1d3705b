"""SSM tree scan as a Pallas GPU (Triton) kernel.

Grid (batch row b, head h): one program holds the whole tree of one head and runs the same tile
math as the TPU kernel (`tpu.scan_tile`: ancestor mask from parents, S by masked sums, masked
decay, C Bᵀ, scores @ x, C h0ᵀ) on the same head-major layout (`tpu.to_kernel_layout`).

Where this differs from the TPU kernel, because Triton cannot do the same:
  * no scalar prefetch: A and D arrive as [H, 1] arrays and each program loads its head's entry
    from a one-element block;
  * Triton's block dimensions must be powers of two and `dot` needs at least 16 rows and columns:
    T is padded to a power of two >= 16 (not to a multiple of 8), and P and N must be powers of
    two >= 16 (64 and 128, Mamba2's usual sizes, are);
  * the whole tree's [T_pad, T_pad] mask, decay and score tiles live in registers, not in a
    scratchpad, so trees are capped at MAX_NODES (a bound on register spilling, not on
    correctness; larger trees go to the XLA path under backend="auto").
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .tpu import from_kernel_layout, scan_tile, to_kernel_layout

MAX_NODES = 128


def unsupported(x, B) -> str | None:
    """Why this kernel cannot take these shapes, or None when it can."""
    t, p, n = x.shape[1], x.shape[3], B.shape[3]
    for name, size in (("head dim P", p), ("state dim N", n)):
        if size < 16 or size & (size - 1):
            return f"pallas_gpu ssm_tree_scan needs a power-of-two {name} >= 16, got {size}"
    if t > MAX_NODES:
        return (f"pallas_gpu ssm_tree_scan holds a tree in registers, at most {MAX_NODES} nodes, "
                f"got {t}; use backend='xla'")
    return None


def _kernel(a_ref, d_ref, x_ref, dt_col_ref, dt_row_ref, b_ref, c_ref, h0_ref, par_ref, y_ref,
            s_ref):
    y, s = scan_tile(x_ref[...], dt_col_ref[...], dt_row_ref[...], b_ref[...], c_ref[...],
                     h0_ref[...], par_ref[...], a_ref[0], d_ref[0])
    y_ref[...] = y.astype(y_ref.dtype)
    s_ref[...] = s


def ssm_tree_scan(x, dt, A, B, C, D, h0, parents, *, interpret: bool = False,
                  num_warps: int = 4):
    """Same contract as `zoo_kernels.ssm_tree_scan.reference.ssm_tree_scan`.

    interpret: True to run on CPU.
    """
    if (problem := unsupported(x, B)) is not None:
        raise ValueError(problem)
    bt, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    t_pad = max(16, pl.next_power_of_2(t))
    x_h, dt_col, dt_row, b_g, c_g, par = to_kernel_layout(x, dt, B, C, parents, t_pad)

    per_head = lambda rows, cols: pl.BlockSpec(  # noqa: E731
        (None, None, rows, cols), lambda b_, h_: (b_, h_, 0, 0))
    per_group = pl.BlockSpec((None, None, t_pad, n),
                             lambda b_, h_: (b_, jax.lax.div(h_, h // g), 0, 0))
    scalar_of_head = pl.BlockSpec((None, 1), lambda b_, h_: (h_, 0))
    y, log_decay = pl.pallas_call(
        _kernel,
        grid=(bt, h),
        in_specs=[scalar_of_head, scalar_of_head, per_head(t_pad, p), per_head(t_pad, 1),
                  per_head(1, t_pad), per_group, per_group, per_head(p, n),
                  pl.BlockSpec((None, t_pad, 1), lambda b_, h_: (b_, 0, 0))],
        out_specs=[per_head(t_pad, p), per_head(t_pad, 1)],
        out_shape=[jax.ShapeDtypeStruct((bt, h, t_pad, p), x.dtype),
                   jax.ShapeDtypeStruct((bt, h, t_pad, 1), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        name="ssm_tree_scan",
        interpret=interpret,
    )(A.astype(jnp.float32)[:, None], D.astype(jnp.float32)[:, None], x_h, dt_col, dt_row, b_g,
      c_g, h0.astype(jnp.float32), par)
    return from_kernel_layout(y, log_decay, t)
