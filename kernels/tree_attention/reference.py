"""Tree attention, the readable truth: one dense mask over [committed cache ++ new nodes]."""

import jax
import jax.numpy as jnp

from ..trees import visible_mask


def tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents, *, scale=None):
    """Attention of T tree-node queries over the committed cache and the nodes they see: their
    ancestors, and the whole of their own block and of their ancestors' blocks.

    Args:
      q: [B, T, H, D] queries of the new nodes.
      k_cache, v_cache: [B, K, S, D] committed keys/values (head-major, so each head's keys are
        contiguous); only the first `cache_len[b]` positions count.
      cache_len: int32[B].
      k_new, v_new: [B, T, K, D] keys/values of the new nodes.
      parents: int32[B, T] tree structure, blocks marked by SAME_BLOCK (see kernels/trees.py).
      scale: softmax scale, default 1/sqrt(D).
    Returns:
      [B, T, H, D] in q's dtype.
    """
    b, t, h, d = q.shape
    kv_heads, s = k_cache.shape[1], k_cache.shape[2]
    scale = d ** -0.5 if scale is None else scale
    keys = jnp.concatenate([k_cache.transpose(0, 2, 1, 3), k_new], axis=1)  # [B, S+T, K, D]
    values = jnp.concatenate([v_cache.transpose(0, 2, 1, 3), v_new], axis=1)
    keys = jnp.repeat(keys, h // kv_heads, axis=2)
    values = jnp.repeat(values, h // kv_heads, axis=2)
    in_cache = jnp.arange(s)[None, None, :] < cache_len[:, None, None]  # [B, 1, S]
    mask = jnp.concatenate(
        [jnp.broadcast_to(in_cache, (b, t, s)), visible_mask(parents)], axis=-1)  # [B, T, S+T]
    scores = jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32), keys.astype(jnp.float32)) * scale
    scores = jnp.where(mask[:, None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhts,bshd->bthd", probs, values.astype(jnp.float32))
    return out.astype(q.dtype)
