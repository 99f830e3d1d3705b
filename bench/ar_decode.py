"""AR decode throughput of the demo model, and how close batch-1 decoding gets to the roofline.

    python bench/ar_decode.py [--config configs/experiments/code_small.yaml] [--new-tokens 256]

Batch-1 decoding reads every weight once per token, so its ceiling is
memory bandwidth / weight bytes. Bandwidth is measured on this machine with a large
matrix-vector product (which is bandwidth-bound); the fraction reached is
measured tokens/s / (bandwidth / weight bytes). Weights are random (speed does not depend on
them) and EOS is disabled so every row generates exactly --new-tokens.
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, markdown_table, median_seconds, peak_rss_mib, write_result  # noqa: E402

from zoo import config as config_lib  # noqa: E402
from zoo.data.tokenizer import PAD_ID, ByteTokenizer  # noqa: E402
from zoo.decode.ar import generate  # noqa: E402
from zoo.models import build_model  # noqa: E402


def matvec_bandwidth(rows: int = 8192, cols: int = 8192, repeats: int = 5) -> float:
    """Bytes/s streamed by a float32 [rows, cols] @ [cols] product (the matrix dominates)."""
    w = jax.random.normal(jax.random.key(0), (rows, cols), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (cols,), jnp.float32)
    f = jax.jit(lambda w, x: w @ x)
    seconds = median_seconds(lambda: f(w, x).block_until_ready(), repeats=repeats)
    return w.nbytes / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/experiments/code_small.yaml")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    config = config_lib.load(args.config)
    model = build_model(config.model)
    params = model.init(jax.random.key(0))
    weight_bytes = sum(p.nbytes for p in jax.tree.leaves(params))
    tok = ByteTokenizer()
    prompt = tok.encode("import os\n\ndef main(argv):\n    ", bos=True)

    results = []
    for batch in args.batches:
        prompts = [prompt] * batch
        run = lambda: generate(model, params, prompts, max_new_tokens=args.new_tokens,  # noqa
                               eos_id=-1, pad_id=PAD_ID)
        seconds = median_seconds(run, repeats=args.repeats)
        results.append({"batch": batch, "seconds": seconds,
                        "tokens_per_s": batch * args.new_tokens / seconds})

    bandwidth = matvec_bandwidth()
    roofline = bandwidth / weight_bytes
    results[0]["roofline_fraction"] = (results[0]["tokens_per_s"] / roofline
                                       if results[0]["batch"] == 1 else None)
    payload = {"machine": machine(), "config": config_lib.to_dict(config),
               "new_tokens": args.new_tokens, "repeats": args.repeats,
               "weight_bytes": weight_bytes, "matvec_bandwidth_gb_s": bandwidth / 1e9,
               "roofline_tokens_per_s_batch1": roofline, "results": results,
               "peak_rss_mib": peak_rss_mib()}
    rows = [[r["batch"], f"{r['tokens_per_s']:,.0f}", f"{r['seconds'] * 1e3 / args.new_tokens:.2f}",
             f"{r['roofline_fraction']:.1%}" if r.get("roofline_fraction") else "—"]
            for r in results]
    table = markdown_table(["batch", "tokens/s", "ms / step", "of bandwidth roofline"], rows)
    table += (f"\n\nModel {config.name}: {weight_bytes / 1e6:.1f} MB of weights; matvec bandwidth "
              f"{bandwidth / 1e9:.1f} GB/s -> roofline {roofline:,.0f} tokens/s at batch 1; "
              f"peak RSS {payload['peak_rss_mib']:.0f} MiB; median of {args.repeats} runs of "
              f"{args.new_tokens} new tokens after a warm-up.")
    print(table)
    print(f"wrote {write_result('ar_decode', payload, table)}")


if __name__ == "__main__":
    main()
