"""One entry point for tree attention; `backend=` picks the implementation.

`auto` is the XLA path on every platform until the Pallas kernels land (issue 4 adds
`pallas_tpu` and `pallas_gpu` and makes `auto` pick them on TPU/GPU).
"""

from kernels.tree_attention import reference, xla

_IMPLEMENTATIONS = {"reference": reference.tree_attention, "xla": xla.tree_attention}
BACKENDS = ("auto", *_IMPLEMENTATIONS)


def tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents, *, scale=None,
                   backend: str = "auto"):
    """Queries of T tree nodes attend to the committed cache and to their own ancestors.

    Shapes: q [B, T, H, D]; k_cache, v_cache [B, K, S, D] (head-major); cache_len int32[B];
    k_new, v_new [B, T, K, D]; parents int32[B, T]. Returns [B, T, H, D].
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown tree_attention backend {backend!r}; choose one of {BACKENDS}")
    b, t, h, d = q.shape
    kv, s = k_cache.shape[1], k_cache.shape[2]
    expected = {"k_cache": (b, kv, s, d), "v_cache": (b, kv, s, d),
                "k_new": (b, t, kv, d), "v_new": (b, t, kv, d)}
    for name, arr in (("k_cache", k_cache), ("v_cache", v_cache), ("k_new", k_new),
                      ("v_new", v_new)):
        if arr.shape != expected[name]:
            raise ValueError(f"tree_attention: {name} has shape {arr.shape}, expected "
                             f"{expected[name]} for q of shape {q.shape}")
    if h % kv:
        raise ValueError(f"tree_attention: {h} query heads are not a multiple of {kv} KV heads")
    if cache_len.shape != (b,) or parents.shape != (b, t):
        raise ValueError(f"tree_attention: cache_len {cache_len.shape} / parents {parents.shape} "
                         f"must be ({b},) / ({b}, {t})")
    impl = _IMPLEMENTATIONS["xla" if backend == "auto" else backend]
    return impl(q, k_cache, v_cache, cache_len, k_new, v_new, parents, scale=scale)
