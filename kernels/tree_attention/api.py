"""One entry point for tree attention; `backend=` picks the implementation.

  auto        the Pallas kernel of the platform the program is compiled for (TPU -> pallas_tpu,
              GPU -> pallas_gpu, falling back to xla for shapes the kernel cannot take), the XLA
              path elsewhere (CPU);
  reference   the readable truth (dense mask), for tests;
  xla         the fast pure-XLA path;
  pallas_tpu  the Mosaic kernel (tpu.py);
  pallas_gpu  the Triton kernel (gpu.py).

A Pallas backend forced on a platform it was not written for runs in Pallas interpret mode (TPU
kernels with simulated VMEM/SMEM and out-of-bounds reads raising), so every backend runs
everywhere, e.g. a whole speculative decode on the TPU kernel on a CPU laptop. The choice is made
when the program is lowered (`zoo_kernels.backends.run`), not from the host's default backend.
"""

import functools

from .. import backends
from ..backends import BACKENDS
from . import gpu, reference, tpu, xla


def _pallas_tpu(*args, scale, compiled):
    return tpu.tree_attention(*args, scale=scale,
                              interpret=backends.interpret_params("pallas_tpu", compiled))


def _pallas_gpu(*args, scale, compiled):
    return gpu.tree_attention(*args, scale=scale,
                              interpret=backends.interpret_params("pallas_gpu", compiled))


_IMPLEMENTATIONS = {"reference": reference.tree_attention, "xla": xla.tree_attention,
                    "pallas_tpu": _pallas_tpu, "pallas_gpu": _pallas_gpu}
_UNSUPPORTED = {"pallas_tpu": tpu.unsupported, "pallas_gpu": gpu.unsupported}


def resolve_backend(backend: str, q, k_cache, platform: str | None = None) -> str:
    """The concrete backend `backend` means for these shapes on `platform` ("cpu", "tpu",
    "gpu"; default: this host's)."""
    return backends.resolve("tree_attention", backend, _UNSUPPORTED, q, k_cache,
                            platform=platform)


def tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents, *, scale=None,
                   backend: str = "auto"):
    """Queries of T tree nodes attend to the committed cache and to their own ancestors (and,
    where `parents` marks blocks with `zoo_kernels.trees.SAME_BLOCK`, to their whole block).

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
    implementations = {name: functools.partial(fn, scale=scale)
                       for name, fn in _IMPLEMENTATIONS.items()}
    return backends.run("tree_attention", backend, implementations, _UNSUPPORTED, (q, k_cache),
                        q, k_cache, v_cache, cache_len, k_new, v_new, parents)
