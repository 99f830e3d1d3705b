"""The attention KV cache pytree, its commit (compaction of an accepted tree path) and its growth
(more slots, the committed ones kept)."""

import flax.struct
import jax
import jax.numpy as jnp

from zoo.platform import on_cpu


@flax.struct.dataclass
class KVCache:
    """Preallocated keys/values of every attention layer and the committed length per row.

    k, v: one [B, K, S, D] array per layer (head-major, the layout attention reads without a
    transpose); lengths: int32[B]; max_len: S. Slots at or beyond `lengths[b]` are garbage.

    Why a tuple and not one stacked [L, B, K, S, D] array: an unrolled layer reading `k[i]` of a
    stack gets a copy of that layer's cache (XLA:CPU materialises the slice before the matmul),
    which cost 2.5x the attention itself per decode step at batch 16.
    """

    k: tuple
    v: tuple
    lengths: jnp.ndarray
    max_len: int = flax.struct.field(pytree_node=False)

    @property
    def n_layers(self) -> int:
        return len(self.k)

    @classmethod
    def zeros(cls, n_layers, batch, max_len, n_kv_heads, head_dim, dtype):
        shape = (batch, n_kv_heads, max_len, head_dim)
        return cls(tuple(jnp.zeros(shape, dtype) for _ in range(n_layers)),
                   tuple(jnp.zeros(shape, dtype) for _ in range(n_layers)),
                   jnp.zeros((batch,), jnp.int32), max_len)

    def write_prefix(self, k, v, lengths) -> "KVCache":
        """The cache with slots [0, T) of every layer set from a prefill's k, v (one
        [B, T, K, D] per layer), and `lengths` committed."""
        t = k[0].shape[1] if k else 0
        ks = tuple(c.at[:, :, :t].set(k[i].transpose(0, 2, 1, 3).astype(c.dtype))
                   for i, c in enumerate(self.k))
        vs = tuple(c.at[:, :, :t].set(v[i].transpose(0, 2, 1, 3).astype(c.dtype))
                   for i, c in enumerate(self.v))
        return KVCache(ks, vs, jnp.asarray(lengths, jnp.int32), self.max_len)

    def grow(self, max_len: int) -> "KVCache":
        """The cache with `max_len` slots per layer (>= S): the committed slots kept, the new
        ones garbage (zeros), lengths unchanged."""
        if max_len < self.max_len:
            raise ValueError(f"a KV cache of {self.max_len} slots cannot grow to {max_len}")
        pad = ((0, 0), (0, 0), (0, max_len - self.max_len), (0, 0))
        return KVCache(tuple(jnp.pad(c, pad) for c in self.k),
                       tuple(jnp.pad(c, pad) for c in self.v), self.lengths, max_len)


def _is_kv(x) -> bool:
    return isinstance(x, KVCache)


def grow_kv(cache, max_len: int):
    """`cache` (a KVCache or a pytree holding some, e.g. a hybrid model's) with every KVCache
    grown to `max_len` slots; everything else (SSM states) unchanged."""
    return jax.tree.map(lambda x: x.grow(max_len) if _is_kv(x) else x, cache, is_leaf=_is_kv)


def has_kv(cache) -> bool:
    """Whether `cache` holds attention keys and values (a pure SSM model's holds none)."""
    return any(_is_kv(x) and x.n_layers for x in jax.tree.leaves(cache, is_leaf=_is_kv))


@flax.struct.dataclass
class KVPending:
    """K/V of T extended-but-uncommitted tokens: one [B, T, K, D] per layer."""

    k: tuple
    v: tuple


def commit_kv(cache: KVCache, pending: KVPending, path: jnp.ndarray, n_accepted: jnp.ndarray):
    """Copy the K/V of the accepted nodes `path[b, :n_accepted[b]]` to slots lengths[b] + j.

    path: int32[B, M] node indices (entries past n_accepted are ignored); n_accepted: int32[B].
    Rows may accept different lengths. Writes that would fall past the cache end are dropped.
    """
    b, m = path.shape
    rows = jnp.arange(b)[:, None]
    j = jnp.arange(m)[None, :]
    slots = jnp.where(j < n_accepted[:, None], cache.lengths[:, None] + j, cache.max_len)

    def scatter(layer_cache, accepted, slots):
        # Index [rows, :, slots] puts the (B, M) index dims first: values are [B, M, K, D].
        return layer_cache.at[rows, :, slots].set(accepted, mode="drop")

    def write(layer_cache, layer_pending):
        accepted = layer_pending[rows, path].astype(layer_cache.dtype)  # [B, M, K, D]
        if jnp.dtype(layer_cache.dtype).itemsize >= 4:
            return scatter(layer_cache, accepted, slots)
        return on_cpu(_select_write, scatter, layer_cache, accepted, slots)

    k = tuple(write(c, p) for c, p in zip(cache.k, pending.k))
    v = tuple(write(c, p) for c, p in zip(cache.v, pending.v))
    lengths = jnp.minimum(cache.lengths + n_accepted, cache.max_len).astype(jnp.int32)
    return KVCache(k, v, lengths, cache.max_len)


def _select_write(layer_cache, accepted, slots):
    """The scatter of `commit_kv` as one elementwise pass over the cache: slot s of row b takes
    accepted[b, j] where slots[b, j] == s. One read and one write of the cache in its own dtype.

    For 16-bit caches in CPU programs only: XLA:CPU runs a scatter into a 16-bit array as convert
    to float32, scatter, convert back, two whole-cache passes per layer per step (4.4 ms of a
    10 ms batch-16 bfloat16 decode step, bench/ar_decode.py); this pass moves a third of that.
    TPUs, GPUs and 32-bit caches scatter in place."""
    slot = jnp.arange(layer_cache.shape[2])[None, None, :, None]  # [1, 1, S, 1]
    out = layer_cache
    for j in range(slots.shape[1]):
        hit = slot == slots[:, j, None, None, None]  # [B, 1, S, 1]; dropped slots never match
        out = jnp.where(hit, accepted[:, j, :, None, :], out)
    return out
