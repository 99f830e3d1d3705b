"""Tree attention, fast pure-XLA path (the CPU default).

Differences from the reference, each to save memory traffic:
  * the cache is head-major [B, K, S, D], the layout a batched matmul over (B, K) reads
    without a transpose;
  * the cache and the new nodes are scored separately and joined by one softmax over both parts,
    so the [B, K, S, D] cache is never concatenated (copied);
  * grouped-query heads are stacked as [K, G * T] query rows, so K/V are never repeated per
    query head and each (row, KV head) is one matmul;
  * the cache mask is a [B, S] length test, the tree mask a [B, T, T] visibility mask: no dense
    [T, S + T] mask;
  * the cache is read in its own dtype (a bfloat16 cache is never copied to float32): scores
    accumulate in float32 (`preferred_element_type`), and the probabilities meet V in V's dtype,
    as flash-attention kernels do;
  * only a prefix of the preallocated cache is read: the smallest of S, S/2, S/4, ... (down to
    `MIN_READ` slots) that holds the longest row (`lax.switch` over static prefix lengths, so
    each branch is a plain matmul). A 512-slot cache holding 70 tokens is read as 128 slots.
"""

import functools

import jax
import jax.numpy as jnp

from ..trees import visible_mask

MIN_READ = 128  # the shortest prefix worth its own branch


def read_lengths(s: int) -> list[int]:
    """The static cache prefixes a call may read, shortest first: ..., S/4, S/2, S."""
    sizes = [s]
    while sizes[0] % 2 == 0 and sizes[0] // 2 >= MIN_READ:
        sizes.insert(0, sizes[0] // 2)
    return sizes


def tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents, *, scale=None):
    """Same contract as `zoo_kernels.tree_attention.reference.tree_attention`."""
    sizes = read_lengths(k_cache.shape[2])
    args = (q, k_cache, v_cache, cache_len, k_new, v_new, parents)
    if len(sizes) == 1:
        return _attend(*args, scale=scale)
    # Every row's valid slots lie below max(cache_len): read the shortest prefix holding them.
    branch = jnp.searchsorted(jnp.asarray(sizes, jnp.int32), jnp.max(cache_len))
    return jax.lax.switch(branch, [functools.partial(_attend, scale=scale, read=n)
                                   for n in sizes], *args)


def _attend(q, k_cache, v_cache, cache_len, k_new, v_new, parents, *, scale, read=None):
    """Tree attention over the first `read` cache slots (default all)."""
    if read is not None:
        k_cache, v_cache = k_cache[:, :, :read], v_cache[:, :, :read]
    b, t, h, d = q.shape
    kv_heads, s = k_cache.shape[1], k_cache.shape[2]
    g = h // kv_heads
    scale = d ** -0.5 if scale is None else scale
    # Queries as [B, K, G*T, D] rows: each (row, KV head) is one plain matmul against its cache,
    # the layout XLA:CPU runs fastest (the same einsum over [B, T, K, G, D] was 2x slower at
    # T = 64, batch 16).
    rows = q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * t, d)
    f32 = jnp.float32
    read = jnp.promote_types(rows.dtype, k_cache.dtype)  # the cache's own dtype, unless q is wider
    s_cache = jnp.einsum("bkrd,bksd->bkrs", rows.astype(read), k_cache.astype(read),
                         preferred_element_type=f32) * scale
    s_tree = jnp.einsum("bkrd,bukd->bkru", rows.astype(f32), k_new.astype(f32)) * scale
    in_cache = (jnp.arange(s)[None, :] < cache_len[:, None])[:, None, None, :]
    s_cache = jnp.where(in_cache, s_cache, -jnp.inf)
    visible = jnp.tile(visible_mask(parents), (1, g, 1))[:, None]  # row r is node r % T
    s_tree = jnp.where(visible, s_tree, -jnp.inf)
    # Every node attends at least to itself, so the joint max is finite.
    m = jnp.maximum(s_cache.max(-1, keepdims=True), s_tree.max(-1, keepdims=True))
    p_cache, p_tree = jnp.exp(s_cache - m), jnp.exp(s_tree - m)
    denom = p_cache.sum(-1, keepdims=True) + p_tree.sum(-1, keepdims=True)
    out = (jnp.einsum("bkrs,bksd->bkrd", p_cache.astype(read), v_cache.astype(read),
                      preferred_element_type=f32)
           + jnp.einsum("bkru,bukd->bkrd", p_tree, v_new.astype(f32))) / denom
    out = out.reshape(b, kv_heads, g, t, d).transpose(0, 3, 1, 2, 4)
    return out.reshape(b, t, h, d).astype(q.dtype)
