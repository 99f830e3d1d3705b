"""What one sampling step costs at a large vocabulary: `Sampler.sample` (top-k and top-p as
bisection thresholds, no sort) against the sorting definition (`reference_logprobs`), timed in
turns in one process, jitted, float32 logits.

    python bench/sampler.py [--vocab 152064] [--batches 1 16] [--repeats 20]
"""

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import machine, markdown_table, write_result
from zoo.decode.sampling import Sampler, reference_logprobs

SETTINGS = {"top-k 50": Sampler(temperature=0.8, top_k=50),
            "top-p 0.9": Sampler(temperature=0.8, top_p=0.9),
            "top-k 50 + top-p 0.9": Sampler(temperature=0.8, top_k=50, top_p=0.9)}


@functools.partial(jax.jit, static_argnames="reference")
def _sample(sampler, rng, logits, reference):
    logprobs = reference_logprobs(sampler, logits) if reference else sampler.logprobs(logits)
    return jax.random.categorical(rng, logprobs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=152064)  # Qwen2/3's
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    rows, results = [], []
    for batch in args.batches:
        logits = jax.random.normal(jax.random.key(0), (batch, args.vocab)) * 4
        for name, sampler in SETTINGS.items():
            runs = {kind: functools.partial(_sample, sampler, jax.random.key(1), logits,
                                            reference=kind == "sort")
                    for kind in ("sort", "bisection")}
            for fn in runs.values():
                fn().block_until_ready()  # compile
            times = {kind: [] for kind in runs}
            for _ in range(args.repeats):  # in turns: load changes hit both alike
                for kind, fn in runs.items():
                    start = time.perf_counter()
                    fn().block_until_ready()
                    times[kind].append(time.perf_counter() - start)
            ratios = [s / b for s, b in zip(times["sort"], times["bisection"])]
            med = {kind: statistics.median(t) for kind, t in times.items()}
            results.append({"batch": batch, "setting": name, "seconds": times,
                            "median_ms": {k: v * 1e3 for k, v in med.items()},
                            "speedup_min_median_max": [min(ratios), statistics.median(ratios),
                                                       max(ratios)]})
            rows.append([batch, name, f"{med['sort'] * 1e3:.2f}", f"{med['bisection'] * 1e3:.2f}",
                         f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"])
    table = markdown_table(["batch", "filter", "sort (ms)", "bisection (ms)",
                            "speedup, median (min-max)"], rows)
    table += (f"\n\nOne jitted sampling step over {args.vocab:,} float32 logits, median of "
              f"{args.repeats} rounds timed in turns, on {jax.default_backend().upper()} "
              f"({machine()['cpu_count']} cores). Not measured on TPU/GPU (no accelerator here).")
    print(table)
    write_result("sampler", {"machine": machine(), "vocab": args.vocab, "results": results},
                 table)


if __name__ == "__main__":
    main()
