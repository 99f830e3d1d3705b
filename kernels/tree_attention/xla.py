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
    as flash-attention kernels do.
"""

import jax.numpy as jnp

from kernels.trees import visible_mask


def tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents, *, scale=None):
    """Same contract as `kernels.tree_attention.reference.tree_attention`."""
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
