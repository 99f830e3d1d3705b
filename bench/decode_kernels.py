"""Decode-shaped tree attention on this platform's Pallas kernel: cache splits against the XLA
path, at the shapes a decode step has (few rows, long caches).

    python bench/decode_kernels.py [--repeats 20] [--quick] [--heads 32 --kv-heads 8]
    python bench/decode_kernels.py --smoke   # any host: one tiny case, interpreted, no results

Per case (batch B, tree nodes T, cache slots S, used lengths): median wall time of one jitted
call (bfloat16) of backend='xla' and of the platform's kernel (pallas_gpu on a GPU, pallas_tpu on
a TPU) at each num_splits (`auto` is the kernel's `default_num_splits`), and the used cache's
bytes over the best kernel time, to set against the chip's HBM bandwidth (H200 ~4.8 TB/s).
What this settles (the kernels' docstrings list it as not measured): whether splitting the cache
pays at batch 1, where it stops paying as the batch grows, whether the automatic choice is near
the best split, and how far a decode step is from streaming the cache at full bandwidth.
Off a GPU/TPU the kernels run interpreted, which times the interpreter: such hosts only get
--smoke, which checks this script end to end on one tiny case.
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import (machine, markdown_table, median_seconds,  # noqa: E402
                    tree_attention_inputs, write_result)

from zoo_kernels import backends  # noqa: E402
from zoo_kernels.tree_attention import gpu, tpu, tree_attention  # noqa: E402

D = 128
SPLITS = {"pallas_gpu": [1, 2, 4, 8, 16, 32, None], "pallas_tpu": [1, 2, None]}


def cases(quick: bool):
    """(B, T, S, lengths): full caches at batch 1 and 16, decode (T = 1) and a 16-node tree, then
    a ragged batch of 16 in the biggest cache."""
    ss = [4096] if quick else [4096, 16384, 32768]
    out = [(b, t, s, [s] * b) for s in ss for b in (1, 16) for t in (1, 16)]
    s = ss[-1]
    out.append((16, 1, s, [int(x) for x in np.linspace(s // 16, s, 16)]))
    return out


def _kernel_fn(kernel: str, num_splits):
    compiled = jax.default_backend() == {"pallas_gpu": "gpu", "pallas_tpu": "tpu"}[kernel]
    interpret = backends.interpret_params(kernel, compiled)
    if kernel == "pallas_gpu":
        return lambda *a: gpu.tree_attention(*a, num_splits=num_splits, interpret=interpret)
    return lambda *a: tpu.tree_attention(*a, num_splits=num_splits, interpret=interpret)


def _auto_splits(kernel: str, args) -> int:
    q, k_cache = args[0], args[1]
    b, t, h, _ = q.shape
    kv, s = k_cache.shape[1], k_cache.shape[2]
    if kernel == "pallas_gpu":
        return gpu.default_num_splits(b, kv, s, gpu.tile_rows(h // kv, t)[0])
    return tpu.default_num_splits(b, kv, s)


def _ms(fn, args, repeats) -> float:
    fn = jax.jit(fn)
    return 1e3 * median_seconds(lambda: fn(*args).block_until_ready(), repeats=repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="one cache size")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--smoke", action="store_true",
                        help="one tiny interpreted case on any host; writes no results")
    args = parser.parse_args(argv)
    kernel = {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(jax.default_backend())
    if args.smoke:
        kernel = kernel or "pallas_gpu"
        todo, repeats = [(1, 1, 512, [300])], 1
    elif kernel is None:
        parser.error("needs a GPU or TPU host (interpret mode would time the interpreter); "
                     "--smoke checks the script anywhere")
    else:
        todo, repeats = cases(args.quick), args.repeats
    splits = [1, 2, None] if args.smoke else SPLITS[kernel]

    rows, results = [], []
    for b, t, s, lengths in todo:
        inputs = tree_attention_inputs(b, t, s, lengths, args.heads, args.kv_heads, D, jnp.bfloat16)
        want = tree_attention(*inputs, backend="xla").astype(jnp.float32)
        xla_ms = _ms(lambda *a: tree_attention(*a, backend="xla"), inputs, repeats)
        kernel_ms = {}
        for num_splits in splits:
            fn = _kernel_fn(kernel, num_splits)
            got = fn(*inputs).astype(jnp.float32)
            error = float(jnp.abs(got - want).max())
            if error > 5e-2:
                raise AssertionError(f"{kernel} num_splits={num_splits} is off by {error} at "
                                     f"B={b} T={t} S={s}")
            kernel_ms["auto" if num_splits is None else num_splits] = _ms(fn, inputs, repeats)
        best = min((ms, n) for n, ms in kernel_ms.items() if n != "auto")
        cache_bytes = 2 * sum(lengths) * args.kv_heads * D * 2  # K and V, bfloat16
        results.append({"batch": b, "tree_nodes": t, "cache_slots": s, "lengths": lengths,
                        "xla_ms": xla_ms, "kernel_ms": kernel_ms,
                        "auto_splits": _auto_splits(kernel, inputs), "best_splits": best[1],
                        "best_cache_gbps": cache_bytes / (best[0] * 1e-3) / 1e9})
        used = "full" if lengths == [s] * b else "ragged"
        rows.append([b, t, s, used, f"{xla_ms:.3f}"]
                    + [f"{kernel_ms[n]:.3f}" for n in kernel_ms]
                    + [results[-1]["auto_splits"], best[1],
                       f"{results[-1]['best_cache_gbps']:.0f}"])
    headers = (["B", "T", "S", "used", "xla ms"] + [f"splits={n} ms" for n in kernel_ms]
               + ["auto =", "best", "cache GB/s at best"])
    table = markdown_table(headers, rows)
    print(f"{kernel} tree attention, {args.heads} query heads, {args.kv_heads} KV heads, head "
          f"dim {D}, bfloat16; median of {repeats}\n{table}")
    if args.smoke:
        print("smoke run: interpreted, timings meaningless, nothing written")
        return
    path = write_result("decode_kernels", {
        "machine": machine(), "kernel": kernel, "heads": args.heads, "kv_heads": args.kv_heads,
        "head_dim": D, "repeats": repeats, "results": results}, table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
