"""Tree attention as a Pallas GPU (Triton) kernel, split over the cache for decode.

Grid (batch row b, KV head k, split p). A program owns the stacked [n_rows, D] query block of a KV
head (its G query heads x T tree nodes, see blocks.py) and one contiguous run of the row's cache
blocks (`blocks.split_range`: the row's ceil(length / block_kv) blocks dealt over num_splits
programs). It walks its run in [block_kv, D] blocks with an online softmax and writes the
unnormalised partial state (max, denominator, numerator) to HBM; split 0 also folds the T new
nodes under the tree mask built in registers from `parents`. `blocks.combine_splits` (plain jnp,
fused by XLA with the layout transform back to [B, T, H, D]) merges the splits.

Why split: a decode step has few (b, k) pairs. At batch 1 with 8 KV heads a (b, k) grid runs 8
programs, each walking the whole cache alone, on a GPU with 132 SMs (H100/H200), so ~94% of the
machine idles and a step's latency is one SM streaming a whole head's cache. Splitting the cache
(flash-decoding) puts b * K * num_splits programs to work on the same bytes. `default_num_splits`
asks for enough splits to give every SM one program, but no split shorter than
max(block_kv, 16 * n_rows) slots: each split writes 2 * n_rows * (D + 2) float32 of partial state
that the combine reads back, and a split of 16 * n_rows bf16 slots reads ~8x that much cache, so
the partials cost at most ~1/8 of the cache traffic. When b * K already fills the SMs it is 1.

Query tile sized to the work: Triton `dot` needs at least 16 rows and power-of-two block dims, so
the stacked G * T rows are padded as a whole to a power of two >= 16 (T = 1, G = 4: 16 rows,
where padding each query head's T nodes to 16 would make 64). The new nodes' keys are padded to a
power of two >= 16 (they are the other side of a dot); D must be a power of two (64 and 128 are).

Where this differs from the TPU kernel, because Triton cannot do the same:
  * no scalar prefetch: each program loads its row's cache length itself and its block loop runs
    a dynamic trip count, so blocks past the length are neither read nor computed;
  * no pipeline-managed partial blocks: cache loads are masked (`plgpu.load(mask=...)`) to the
    row's length, so slots past it are never read and a cache length that is not a multiple of
    block_kv needs no padding.

Not measured. This machine has no GPU: the kernel is checked against the reference in interpret
mode and for lowering to Triton IR, nothing more. NUM_SMS, the minimum split length, block_kv = 64,
num_warps = 4 and num_stages = 2 are reasoned, not timed, and nothing says that one program per SM
is the best occupancy (a memory-bound loop may want 2-4 resident programs per SM). To settle them
on a GPU: time `bench/decode_kernels.py` (this kernel against backend='xla' over num_splits 1, 2,
4, ..., auto) at batch 1 and 16, T = 1 and a 16-node tree, caches of 4k-32k slots, full and ragged;
`bench/tree_attention.py --kernels` for the existing table.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from . import blocks

DEFAULT_BLOCK_KV = 64
NUM_SMS = 132  # streaming multiprocessors of an H100 / H200 SXM: the programs one wave runs
MIN_DOT_ROWS = 16  # Triton's `dot` needs M, N, K >= 16


def tile_rows(g: int, t: int) -> tuple[int, int]:
    """(query rows n_rows, new-node keys t_keys) of the kernel's tiles for G query heads per KV
    head and T tree nodes: the stacked G * T rows and the T keys, each padded to a power of two
    >= 16."""
    return (max(MIN_DOT_ROWS, pl.next_power_of_2(g * t)),
            max(MIN_DOT_ROWS, pl.next_power_of_2(t)))


def default_num_splits(b: int, kv: int, s: int, n_rows: int,
                       block_kv: int = DEFAULT_BLOCK_KV) -> int:
    """Cache splits per (row, KV head): enough programs for one per SM, no split shorter than
    max(block_kv, 16 * n_rows) cache slots, 1 when b * kv programs already fill the SMs."""
    if b * kv >= NUM_SMS:
        return 1
    min_split = max(block_kv, 16 * n_rows)
    return max(1, min(pl.cdiv(NUM_SMS, b * kv), s // min_split))


def _kernel(lens_ref, q_ref, kc_ref, vc_ref, kn_ref, vn_ref, par_ref, acc_ref, m_ref, l_ref, *,
            scale, block_kv, num_splits, t):
    split = pl.program_id(2)
    length = lens_ref[0]
    q = q_ref[...]
    n_rows, d = q.shape

    def fold(carry, keys, values, mask):
        s = jnp.where(mask, blocks.scores(q, keys, scale), -jnp.inf)
        return blocks.online_softmax_step(*carry, s, values)

    def cache_block(j, carry):
        start = pl.multiple_of(j * block_kv, block_kv)
        pos = start + jax.lax.broadcasted_iota(jnp.int32, (block_kv, d), 0)
        keys = plgpu.load(kc_ref.at[pl.ds(start, block_kv), :], mask=pos < length, other=0)
        values = plgpu.load(vc_ref.at[pl.ds(start, block_kv), :], mask=pos < length, other=0)
        key_pos = start + jax.lax.broadcasted_iota(jnp.int32, (n_rows, block_kv), 1)
        return fold(carry, keys, values, key_pos < length)

    def new_nodes(carry):
        return fold(carry, kn_ref[...], vn_ref[...], blocks.tree_mask(par_ref[...], n_rows, t))

    carry = (jnp.full((n_rows, 1), -jnp.inf, jnp.float32), jnp.zeros((n_rows, 1), jnp.float32),
             jnp.zeros((n_rows, d), jnp.float32))
    first, end = blocks.split_range(length, split, num_splits, block_kv)
    carry = jax.lax.fori_loop(first, end, cache_block, carry)  # no trips for an empty split
    m, l, acc = jax.lax.cond(split == 0, new_nodes, lambda c: c, carry)
    acc_ref[...], m_ref[...], l_ref[...] = acc, m, l


def unsupported(q, k_cache) -> str | None:
    """Why this kernel cannot take these shapes, or None when it can."""
    d = q.shape[-1]
    if d < 16 or d & (d - 1):
        return f"pallas_gpu tree_attention needs a power-of-two head dim >= 16, got {d}"
    return None


def tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents, *, scale=None,
                   block_kv: int = DEFAULT_BLOCK_KV, num_splits: int | None = None,
                   interpret: bool = False, num_warps: int = 4):
    """Same contract as `zoo_kernels.tree_attention.reference.tree_attention`.

    block_kv: cache positions per loop step (a power of two >= 16). num_splits: programs each
      (row, KV head)'s cache is split over, >= 1; None picks `default_num_splits`. interpret:
      True to run on CPU.
    """
    b, t, h, d = q.shape
    kv, s = k_cache.shape[1], k_cache.shape[2]
    if (problem := unsupported(q, k_cache)) is not None:
        raise ValueError(problem)
    if block_kv < 16 or block_kv & (block_kv - 1):
        raise ValueError(f"pallas_gpu tree_attention: block_kv={block_kv} must be a power of two >= 16")
    n_rows, t_keys = tile_rows(h // kv, t)
    if num_splits is None:
        num_splits = default_num_splits(b, kv, s, n_rows, block_kv)
    num_splits = blocks.check_num_splits(num_splits, "pallas_gpu")
    scale = d ** -0.5 if scale is None else scale
    q_rows, kn, vn, par = blocks.to_kernel_layout(q, k_new, v_new, parents, n_rows, t_keys)

    per_head = lambda rows: pl.BlockSpec((None, None, rows, d), lambda b_, k_, p: (b_, k_, 0, 0))  # noqa: E731
    cache_spec = pl.BlockSpec((None, None, s, d), lambda b_, k_, p: (b_, k_, 0, 0))
    partial_spec = lambda cols: pl.BlockSpec((None, None, None, n_rows, cols),  # noqa: E731
                                             lambda b_, k_, p: (b_, k_, p, 0, 0))
    acc, m, l = pl.pallas_call(
        functools.partial(_kernel, scale=scale, block_kv=block_kv, num_splits=num_splits, t=t),
        grid=(b, kv, num_splits),
        in_specs=[pl.BlockSpec((None, 1), lambda b_, k_, p: (b_, 0)), per_head(n_rows), cache_spec,
                  cache_spec, per_head(t_keys), per_head(t_keys),
                  pl.BlockSpec((None, t_keys, 1), lambda b_, k_, p: (b_, 0, 0))],
        out_specs=[partial_spec(d), partial_spec(1), partial_spec(1)],
        out_shape=blocks.partials_shape(b, kv, num_splits, n_rows, d),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=2),
        interpret=interpret,
        name="tree_attention_split",
    )(cache_len.astype(jnp.int32)[:, None], q_rows, k_cache, v_cache, kn, vn, par)
    out = blocks.combine_splits(acc, m, l).astype(q.dtype)  # [B, K, n_rows, D]
    return blocks.from_kernel_layout(out, t, h)
