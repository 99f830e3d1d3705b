"""Tree attention as a Mosaic (TPU) Pallas kernel.

Grid (batch row b, KV head k, split p, cache block j). Each step folds one [block_kv, D] block of
the KV head's cache into an online softmax for all G query heads x T tree nodes of that KV head at
once (one stacked [n_rows, D] query block, see blocks.py). The running state (max, denominator,
numerator) lives in the float32 output blocks, which stay in VMEM along j and are written back
once per (b, k, p) unnormalised; split 0's last step also folds the T new nodes under the tree
mask, which is built in VMEM from `parents`. `blocks.combine_splits` (plain jnp, fused by XLA
with the layout transform back to [B, T, H, D]) merges the splits.

Why the split axis. Steps along j depend on each other (they update one running state), so j is
"arbitrary": sequential on one TensorCore. Only the "parallel" axes can be divided over the two
TensorCores that a megacore chip (v4, v5p) puts behind one JAX device, and at decode those are
few: at batch 1 with one KV head per device (MQA, or 8 KV heads under 8-way tensor parallelism)
b * K = 1 and one core does the whole step while the other idles. Splitting each row's cache
blocks into contiguous halves (`blocks.split_range`) on a "parallel" axis gives the second core
the other half; `default_num_splits` asks for 2 splits whenever b * K is odd, so that some
parallel axis always has an even extent, and 1 otherwise (more than 2 buys nothing: the grid runs
sequentially on each core). On a single-core chip (v5e, v6e) a split costs one more write of the
small partials, up to one idle grid step and, for a split with no blocks, one block fetch.

Per-row cache lengths are scalar-prefetched into SMEM, where the index maps read them: steps past
the last block of a split (past the row's length) map to the same block index as that split's last
needed one, so the pipeline does not fetch them again, and the kernel skips their compute. HBM
traffic is therefore one read of the *used* part of the cache (rounded up to a block, plus at
most one block per empty split), plus the small per-step tensors.

Tiling: cache blocks are [block_kv, D] with block_kv a multiple of 128 (lanes of the score
matrix); the stacked G * T query rows are padded as a whole to a multiple of 8 (sublanes), so a
decode step (T = 1) with G = 4 is 8 rows, not 4 nodes x 8; the new nodes' keys are padded to a
multiple of 8. D is a full array dimension, which Mosaic accepts for any size. A cache whose
length is not a multiple of block_kv ends in a partial block whose tail Mosaic leaves
unspecified; those slots are past every row's length and are masked, their values zeroed so that
no garbage NaN reaches the matmul. Inputs may be bfloat16; scores and the softmax accumulate in
float32.

Not measured. This machine has no TPU: the kernel is checked against the reference in interpret
mode and for lowering to Mosaic, nothing more. Which parallel grid axis Mosaic divides over a
megacore's cores is the compiler's choice, not stated in the JAX sources; the split helps only if
it picks an even one (the split axis at b * K odd). The split rule, block_kv = 512 and the cost of
the extra partials are untimed. To settle them on a v4 / v5p and a v5e: time
`bench/decode_kernels.py` (num_splits 1 vs 2 vs auto against backend='xla') at batch 1 and 16,
1 and 8 KV heads, caches of 4k-32k slots.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ..backends import VMEM_BUDGET, round_up
from . import blocks

DEFAULT_BLOCK_KV = 512
CORES_PER_DEVICE = 2  # TensorCores behind one JAX device on a megacore chip (v4, v5p)


def tile_rows(g: int, t: int) -> tuple[int, int]:
    """(query rows n_rows, new-node keys t_keys) of the kernel's tiles for G query heads per KV
    head and T tree nodes: the stacked G * T rows and the T keys, each padded to 8 sublanes."""
    return round_up(g * t, 8), round_up(t, 8)


def default_num_splits(b: int, kv: int, s: int, block_kv: int = DEFAULT_BLOCK_KV) -> int:
    """2 when b * kv is odd and the cache spans at least two blocks, else 1: with an even count
    the (row, KV head) programs already divide over a megacore's two TensorCores."""
    block_kv = min(block_kv, round_up(max(s, 1), 128))
    return CORES_PER_DEVICE if (b * kv) % 2 and pl.cdiv(s, block_kv) >= 2 else 1


