"""Tree attention as a Mosaic (TPU) Pallas kernel.

Grid (batch row b, KV head k, cache block j). Each step folds one [block_kv, D] block of the
KV head's cache into an online softmax for all G query heads x T tree nodes of that KV head at
once (one [G * T_pad, D] query block, see blocks.py); the last step also folds the T new nodes
under the tree mask, which is built in VMEM from `parents`, and writes the output.

Per-row cache lengths are scalar-prefetched into SMEM, where the index maps read them: blocks past
a row's length map to the same block index as the last needed one, so the pipeline does not fetch
them again, and the kernel skips their compute. HBM traffic is therefore one read of the *used*
part of the cache (rounded up to a block), plus the small per-step tensors.

Tiling: cache blocks are [block_kv, D] with block_kv a multiple of 128 (lanes of the score
matrix), query rows a multiple of 8 (sublanes); D is a full array dimension, which Mosaic accepts
for any size. A cache whose length is not a multiple of block_kv ends in a partial block whose
tail Mosaic leaves unspecified; those slots are past every row's length and are masked, their
values zeroed so that no garbage NaN reaches the matmul. Inputs may be bfloat16; scores and the
softmax accumulate in float32.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.backends import VMEM_BUDGET, round_up
from kernels.tree_attention import blocks
from kernels.trees import stacked_visible_mask

DEFAULT_BLOCK_KV = 512


def vmem_bytes(t, h, kv, d, s, itemsize, block_kv=DEFAULT_BLOCK_KV) -> int:
    """Estimated VMEM of one grid step: double-buffered blocks, scratch and the largest
    temporaries, with the lane dimension padded to 128 as Mosaic lays arrays out."""
    t_pad = round_up(t, 8)
    rows = (h // kv) * t_pad
    block_kv = min(block_kv, round_up(max(s, 1), 128))
    lanes = lambda n: round_up(n, 128)  # noqa: E731
    blocks = itemsize * (2 * rows + 2 * block_kv + 2 * t_pad) * lanes(d) + 4 * t_pad * 128
    scratch = 4 * rows * (2 * 128 + lanes(d))
    temporaries = 4 * (2 * rows * lanes(block_kv) + 2 * t_pad * lanes(t_pad) + rows * lanes(t_pad))
    return 2 * blocks + scratch + temporaries


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


def _kernel(lens_ref, q_ref, kc_ref, vc_ref, kn_ref, vn_ref, par_ref, o_ref, m_ref, l_ref,
            acc_ref, *, scale, block_kv):
    b, j = pl.program_id(0), pl.program_id(2)
    length = lens_ref[b]
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

    @pl.when(j * block_kv < length)
    def _cache_block():
        start = j * block_kv
        key_pos = start + jax.lax.broadcasted_iota(jnp.int32, (n_rows, block_kv), 1)
        value_pos = start + jax.lax.broadcasted_iota(jnp.int32, vc_ref.shape, 0)
        values = jnp.where(value_pos < length, vc_ref[...], 0)
        fold(kc_ref[...], values, key_pos < length)

    @pl.when(j == pl.num_programs(2) - 1)
    def _tree_and_output():
        fold(kn_ref[...], vn_ref[...], stacked_visible_mask(par_ref[...], n_rows))
        o_ref[...] = (acc_ref[...] / l_ref[...]).astype(o_ref.dtype)


def tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents, *, scale=None,
                   block_kv: int = DEFAULT_BLOCK_KV, interpret=None):
    """Same contract as `kernels.tree_attention.reference.tree_attention`.

    block_kv: cache positions per grid step (a multiple of 128; capped at the cache length
      rounded up to 128). interpret: None to compile for TPU, or `pltpu.InterpretParams()` to
      simulate the kernel on CPU.
    """
    b, t, h, d = q.shape
    kv, s = k_cache.shape[1], k_cache.shape[2]
    if block_kv % 128:
        raise ValueError(f"pallas_tpu tree_attention: block_kv={block_kv} must be a multiple of 128")
    block_kv = min(block_kv, round_up(max(s, 1), 128))
    scale = d ** -0.5 if scale is None else scale
    t_pad = round_up(t, 8)
    n_rows = (h // kv) * t_pad
    q_rows, kn, vn, par = blocks.to_kernel_layout(q, k_new, v_new, parents, t_pad, n_rows)

    def cache_block(b_, k_, j, lens):
        last_needed = jnp.maximum(pl.cdiv(lens[b_], block_kv) - 1, 0)
        return b_, k_, jnp.minimum(j, last_needed), 0

    per_head = lambda rows: pl.BlockSpec((None, None, rows, d), lambda b_, k_, j, lens: (b_, k_, 0, 0))  # noqa: E731
    cache_spec = pl.BlockSpec((None, None, block_kv, d), cache_block)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(b, kv, pl.cdiv(s, block_kv)),
        in_specs=[per_head(n_rows), cache_spec, cache_spec, per_head(t_pad), per_head(t_pad),
                  pl.BlockSpec((None, t_pad, 1), lambda b_, k_, j, lens: (b_, 0, 0))],
        out_specs=per_head(n_rows),
        scratch_shapes=[pltpu.VMEM((n_rows, 1), jnp.float32), pltpu.VMEM((n_rows, 1), jnp.float32),
                        pltpu.VMEM((n_rows, d), jnp.float32)],
    )
    out = pl.pallas_call(
        functools.partial(_kernel, scale=scale, block_kv=block_kv),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(q_rows.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
    )(cache_len.astype(jnp.int32), q_rows, k_cache, v_cache, kn, vn, par)
    return blocks.from_kernel_layout(out, t, h, t_pad)
