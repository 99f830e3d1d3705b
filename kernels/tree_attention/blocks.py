"""What the two Pallas tree-attention kernels share: the layout they read and the online softmax.

Layout. Attention is computed per (row b, KV head k). The G = H / K query heads of that KV head
and the T tree nodes are stacked into one [G * T_pad, D] query block ("rows"), so one pass over
the KV head's cache serves all its query heads (grouped-query attention without repeating K/V).
Only the small per-step tensors (q, k_new, v_new, parents, out) are rearranged and padded; the
cache [B, K, S, D] is read in place.
"""

import jax
import jax.numpy as jnp


def to_kernel_layout(q, k_new, v_new, parents, t_pad: int, n_rows: int):
    """q [B, T, H, D] -> [B, K, n_rows, D]; k_new/v_new [B, T, K, D] -> [B, K, t_pad, D];
    parents [B, T] -> [B, t_pad, 1]. Padded nodes are roots (they see only themselves), padded
    rows beyond G * t_pad are zeros; both are dropped by `from_kernel_layout`."""
    b, t, h, d = q.shape
    kv = k_new.shape[2]
    pad_t = ((0, 0), (0, t_pad - t))
    q = q.reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
    q = jnp.pad(q, (*pad_t[:1], (0, 0), (0, 0), pad_t[1], (0, 0)))
    q = q.reshape(b, kv, (h // kv) * t_pad, d)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, n_rows - q.shape[2]), (0, 0)))
    new = [jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), pad_t[1], (0, 0)))
           for x in (k_new, v_new)]
    parents = jnp.pad(parents.astype(jnp.int32), pad_t, constant_values=-1)[..., None]
    return q, new[0], new[1], parents


def from_kernel_layout(out, t: int, h: int, t_pad: int):
    """[B, K, n_rows, D] -> [B, T, H, D], the inverse of `to_kernel_layout` for q."""
    b, kv, _, d = out.shape
    out = out[:, :, : (h // kv) * t_pad].reshape(b, kv, h // kv, t_pad, d)[:, :, :, :t]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


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
