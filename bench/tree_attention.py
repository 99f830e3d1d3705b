"""Tree attention: the XLA path against the reference on this machine, and the memory traffic of
the Pallas TPU kernel against the ideal of reading the used cache once.

    python bench/tree_attention.py [--repeats 5] [--quick]

Per case (batch B, tree nodes T, cache slots S, used lengths): median wall time of the reference
and XLA paths (jitted, float32 on CPU), their peak temporary memory and bytes accessed as XLA's
compiled-memory and cost analyses report them, and the TPU kernel's HBM traffic from its block
schedule (bfloat16, as served): every row reads its cache in whole blocks up to its length and
nothing past it, plus the per-step tensors once. "Ideal" is the used cache read exactly once plus
the same per-step tensors. Pallas kernels cannot be timed here (interpret mode measures the
interpreter); run this on a TPU/GPU host with --kernels to time them next to XLA.
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import (machine, markdown_table, median_seconds,  # noqa: E402
                    tree_attention_inputs, write_result)

from zoo_kernels.tree_attention import tpu, tree_attention  # noqa: E402

H, KV, D = 8, 2, 128  # query heads, KV heads, head dim: one layer of a 1B-class GQA model


def tpu_kernel_traffic(lengths, t, s, itemsize=2, block_kv=tpu.DEFAULT_BLOCK_KV):
    """(kernel bytes, ideal bytes) of HBM traffic of one pallas_tpu call, from its block schedule.

    The cache index map clamps to a row's last needed block, so a row of length n fetches
    max(ceil(n / block), 1) blocks of K and of V per KV head and the pipeline skips the rest. The
    small per-step part: the stacked query rows (G * T padded to 8), the new keys and values (T
    padded to 8), parents, and float32 partials (numerator, max, denominator) per split.
    """
    block_kv = min(block_kv, -(-s // 128) * 128)
    n_rows, t_keys = tpu.tile_rows(H // KV, t)
    splits = tpu.default_num_splits(len(lengths), KV, s)
    b = len(lengths)
    per_step = (b * KV * D * itemsize * (n_rows + 2 * t_keys) + b * t_keys * 4
                + b * KV * splits * n_rows * (D + 2) * 4)
    cache = sum(2 * KV * max(-(-n // block_kv), 1) * block_kv * D * itemsize for n in lengths)
    ideal_per_step = b * itemsize * D * (2 * H * t + 2 * KV * t) + b * t * 4
    ideal_cache = sum(2 * KV * n * D * itemsize for n in lengths)
    return per_step + cache, ideal_per_step + ideal_cache


def _measure(backend, args, repeats):
    fn = jax.jit(lambda *a: tree_attention(*a, backend=backend))
    compiled = fn.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    seconds = median_seconds(lambda: fn(*args).block_until_ready(), repeats=repeats)
    return {"ms": 1e3 * seconds, "temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20,
            "bytes_accessed": float(cost.get("bytes accessed", float("nan")))}


def cases(quick: bool):
    """(B, T, S, lengths): full caches across T and S, then a ragged batch in a big cache."""
    ts, ss = ([1, 16], [512, 2048]) if quick else ([1, 8, 16, 64], [512, 2048, 8192])
    out = [(1, t, s, [s]) for s in ss for t in ts]
    s = ss[-1]
    out.append((4, 16, s, [s, s * 3 // 4, s // 4, 100]))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a few small cases")
    parser.add_argument("--kernels", action="store_true",
                        help="also time the Pallas kernel of this platform (TPU/GPU hosts only)")
    args = parser.parse_args(argv)
    backends = ["reference", "xla"]
    if args.kernels:
        kernel = {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(jax.default_backend())
        if kernel is None:
            parser.error("--kernels needs a TPU or GPU host (interpret mode would time the "
                         "interpreter)")
        backends.append(kernel)

    rows, results = [], []
    for b, t, s, lengths in cases(args.quick):
        inputs = tree_attention_inputs(b, t, s, lengths, H, KV, D, jnp.float32)
        measured = {name: _measure(name, inputs, args.repeats) for name in backends}
        kernel_bytes, ideal_bytes = tpu_kernel_traffic(lengths, t, s)
        ref, fast = measured["reference"], measured["xla"]
        results.append({"batch": b, "tree_nodes": t, "cache_slots": s, "lengths": lengths,
                        **{f"{k}_{name}": v for name, m in measured.items() for k, v in m.items()},
                        "tpu_kernel_bytes": kernel_bytes, "ideal_bytes": ideal_bytes})
        used = "full" if lengths == [s] * b else "/".join(str(n) for n in lengths)
        rows.append([b, t, s, used, f"{ref['ms']:.2f}", f"{fast['ms']:.2f}",
                     f"{ref['ms'] / fast['ms']:.2f}x", f"{ref['temp_mib']:.1f}",
                     f"{fast['temp_mib']:.1f}",
                     f"{ref['bytes_accessed'] / 2**20:.1f} / {fast['bytes_accessed'] / 2**20:.1f}",
                     f"{kernel_bytes / 2**20:.2f} / {ideal_bytes / 2**20:.2f}",
                     f"{kernel_bytes / ideal_bytes:.2f}"]
                    + ([f"{measured[backends[2]]['ms']:.2f}"] if args.kernels else []))
    headers = ["B", "T", "S", "used", "ref ms", "xla ms", "xla speedup", "ref temp MiB",
               "xla temp MiB", "bytes accessed ref / xla (MiB, f32)",
               "TPU kernel / ideal HBM (MiB, bf16)", "kernel / ideal"]
    headers += [f"{backends[2]} ms"] if args.kernels else []
    table = markdown_table(headers, rows)
    print(f"tree attention, H={H} query heads, {KV} KV heads, head dim {D}; median of "
          f"{args.repeats}\n{table}")
    path = write_result("tree_attention", {"machine": machine(), "heads": H, "kv_heads": KV,
                                    "head_dim": D, "repeats": args.repeats, "results": results},
                        table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
