"""Tree attention, fast pure-XLA path (the CPU default).

Differences from the reference, each to save memory traffic:
  * the cache is head-major [B, K, S, D], the layout a batched matmul over (B, K) reads
    without a transpose;
  * the cache and the new nodes are scored separately and joined by one softmax over both parts,
    so the [B, K, S, D] cache is never concatenated (copied);
  * grouped-query heads are reshaped to [K, G] so K/V are never repeated per query head;
  * the cache mask is a [B, S] length test, the tree mask a [B, T, T] visibility mask: no dense
    [T, S + T] mask.
"""

import jax.numpy as jnp

from kernels.trees import visible_mask


def tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents, *, scale=None):
    """Same contract as `kernels.tree_attention.reference.tree_attention`."""
    b, t, h, d = q.shape
    kv_heads, s = k_cache.shape[1], k_cache.shape[2]
    scale = d ** -0.5 if scale is None else scale
    qg = q.reshape(b, t, kv_heads, h // kv_heads, d).astype(jnp.float32) * scale
    s_cache = jnp.einsum("btkgd,bksd->bkgts", qg, k_cache.astype(jnp.float32))
    s_tree = jnp.einsum("btkgd,bukd->bkgtu", qg, k_new.astype(jnp.float32))
    in_cache = (jnp.arange(s)[None, :] < cache_len[:, None])[:, None, None, None, :]
    s_cache = jnp.where(in_cache, s_cache, -jnp.inf)
    s_tree = jnp.where(visible_mask(parents)[:, None, None], s_tree, -jnp.inf)
    # Every node attends at least to itself, so the joint max is finite.
    m = jnp.maximum(s_cache.max(-1, keepdims=True), s_tree.max(-1, keepdims=True))
    p_cache, p_tree = jnp.exp(s_cache - m), jnp.exp(s_tree - m)
    denom = p_cache.sum(-1, keepdims=True) + p_tree.sum(-1, keepdims=True)
    out = (jnp.einsum("bkgts,bksd->btkgd", p_cache / denom, v_cache.astype(jnp.float32))
           + jnp.einsum("bkgtu,bukd->btkgd", p_tree / denom, v_new.astype(jnp.float32)))
    return out.reshape(b, t, h, d).astype(q.dtype)
