"""How long a Mamba2 prefill takes to trace, lower and compile as the prompt grows (the chunked
SSD's loop over chunks: a `lax.scan`, one step in the program whatever the length). Run at two
commits to compare them (`--name` keeps both results).

    python bench/prefill_compile.py [--lengths 2048 8192 32768] [--name prefill_compile]
"""

import argparse
import subprocess
import time

import jax
import jax.numpy as jnp

from common import machine, markdown_table, write_result
from zoo.config import ModelConfig
from zoo.models import build_model

# A small Mamba2 (chunks of 64): compile time is about the program's size, not its weights.
CONFIG = ModelConfig(family="mamba2", d_model=256, n_layers=2, ssm_heads=8, ssm_head_dim=64,
                     ssm_state_dim=64, ssm_groups=1, ssm_chunk_size=64, vocab_size=256)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--name", default="prefill_compile")
    args = parser.parse_args(argv)
    model = build_model(CONFIG)
    params = jax.eval_shape(model.init, jax.random.key(0))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows, results = [], []
    for length in args.lengths:
        tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
        lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
        start = time.perf_counter()
        lowered = jax.jit(model.prefill, static_argnums=3).trace(
            params, tokens, lengths, length).lower()
        lowered_s = time.perf_counter() - start
        lowered.compile()
        total_s = time.perf_counter() - start
        results.append({"length": length, "chunks": length // 64, "trace_lower_s": lowered_s,
                        "total_s": total_s, "hlo_chars": len(lowered.as_text())})
        rows.append([f"{length:,}", length // 64, f"{lowered_s:.2f}", f"{total_s:.2f}",
                     f"{len(lowered.as_text()):,}"])
        print(rows[-1], flush=True)
    table = markdown_table(["prompt tokens", "SSD chunks", "trace + lower (s)",
                            "+ compile (s)", "StableHLO chars"], rows)
    table += (f"\n\nMamba2 prefill (2 layers, d_model 256, chunks of 64), batch 1, float32, "
              f"compiled for {jax.default_backend().upper()} once per length (commit {commit}).")
    print(table)
    write_result(args.name, {"machine": machine(), "commit": commit, "results": results}, table)


if __name__ == "__main__":
    main()