def vmem_bytes(t, h, kv, d, s, itemsize, block_kv=DEFAULT_BLOCK_KV) -> int:
    """Estimated VMEM of one grid step: double-buffered input and output blocks and the largest
    temporaries, with the lane dimension padded to 128 as Mosaic lays arrays out."""
    rows, t_keys = tile_rows(h // kv, t)
    block_kv = min(block_kv, round_up(max(s, 1), 128))
    lanes = lambda n: round_up(n, 128)  # noqa: E731
    inputs = itemsize * (rows + 2 * block_kv + 2 * t_keys) * lanes(d) + 4 * t_keys * 128
    outputs = 4 * rows * (lanes(d) + 2 * 128)  # float32 partials: acc, m, l
    temporaries = 4 * (2 * rows * lanes(block_kv) + 2 * t_keys * lanes(t_keys)
                       + rows * lanes(t_keys))
    return 2 * (inputs + outputs) + temporaries


def unsupported(q, k_cache) -> str | None:
    """Why this kernel cannot take these shapes, or None when it can."""
    b, t, h, d = q.shape
    kv, s = k_cache.shape[1], k_cache.shape[2]
    need = vmem_bytes(t, h, kv, d, s, q.dtype.itemsize)
    if need > VMEM_BUDGET:
        return (f"pallas_tpu tree_attention: {t} tree nodes x {h // kv} query heads per KV head "
                f"need ~{need / 2**20:.0f} MiB of VMEM, over the {VMEM_BUDGET / 2**20:.0f} MiB "
                f"budget; verify fewer nodes at once or use backend='xla'")
    return None


def _kernel(lens_ref, q_ref, kc_ref, vc_ref, kn_ref, vn_ref, par_ref, acc_ref, m_ref, l_ref, *,
            scale, block_kv, num_splits, t):
    # The partials' output blocks stay in VMEM across the cache-block axis j: they are the
    # online softmax's running state, written back to HBM once per (b, k, split).
    b, split, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    length = lens_ref[b]
    first, end = blocks.split_range(length, split, num_splits, block_kv)
    n_rows = q_ref.shape[0]

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def fold(keys, values, mask):
        s = jnp.where(mask, blocks.scores(q_ref[...], keys, scale), -jnp.inf)
        m_ref[...], l_ref[...], acc_ref[...] = blocks.online_softmax_step(
            m_ref[...], l_ref[...], acc_ref[...], s, values)

    @pl.when(first + j < end)
    def _cache_block():
        start = (first + j) * block_kv
        key_pos = start + jax.lax.broadcasted_iota(jnp.int32, (n_rows, block_kv), 1)
        value_pos = start + jax.lax.broadcasted_iota(jnp.int32, vc_ref.shape, 0)
        values = jnp.where(value_pos < length, vc_ref[...], 0)
        fold(kc_ref[...], values, key_pos < length)

    @pl.when((split == 0) & (j == pl.num_programs(3) - 1))
    def _new_nodes():
        fold(kn_ref[...], vn_ref[...], blocks.tree_mask(par_ref[...], n_rows, t))


def tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents, *, scale=None,
                   block_kv: int = DEFAULT_BLOCK_KV, num_splits: int | None = None,
                   interpret=None):
    """Same contract as `zoo_kernels.tree_attention.reference.tree_attention`.

    block_kv: cache positions per grid step (a multiple of 128; capped at the cache length
      rounded up to 128). num_splits: parallel parts each (row, KV head)'s cache is split into,
      >= 1; None picks `default_num_splits`. interpret: None to compile for TPU, or
      `pltpu.InterpretParams()` to simulate the kernel on CPU.
    """
    b, t, h, d = q.shape
    kv, s = k_cache.shape[1], k_cache.shape[2]
    if block_kv % 128:
        raise ValueError(f"pallas_tpu tree_attention: block_kv={block_kv} must be a multiple of 128")
    block_kv = min(block_kv, round_up(max(s, 1), 128))
    if num_splits is None:
        num_splits = default_num_splits(b, kv, s, block_kv)
    num_splits = blocks.check_num_splits(num_splits, "pallas_tpu")
    scale = d ** -0.5 if scale is None else scale
    n_rows, t_keys = tile_rows(h // kv, t)
    q_rows, kn, vn, par = blocks.to_kernel_layout(q, k_new, v_new, parents, n_rows, t_keys)

    def cache_block(b_, k_, p, j, lens):
        first, end = blocks.split_range(lens[b_], p, num_splits, block_kv)
        # Steps past the split's last block map to it again, so the pipeline fetches nothing new;
        # an empty split maps to a block next to it (or 0) and computes nothing.
        return b_, k_, jnp.maximum(jnp.minimum(first + j, end - 1), 0), 0

    per_head = lambda rows: pl.BlockSpec((None, None, rows, d), lambda b_, k_, p, j, lens: (b_, k_, 0, 0))  # noqa: E731
    cache_spec = pl.BlockSpec((None, None, block_kv, d), cache_block)
    partial_spec = lambda cols: pl.BlockSpec((None, None, None, n_rows, cols),  # noqa: E731
                                             lambda b_, k_, p, j, lens: (b_, k_, p, 0, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(b, kv, num_splits, pl.cdiv(pl.cdiv(s, block_kv), num_splits)),
        in_specs=[per_head(n_rows), cache_spec, cache_spec, per_head(t_keys), per_head(t_keys),
                  pl.BlockSpec((None, t_keys, 1), lambda b_, k_, p, j, lens: (b_, 0, 0))],
        out_specs=[partial_spec(d), partial_spec(1), partial_spec(1)],
    )
    acc, m, l = pl.pallas_call(
        functools.partial(_kernel, scale=scale, block_kv=block_kv, num_splits=num_splits, t=t),
        grid_spec=grid_spec,
        out_shape=blocks.partials_shape(b, kv, num_splits, n_rows, d),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="tree_attention_split",
    )(cache_len.astype(jnp.int32), q_rows, k_cache, v_cache, kn, vn, par)
    out = blocks.combine_splits(acc, m, l).astype(q.dtype)  # [B, K, n_rows, D]
    return blocks.from_kernel_layout(out, t, h)
