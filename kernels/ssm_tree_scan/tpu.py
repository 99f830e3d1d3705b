"""SSM tree scan as a Mosaic (TPU) Pallas kernel, and the per-(row, head) tile math that the GPU
kernel shares.

Grid (batch row b, head h). One program holds the whole tree of one head: x [T_pad, P], dt as a
column [T_pad, 1] and as a row [1, T_pad] (passed twice so that neither orientation needs an
in-kernel transpose), its group's B and C [T_pad, N], h0 [P, N] and the parents column. It builds
the ancestor mask (and its transpose) in VMEM from parents, then computes the SSD masked form
(ALGORITHMS.md section 5) with three matmuls: C Bᵀ [T, T], the masked-decay scores @ x, and
C h0ᵀ. Heads of a group are consecutive grid steps with the same B/C block index, so the pipeline
fetches B and C once per group, not per head. A and D are scalar-prefetched into SMEM.

S = anc @ (dt A) is taken as masked row sums (and its row form as column sums over the
transposed mask) rather than as [T, T] @ [T, 1] matmuls: a one-column matmul wastes an MXU pass
and cannot be written in Triton at all (dot needs >= 16 columns), while the masked sums cost the
same T² vector work as the mask, are exact float32 whatever the matmul precision, and keep one
code path for both kernels. The decay exp(S_i - S_j) is exponentiated only on the mask (-inf
off it), so it is <= 1 there and 0 elsewhere, never inf.

Tiling: T is padded to the sublane tile (8 rows for 32-bit inputs, 16 for bfloat16); padded nodes
are roots with dt = 0 and zero inputs, so they touch no real node and are dropped. P, N and T_pad
are full array dimensions of their blocks, which Mosaic accepts for any size. Inputs may be
bfloat16: C Bᵀ and scores @ x take bfloat16 operands (the scores are cast to x's dtype, as
Mamba2's own kernels do) with float32 accumulation; S, the exponentials, h0 and the output
accumulate in float32, and float32 operands get full-precision matmuls.
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ..backends import VMEM_BUDGET, round_up
from ..trees import ancestor_masks_in_kernel


def _dot(a, b, contract_b: int):
    """a [M, K] times b ([K, N] if contract_b == 0, [N, K] if 1) with float32 accumulation."""
    precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jax.lax.dot_general(a, b, (((1,), (contract_b,)), ((), ())), precision=precision,
                               preferred_element_type=jnp.float32)


def scan_tile(x, dt_col, dt_row, b, c, h0, parent_col, a, d):
    """The tree scan of one (row, head), on 2-D arrays as a kernel holds them.

    x [T, P] and b, c [T, N] in the input dtype; dt_col [T, 1], dt_row [1, T] and h0 [P, N]
    float32; parent_col int32[T, 1]; a, d float32 scalars. Returns (y [T, P], S [T, 1]), float32.
    """
    anc, anc_t = ancestor_masks_in_kernel(parent_col)
    s_col = jnp.sum(jnp.where(anc, dt_row * a, 0.0), axis=1, keepdims=True)    # S_i, [T, 1]
    s_row = jnp.sum(jnp.where(anc_t, dt_col * a, 0.0), axis=0, keepdims=True)  # S_j, [1, T]
    decay = jnp.exp(jnp.where(anc, s_col - s_row, -jnp.inf))
    scores = (decay * _dot(c, b, contract_b=1) * dt_row).astype(x.dtype)
    from_tree = _dot(scores, x, contract_b=0)
    from_h0 = _dot(c.astype(jnp.float32), h0, contract_b=1)
    return from_tree + jnp.exp(s_col) * from_h0 + d * x.astype(jnp.float32), s_col


def to_kernel_layout(x, dt, B, C, parents, t_pad: int):
    """Head-major, T padded to t_pad: x [B, T, H, P] -> [B, H, t_pad, P]; dt [B, T, H] -> float32
    column [B, H, t_pad, 1] and row [B, H, 1, t_pad]; B, C [B, T, G, N] -> [B, G, t_pad, N];
    parents [B, T] -> [B, t_pad, 1]. Padded nodes are roots with dt = 0 and zero inputs."""
    pad = lambda a, value=0: jnp.pad(  # noqa: E731
        a, [(0, 0), (0, t_pad - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=value)
    dt_heads = pad(dt.astype(jnp.float32)).transpose(0, 2, 1)  # [B, H, t_pad]
    return (pad(x).transpose(0, 2, 1, 3), dt_heads[..., None], dt_heads[:, :, None, :],
            pad(B).transpose(0, 2, 1, 3), pad(C).transpose(0, 2, 1, 3),
            pad(parents.astype(jnp.int32), -1)[..., None])


def from_kernel_layout(y, log_decay, t: int):
    """y [B, H, t_pad, P] -> [B, T, H, P]; log_decay [B, H, t_pad, 1] -> [B, T, H]."""
    return y[:, :, :t].transpose(0, 2, 1, 3), log_decay[:, :, :t, 0].transpose(0, 2, 1)


def _sublane_rows(dtype) -> int:
    return 8 * (4 // jnp.dtype(dtype).itemsize)


def vmem_bytes(t, p, n, dtype) -> int:
    """Estimated VMEM of one grid step: double-buffered blocks and the [T, T] temporaries, with
    the lane dimension padded to 128 and the sublane one to 8 as Mosaic lays arrays out."""
    itemsize = jnp.dtype(dtype).itemsize
    t_pad = round_up(t, _sublane_rows(dtype))
    lanes = lambda k: round_up(k, 128)  # noqa: E731
    blocks = (itemsize * t_pad * 2 * (lanes(p) + lanes(n))  # x, y, B, C
              + 4 * (round_up(p, 8) * lanes(n) + 3 * t_pad * 128 + 8 * lanes(t_pad)))
    temporaries = 4 * (8 * t_pad * lanes(t_pad) + 3 * t_pad * lanes(p))
    return 2 * blocks + temporaries


def unsupported(x, B) -> str | None:
    """Why this kernel cannot take these shapes, or None when it can."""
    t, p, n = x.shape[1], x.shape[3], B.shape[3]
    need = vmem_bytes(t, p, n, x.dtype)
    if need > VMEM_BUDGET:
        return (f"pallas_tpu ssm_tree_scan: a tree of {t} nodes needs ~{need / 2**20:.0f} MiB of "
                f"VMEM per (row, head), over the {VMEM_BUDGET / 2**20:.0f} MiB budget; scan "
                f"fewer nodes at once or use backend='xla'")
    return None


def _kernel(a_ref, d_ref, x_ref, dt_col_ref, dt_row_ref, b_ref, c_ref, h0_ref, par_ref, y_ref,
            s_ref):
    head = pl.program_id(1)
    y, s = scan_tile(x_ref[...], dt_col_ref[...], dt_row_ref[...], b_ref[...], c_ref[...],
                     h0_ref[...], par_ref[...], a_ref[head], d_ref[head])
    y_ref[...] = y.astype(y_ref.dtype)
    s_ref[...] = s


def ssm_tree_scan(x, dt, A, B, C, D, h0, parents, *, interpret=None):
    """Same contract as `zoo_kernels.ssm_tree_scan.reference.ssm_tree_scan`.

    interpret: None to compile for TPU, or `pltpu.InterpretParams()` to simulate on CPU.
    """
    bt, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    t_pad = round_up(t, _sublane_rows(x.dtype))
    x_h, dt_col, dt_row, b_g, c_g, par = to_kernel_layout(x, dt, B, C, parents, t_pad)

    per_head = lambda rows, cols: pl.BlockSpec(  # noqa: E731
        (None, None, rows, cols), lambda b_, h_, a_, d_: (b_, h_, 0, 0))
    # lax.div, not //: the head index is non-negative, and floor division's Mosaic lowering
    # needs to know the TPU generation, which a lowering on another host cannot.
    per_group = pl.BlockSpec((None, None, t_pad, n),
                             lambda b_, h_, a_, d_: (b_, jax.lax.div(h_, h // g), 0, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(bt, h),
        in_specs=[per_head(t_pad, p), per_head(t_pad, 1), per_head(1, t_pad), per_group,
                  per_group, per_head(p, n),
                  pl.BlockSpec((None, t_pad, 1), lambda b_, h_, a_, d_: (b_, 0, 0))],
        out_specs=[per_head(t_pad, p), per_head(t_pad, 1)],
    )
    y, log_decay = pl.pallas_call(
        _kernel,
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((bt, h, t_pad, p), x.dtype),
                   jax.ShapeDtypeStruct((bt, h, t_pad, 1), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        name="ssm_tree_scan",
        interpret=interpret,
    )(A.astype(jnp.float32), D.astype(jnp.float32), x_h, dt_col, dt_row, b_g, c_g,
      h0.astype(jnp.float32), par)
    return from_kernel_layout(y, log_decay, t)
