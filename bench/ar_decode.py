"""AR decode throughput per batch size, what one decode step costs against its memory-bound
floor, and how close batch-1 decoding gets to the roofline.

    python bench/ar_decode.py [--config configs/experiments/decode_24m.yaml] [--new-tokens 128]
        [--dtype bfloat16]

--dtype runs the model's weights, activations and KV cache in that dtype (results file
ar_decode_<dtype>): real checkpoints ship in bfloat16, and this CPU's AMX runs bfloat16 GEMMs of
4-64 rows 3-4x faster than float32 ones.

Throughput: greedy decoding of --new-tokens tokens after a --prompt-len-byte prompt at each
batch size (EOS off, so every row decodes exactly that many), median of --repeats runs.

Step cost: one 1-token `extend` at each batch size over the cache decoding holds after the prompt
(decoding grows its cache with the rows, `zoo.decode.ar.capacities`: 128 slots here, of a 512-slot
budget), against its floor = a cache-free forward of the same tokens (weights read once, the same
matmuls) + the cache bytes / measured bandwidth. A ratio near 1 means attention reads the cache
at memory speed.

Roofline: batch-1 decoding reads every weight once per token, so its ceiling is
bandwidth / weight bytes, bandwidth measured here by a large matrix-vector product.
Weights are random (speed does not depend on them).
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
from zoo.decode.ar import capacities, generate, prepare_request  # noqa: E402
from zoo.decode.sampling import Sampler  # noqa: E402
from zoo.models import build_model  # noqa: E402


def matvec_bandwidth(rows: int = 8192, cols: int = 8192, repeats: int = 5) -> float:
    """Bytes/s streamed by a float32 [rows, cols] @ [cols] product (the matrix dominates)."""
    w = jax.random.normal(jax.random.key(0), (rows, cols), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (cols,), jnp.float32)
    f = jax.jit(lambda w, x: w @ x)
    seconds = median_seconds(lambda: f(w, x).block_until_ready(), repeats=repeats)
    return w.nbytes / seconds


def step_costs(model, params, prompts, new_tokens, max_len, repeats) -> dict:
    """Seconds of one 1-token extend after the prompt (over the cache decoding holds then), of a
    cache-free forward of the same tokens, and the cache's bytes."""
    batch = len(prompts)
    tokens, lengths, _, max_len = prepare_request(
        prompts, vocab_size=model.vocab_size, pad_id=PAD_ID, max_new_tokens=new_tokens,
        sampler=Sampler(), rng=None, max_len=max_len)
    slots = capacities(tokens.shape[1], new_tokens, max_len)[0]
    _, _, cache = jax.jit(model.prefill, static_argnums=3)(params, tokens, lengths, slots)
    step = jnp.zeros((batch, 1), jnp.int32)
    parents = jnp.full((batch, 1), -1, jnp.int32)
    extend = jax.jit(lambda p, c: model.extend(p, c, step, parents)[0])
    forward = jax.jit(lambda p: model.forward(p, step)[0])
    return {"max_len": max_len, "extend_slots": slots,
            "extend_s": median_seconds(lambda: extend(params, cache).block_until_ready(),
                                       repeats=repeats * 4),
            "forward_s": median_seconds(lambda: forward(params).block_until_ready(),
                                        repeats=repeats * 4),
            "cache_bytes": sum(x.nbytes for x in jax.tree.leaves(cache))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/experiments/decode_24m.yaml")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=512,
                        help="KV-cache slots: 512 is what zoo-generate allocates for these "
                             "configs (decode.max_len); 0 sizes the cache to the request")
    parser.add_argument("--dtype", default="float32", choices=config_lib.DTYPES,
                        help="model.dtype and model.param_dtype (the KV cache follows)")
    parser.add_argument("--name", help="results file name in bench/results (default ar_decode, "
                                       "or ar_decode_<dtype> for another dtype)")
    args = parser.parse_args(argv)
    name = args.name or ("ar_decode" if args.dtype == "float32" else f"ar_decode_{args.dtype}")

    config = config_lib.load(args.config, [f"model.dtype={args.dtype}",
                                           f"model.param_dtype={args.dtype}"])
    model = build_model(config.model)
    params = model.init(jax.random.key(0))
    weight_bytes = sum(p.nbytes for p in jax.tree.leaves(params))
    text = ("import os\nimport sys\n\n\ndef main(argv):\n    parser = argparse.ArgumentParser("
            "description=__doc__)\n")
    prompt = ByteTokenizer().encode(text, bos=True)[: args.prompt_len]
    bandwidth = matvec_bandwidth()

    results = []
    for batch in args.batches:
        prompts = [prompt] * batch
        run = lambda: generate(model, params, prompts, max_new_tokens=args.new_tokens,  # noqa
                               eos_id=-1, pad_id=PAD_ID, max_len=args.max_len or None)
        seconds = median_seconds(run, repeats=args.repeats)
        row = {"batch": batch, "seconds": seconds,
               "tokens_per_s": batch * args.new_tokens / seconds,
               **step_costs(model, params, prompts, args.new_tokens, args.max_len or None,
                           args.repeats)}
        row["floor_s"] = row["forward_s"] + row["cache_bytes"] / bandwidth
        results.append(row)
        print(row, flush=True)

    roofline = bandwidth / weight_bytes
    base = results[0]["tokens_per_s"] if results[0]["batch"] == 1 else None
    payload = {"machine": machine(), "config": config_lib.to_dict(config),
               "new_tokens": args.new_tokens, "max_len": args.max_len,
               "prompt_len": len(prompt), "repeats": args.repeats,
               "weight_bytes": weight_bytes, "matvec_bandwidth_gb_s": bandwidth / 1e9,
               "roofline_tokens_per_s_batch1": roofline, "results": results,
               "peak_rss_mib": peak_rss_mib()}
    rows = [[r["batch"], f"{r['tokens_per_s']:,.0f}",
             f"{r['tokens_per_s'] / base:.1f}x" if base else "—",
             f"{r['seconds'] * 1e3 / args.new_tokens:.2f}",
             f"{r['tokens_per_s'] / roofline:.1%}" if r["batch"] == 1 else "—",
             f"{r['extend_s'] * 1e3:.2f}", f"{r['forward_s'] * 1e3:.2f}",
             f"{r['cache_bytes'] / 1e6:.1f}", f"{r['extend_s'] / r['floor_s']:.2f}x"]
            for r in results]
    table = markdown_table(["batch", "tokens/s", "vs batch 1", "ms / step",
                            "of bandwidth roofline", "1-token extend (ms)",
                            "cache-free forward (ms)", "cache (MB)", "extend / floor"], rows)
    table += (f"\n\nModel {config.name} in {args.dtype}: {weight_bytes / 1e6:.1f} MB of weights; "
              f"float32 matvec bandwidth "
              f"{bandwidth / 1e9:.1f} GB/s -> roofline {roofline:,.0f} tokens/s at batch 1. "
              f"Prompts of {len(prompt)} tokens, {args.new_tokens} new tokens, a "
              f"{results[0]['max_len']}-slot cache budget (the extend column: over the "
              f"{results[0]['extend_slots']} slots decoding holds after the prompt), greedy, "
              f"median of {args.repeats} runs after a warm-up; floor = cache-free forward + cache "
              f"bytes / bandwidth. Peak RSS {payload['peak_rss_mib']:.0f} MiB.")
    print(table)
    print(f"wrote {write_result(name, payload, table)}")


if __name__ == "__main__":
    main()
