"""The attention KV cache pytree and its commit (compaction of an accepted tree path)."""

import flax.struct
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
    """Preallocated keys/values of every attention layer and the committed length per row.

    k, v: [L, B, K, S, D] (head-major, the layout attention reads without a transpose);
    lengths: int32[B]. Slots at or beyond `lengths[b]` are garbage.
    """

    k: jnp.ndarray
    v: jnp.ndarray
    lengths: jnp.ndarray

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @classmethod
    def zeros(cls, n_layers, batch, max_len, n_kv_heads, head_dim, dtype):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))


@flax.struct.dataclass
class KVPending:
    """K/V of T extended-but-uncommitted tokens: [L, B, T, K, D]."""

    k: jnp.ndarray
    v: jnp.ndarray


def commit_kv(cache: KVCache, pending: KVPending, path: jnp.ndarray, n_accepted: jnp.ndarray):
    """Copy the K/V of the accepted nodes `path[b, :n_accepted[b]]` to slots lengths[b] + j.

    path: int32[B, M] node indices (entries past n_accepted are ignored); n_accepted: int32[B].
    Rows may accept different lengths. Writes that would fall past the cache end are dropped.
    """
    b, m = path.shape
    rows = jnp.arange(b)[:, None]
    k_acc = pending.k[:, rows, path]  # [L, B, M, K, D]
    v_acc = pending.v[:, rows, path]
    j = jnp.arange(m)[None, :]
    slots = jnp.where(j < n_accepted[:, None], cache.lengths[:, None] + j, cache.max_len)
    # Index [:, rows, :, slots] puts the (B, M) index dims first: values are [B, M, L, K, D].
    k = cache.k.at[:, rows, :, slots].set(k_acc.transpose(1, 2, 0, 3, 4).astype(cache.k.dtype),
                                          mode="drop")
    v = cache.v.at[:, rows, :, slots].set(v_acc.transpose(1, 2, 0, 3, 4).astype(cache.v.dtype),
                                          mode="drop")
    return KVCache(k, v, jnp.minimum(cache.lengths + n_accepted, cache.max_len).astype(jnp.int32))
