"""Tree attention as a Pallas GPU (Triton) kernel.

Grid (batch row b, KV head k): one program owns the [G * T_pad, D] query block of a KV head (all
its query heads x tree nodes, see blocks.py) and walks that head's cache in [block_kv, D] blocks
with an online softmax, then folds the T new nodes under the tree mask built in registers from
`parents`, and writes the output.

Where this differs from the TPU kernel, because Triton cannot do the same:
  * no scalar prefetch: each program loads its row's cache length itself and the block loop runs
    `cdiv(length, block_kv)` times (a dynamic trip count), so blocks past the length are neither
    read nor computed;
  * no pipeline-managed partial blocks: cache loads are masked (`plgpu.load(mask=...)`) to the
    row's length, so slots past it are never read and a cache length that is not a multiple of
    block_kv needs no padding;
  * Triton's block dimensions must be powers of two and `dot` needs at least 16 rows: T is padded
    to a power of two >= 16, the stacked query rows to a power of two, and D must be a power of
    two (64 and 128 are).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.tree_attention import blocks
from kernels.trees import stacked_visible_mask

DEFAULT_BLOCK_KV = 64


def _kernel(lens_ref, q_ref, kc_ref, vc_ref, kn_ref, vn_ref, par_ref, o_ref, *, scale, block_kv):
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

    carry = (jnp.full((n_rows, 1), -jnp.inf, jnp.float32), jnp.zeros((n_rows, 1), jnp.float32),
             jnp.zeros((n_rows, d), jnp.float32))
    carry = jax.lax.fori_loop(0, pl.cdiv(length, block_kv), cache_block, carry)
    m, l, acc = fold(carry, kn_ref[...], vn_ref[...], stacked_visible_mask(par_ref[...], n_rows))
    o_ref[...] = (acc / l).astype(o_ref.dtype)


def unsupported(q, k_cache) -> str | None:
    """Why this kernel cannot take these shapes, or None when it can."""
    d = q.shape[-1]
    if d < 16 or d & (d - 1):
        return f"pallas_gpu tree_attention needs a power-of-two head dim >= 16, got {d}"
    return None


def tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents, *, scale=None,
                   block_kv: int = DEFAULT_BLOCK_KV, interpret: bool = False, num_warps: int = 4):
    """Same contract as `kernels.tree_attention.reference.tree_attention`.

    block_kv: cache positions per loop step (a power of two). interpret: True to run on CPU.
    """
    b, t, h, d = q.shape
    kv = k_cache.shape[1]
    if (problem := unsupported(q, k_cache)) is not None:
        raise ValueError(problem)
    if block_kv < 16 or block_kv & (block_kv - 1):
        raise ValueError(f"pallas_gpu tree_attention: block_kv={block_kv} must be a power of two >= 16")
    scale = d ** -0.5 if scale is None else scale
    t_pad = max(16, pl.next_power_of_2(t))
    n_rows = pl.next_power_of_2((h // kv) * t_pad)
    q_rows, kn, vn, par = blocks.to_kernel_layout(q, k_new, v_new, parents, t_pad, n_rows)
    s = k_cache.shape[2]

    per_head = lambda rows: pl.BlockSpec((None, None, rows, d), lambda b_, k_: (b_, k_, 0, 0))  # noqa: E731
    cache_spec = pl.BlockSpec((None, None, s, d), lambda b_, k_: (b_, k_, 0, 0))
    out = pl.pallas_call(
        functools.partial(_kernel, scale=scale, block_kv=block_kv),
        grid=(b, kv),
        in_specs=[pl.BlockSpec((None, 1), lambda b_, k_: (b_, 0)), per_head(n_rows), cache_spec,
                  cache_spec, per_head(t_pad), per_head(t_pad),
                  pl.BlockSpec((None, t_pad, 1), lambda b_, k_: (b_, 0, 0))],
        out_specs=per_head(n_rows),
        out_shape=jax.ShapeDtypeStruct(q_rows.shape, q.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=2),
        interpret=interpret,
    )(cache_len.astype(jnp.int32)[:, None], q_rows, k_cache, v_cache, kn, vn, par)
    return blocks.from_kernel_layout(out, t, h, t_pad)
