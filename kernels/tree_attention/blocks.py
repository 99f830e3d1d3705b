"""What the two Pallas tree-attention kernels share: the layout they read, the online softmax, and
the split of a row's cache over programs with the merge of their partial softmaxes.

Layout. Attention is computed per (row b, KV head k). The G = H / K query heads of that KV head
and the T tree nodes are stacked into one [G * T, D] query block ("rows", row g * T + i is query
head g of node i), padded as a whole to the tile the kernel needs (n_rows), so one pass over the
KV head's cache serves all its query heads (grouped-query attention without repeating K/V). A
decode step (T = 1) with G = 4 is 4 real rows, not 4 x a padded node tile. The new nodes' keys
and values are padded to t_keys nodes (padded nodes are roots that nobody sees). Only the small
per-step tensors (q, k_new, v_new, parents, out) are rearranged and padded; the cache
[B, K, S, D] is read in place.

Splits (flash-decoding). A row's cache blocks can be dealt to P programs ("splits"), each running
the online softmax over its contiguous run and writing the unnormalised partial state (running
max m, denominator l, numerator acc); `combine_splits` merges them with the log-sum-exp rule.
Split 0 also folds the T new nodes, so every row's merged max is finite: a split with no cache
blocks (m = -inf, l = 0, acc = 0) gets weight exp(-inf - finite) = 0, never a NaN.
"""

import operator

import jax
import jax.numpy as jnp

from ..trees import stacked_visible_mask


def to_kernel_layout(q, k_new, v_new, parents, n_rows: int, t_keys: int):
    """q [B, T, H, D] -> [B, K, n_rows, D] (G * T stacked rows, then zero rows);
    k_new/v_new [B, T, K, D] -> [B, K, t_keys, D]; parents [B, T] -> [B, t_keys, 1]. Padded
    nodes are roots (they see only themselves, and no real row sees them); padded rows are
    dropped by `from_kernel_layout`."""
    b, t, h, d = q.shape
    kv = k_new.shape[2]
    q = q.reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
    q = q.reshape(b, kv, (h // kv) * t, d)  # row g * T + i: head g, node i
    q = jnp.pad(q, ((0, 0), (0, 0), (0, n_rows - q.shape[2]), (0, 0)))
    pad_t = ((0, 0), (0, t_keys - t))
    new = [jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), pad_t[1], (0, 0)))
           for x in (k_new, v_new)]
    parents = jnp.pad(parents.astype(jnp.int32), pad_t, constant_values=-1)[..., None]
    return q, new[0], new[1], parents


def from_kernel_layout(out, t: int, h: int):
    """[B, K, n_rows, D] -> [B, T, H, D], the inverse of `to_kernel_layout` for q."""
    b, kv, _, d = out.shape
    out = out[:, :, : (h // kv) * t].reshape(b, kv, h // kv, t, d)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def tree_mask(parent_col, n_rows: int, t: int):
    """bool[n_rows, t_keys]: row r (query node r % t) sees key node j, built in the kernel.

    parent_col: int32[t_keys, 1], the T real nodes then padded roots. With one node tile per
    query head (t == t_keys) this is `stacked_visible_mask`; otherwise rows map to nodes by a
    one-hot matmul over the [t_keys, t_keys] mask (Triton lowers neither a gather nor a tile).
    Padding rows (r >= G * t) repeat real nodes, so every row sees at least one key.
    """
    t_keys = parent_col.shape[0]
    if t == t_keys:
        return stacked_visible_mask(parent_col, n_rows)
    visible = jnp.where(stacked_visible_mask(parent_col, t_keys), 1.0, 0.0)  # row i: node i
    node_of_row = jax.lax.broadcasted_iota(jnp.int32, (n_rows, t_keys), 0) % t
    one_hot = jnp.where(node_of_row == jax.lax.broadcasted_iota(jnp.int32, (n_rows, t_keys), 1),
                        1.0, 0.0)
    return jnp.matmul(one_hot, visible) > 0


def scores(q, keys, scale):
    """q [R, D] . keys [N, D]^T in float32 (inputs may be bfloat16)."""
    s = jax.lax.dot_general(q, keys, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return s * scale


def online_softmax_step(m, l, acc, s, values):
    """Fold one block of masked scores s [R, N] (-inf where masked) and values [N, D] into the
    running max m [R, 1], denominator l [R, 1] and numerator acc [R, D].

    Callers only fold blocks where every row has at least one unmasked score (a node always sees
    itself; cache blocks past a row's length are skipped), so m stays finite after the first fold
    and exp(-inf - m) = 0 never meets -inf - -inf.
    """
    m_new = jnp.maximum(m, s.max(axis=-1, keepdims=True))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new)
    l_new = alpha * l + p.sum(axis=-1, keepdims=True)
    pv = jax.lax.dot_general(p.astype(values.dtype), values, (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
    return m_new, l_new, alpha * acc + pv


def check_num_splits(num_splits, kernel: str) -> int:
    """`num_splits` as an int >= 1, or a ValueError naming it."""
    try:
        n = operator.index(num_splits)
    except TypeError:
        n = None
    if n is None or isinstance(num_splits, bool) or n < 1:
        raise ValueError(f"{kernel} tree_attention: num_splits={num_splits!r} must be an int >= 1")
    return n


def split_range(length, split, num_splits: int, block_kv: int):
    """Cache blocks [first, end) of `split` (of `num_splits`) for a row of `length` slots.

    The row's ceil(length / block_kv) blocks are dealt in contiguous runs whose sizes differ by at
    most one; a split gets none (first == end) only when the row has fewer blocks than splits.
    Scalars in, scalars out: used by kernels and by TPU index maps alike.
    """
    # lax.div (truncating) rather than //: all operands are non-negative, and jnp's floor
    # division lowers through `sign`, which Mosaic lowers only when it knows the TPU generation.
    n_blocks = jax.lax.div(length + block_kv - 1, block_kv)
    return (jax.lax.div(split * n_blocks, num_splits),
            jax.lax.div((split + 1) * n_blocks, num_splits))


def partials_shape(b: int, kv: int, num_splits: int, n_rows: int, d: int):
    """Out shapes of the kernels' float32 partial state: acc [B, K, P, n_rows, D], m and l
    [B, K, P, n_rows, 1]."""
    return [jax.ShapeDtypeStruct((b, kv, num_splits, n_rows, cols), jnp.float32)
            for cols in (d, 1, 1)]


def combine_splits(acc, m, l):
    """Merge partial softmaxes over the split axis: acc [..., P, R, D], m and l [..., P, R, 1]
    (float32, unnormalised) -> the normalised output [..., R, D] in float32.

    With M the largest max, out = sum_p exp(m_p - M) acc_p / sum_p exp(m_p - M) l_p. M is finite
    because split 0 holds the new nodes, so an empty split (m_p = -inf) weighs exactly 0.
    """
    weight = jnp.exp(m - m.max(axis=-3, keepdims=True))
    return (weight * acc).sum(axis=-3) / (weight * l).sum(axis=-3)
