"""Helpers shared by the benchmarks: timing medians, machine description, result files."""

import json
import pathlib
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def median_seconds(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "cpu_count": __import__("os").cpu_count()}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, payload: dict, table: str) -> pathlib.Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    return path


def tree_attention_inputs(b, t, s, lengths, h, kv, d, dtype):
    """Random tree-attention arguments (q, caches, lengths, new K/V, random parents) in the
    kernels' contract: b rows, t tree nodes, s cache slots, h query and kv KV heads of dim d."""
    keys = jax.random.split(jax.random.key(0), 5)
    rng = np.random.default_rng(0)
    parents = np.stack([[-1] + [int(rng.integers(0, i)) for i in range(1, t)] for _ in range(b)])
    return (jax.random.normal(keys[0], (b, t, h, d), dtype),
            jax.random.normal(keys[1], (b, kv, s, d), dtype),
            jax.random.normal(keys[2], (b, kv, s, d), dtype),
            jnp.asarray(lengths, jnp.int32),
            jax.random.normal(keys[3], (b, t, kv, d), dtype),
            jax.random.normal(keys[4], (b, t, kv, d), dtype),
            jnp.asarray(parents, jnp.int32))
