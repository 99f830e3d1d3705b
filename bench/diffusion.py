"""Masked-diffusion sampling: forwards per token, tokens/s and quality of every sampler.

    python bench/diffusion.py            # trains the three models once (runs/bench/*)
    python bench/diffusion.py --quick    # 128 tokens, batch 1, one repeat

Models (code corpus, code_small's size, 512-byte windows): `code_diffusion` (MDLM loss, one
bidirectional window), `code_bd3` (block diffusion, blocks of 16, exact KV cache) and the
next-token `code_judge`, which decodes the same lengths as the AR reference and judges every
sample: generative perplexity under it, with the samples' unigram entropy beside it (repetition
lowers perplexity; entropy shows it). Prompts are the openings of validation files.

Each sampler's speedup is over the same model's vanilla sampler: one token per step, a full
forward over prompt + answer per step, no cache (its speed does not depend on the order). The
MDLM "blocks 32, no cache" row decodes in the cached row's order with exact logits, so the two
differ only by Fast-dLLM's prefix-cache approximation: their quality gap is the cache's cost.
"random order" rows unmask uniformly drawn positions (MDLM's ancestral order) instead of the
most confident ones: a model this weak is most confident about runs of spaces, so every
confidence-ordered sampler degenerates into them, and the random-order rows are the ones whose
samples are text (the unigram entropy says which); their quality reference is the random-order
vanilla row (for BD3 the cache is exact, so the cached one-token-per-step row is that
reference). Sampled rows (temperature 0.8, top-p 0.95, as for code_small) lead; greedy rows
follow at the short length only, since a model this small repeats itself greedily. Calls over
20 s are timed once (their compile is < 2% of them).
Writes bench/results/diffusion.{json,md}.
"""

import argparse
import pathlib
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, markdown_table, median_seconds, write_result  # noqa: E402

from launch.drafter_factory import ensure_trained  # noqa: E402
from zoo import config as config_lib  # noqa: E402
from zoo.data.code_corpus import opening_prompts  # noqa: E402
from zoo.data.tokenizer import ByteTokenizer  # noqa: E402
from zoo.decode import ar, diffusion  # noqa: E402
from zoo.decode.diffusion import DiffusionSampler  # noqa: E402
from zoo.decode.sampling import Sampler  # noqa: E402
from zoo.models import build_model  # noqa: E402
from zoo.quality import generative_perplexity, unigram_entropy  # noqa: E402
from zoo.runs import load_run  # noqa: E402

JUDGE = "configs/experiments/code_judge.yaml"
MODELS = {"mdlm": "configs/experiments/code_diffusion.yaml",
          "bd3 (16)": "configs/experiments/code_bd3.yaml"}
# (label, sampler settings) per model; the first of each is its vanilla baseline.
SAMPLERS = {
    "mdlm": [("vanilla: 1 token/step", dict()),
             ("blocks 32 + prefix cache, threshold 0.9", dict(block_size=32, threshold=0.9)),
             ("blocks 32 + prefix cache, threshold 0.7", dict(block_size=32, threshold=0.7)),
             ("random order: 1 token/step", dict(order="random")),
             ("blocks 32, no cache, random order, 1 token/step",
              dict(block_size=32, order="random", cache=False)),
             ("blocks 32 + prefix cache, random order, 1 token/step",
              dict(block_size=32, order="random")),
             ("blocks 32 + prefix cache, random order, 4 tokens/step",
              dict(block_size=32, order="random", steps=-4))],
    "bd3 (16)": [("vanilla: blocks 16, 1 token/step, no cache", dict(block_size=16, cache=False)),
                 ("blocks 16 + cache, 1 token/step", dict(block_size=16)),
                 ("blocks 16 + cache, threshold 0.9", dict(block_size=16, threshold=0.9)),
                 ("blocks 16 + cache, threshold 0.7", dict(block_size=16, threshold=0.7)),
                 ("blocks 16 + cache, random order, 1 token/step",
                  dict(block_size=16, order="random")),
                 ("blocks 16 + cache, random order, 4 tokens/step",
                  dict(block_size=16, order="random", steps=-4))],
}
DECODING = {"sampled": Sampler(temperature=0.8, top_p=0.95), "greedy": Sampler()}
SLOW_CALL_S = 20.0


def timed(fn, repeats):
    """(output, seconds): the median of `repeats` warm calls, or the first call if it is slow."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    if first > SLOW_CALL_S:
        return out, first
    return out, median_seconds(fn, repeats=repeats, warmup=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.batches, args.repeats = [128], [1], 1
    ensure_trained(JUDGE, *MODELS.values())
    tok = ByteTokenizer()
    judge_config, judge_params = load_run(config_lib.load(JUDGE).train.run_dir)
    judge = build_model(judge_config.model)
    prompts_all = opening_prompts(judge_config.data.corpus, judge_config.data.data_dir,
                                      max(args.batches), length=32)
    models = {name: load_run(config_lib.load(path).train.run_dir)
              for name, path in MODELS.items()}
    rows, raw = [], []
    for decoding, sampler in DECODING.items():
        for length in args.lengths if decoding == "sampled" else args.lengths[:1]:
            for batch in args.batches:
                prompts = prompts_all[:batch]
                kw = dict(max_new_tokens=length, eos_id=-1, pad_id=tok.pad_id,
                          rng=jax.random.key(0))

                def measure(label, model_name, fn, base):
                    out, seconds = timed(fn, args.repeats)
                    samples = [row[:n].tolist() for row, n in zip(out.tokens, out.num_tokens)]
                    ppl = generative_perplexity(judge, judge_params, prompts, samples,
                                                tok.pad_id)
                    entropy = unigram_entropy(samples)
                    forwards = getattr(out, "forwards", length)
                    tps = batch * length / seconds
                    raw.append(dict(decoding=decoding, length=length, batch=batch,
                                    model=model_name, sampler=label, seconds=seconds,
                                    tokens_per_s=tps, forwards=forwards, gen_ppl=ppl,
                                    entropy=entropy, sample=tok.decode(samples[0])[:200]))
                    rows.append([decoding, length, batch, model_name, label,
                                 f"{forwards / length:.3f}", f"{tps:,.0f}",
                                 f"{tps / base:.1f}x" if base else "1.0x", f"{ppl:.2f}",
                                 f"{entropy:.2f}"])
                    print(" | ".join(map(str, rows[-1])), flush=True)
                    return tps

                ar_fn = lambda: ar.generate(judge, judge_params, prompts,  # noqa: E731
                                            sampler=sampler, **kw)
                measure("AR (code_judge)", "next-token", ar_fn, None)
                for name, (config, params) in models.items():
                    model = build_model(config.model)
                    base = None
                    for label, settings in SAMPLERS[name]:
                        if settings.get("steps", 0) < 0:  # -k: k tokens per step
                            settings = {**settings, "steps": length // -settings["steps"]}
                        how = DiffusionSampler(sampler=sampler, **settings)
                        fn = lambda how=how: diffusion.generate(  # noqa: E731
                            model, params, prompts, how=how,
                            model_block_size=config.objective.block_size,
                            mask_id=tok.mask_id, **kw)
                        tps = measure(label, name, fn, base)
                        base = base or tps
    headers = ["decoding", "new tokens", "batch", "model", "sampler", "forwards / token",
               "tokens/s", "speedup", "gen. perplexity", "unigram entropy (bits)"]
    table = markdown_table(headers, rows)
    print(table)
    write_result("diffusion", {"machine": machine(), "repeats": args.repeats, "rows": raw}, table)


if __name__ == "__main__":
    main()
