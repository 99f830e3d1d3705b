"""Masked-diffusion sampling: forwards per token, tokens/s and quality of every sampler.

    python bench/diffusion.py            # trains the two diffusion models once (runs/bench/*)
    python bench/diffusion.py --quick    # 128 tokens, batch 1, one repeat

Models (code corpus, code_small's size): `code_diffusion` (MDLM loss, one bidirectional window)
and `code_bd3` (block diffusion, blocks of 16, exact KV cache), and the next-token `code_small`
(runs/bench/code_small, trained by bench/next_block.py or here), which both decodes the same
lengths as the AR reference and judges every sample: generative perplexity under it, with the
samples' unigram entropy beside it (repetition lowers perplexity; entropy shows it). Prompts are
the openings of validation files. Each sampler's speedup is over the same model's vanilla
one-token-per-step sampler. Writes bench/results/diffusion.{json,md}.
"""

import argparse
import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, markdown_table, median_seconds, write_result  # noqa: E402
from next_block import CODE, bench_run_dir, train_once  # noqa: E402
from speculative import prompts_from_corpus  # noqa: E402

from launch.drafter_factory import ensure_trained  # noqa: E402
from zoo import config as config_lib  # noqa: E402
from zoo.data.tokenizer import ByteTokenizer  # noqa: E402
from zoo.decode import ar, diffusion  # noqa: E402
from zoo.decode.diffusion import DiffusionSampler  # noqa: E402
from zoo.models import build_model  # noqa: E402
from zoo.quality import generative_perplexity, unigram_entropy  # noqa: E402
from zoo.train.loop import load_run  # noqa: E402

MODELS = {"mdlm": "configs/experiments/code_diffusion.yaml",
          "bd3 (16)": "configs/experiments/code_bd3.yaml"}
# (label, sampler) per model; the first of each is its baseline (one token per step).
SAMPLERS = {
    "mdlm": [("vanilla, 1 token/step", DiffusionSampler()),
             ("threshold 0.9", DiffusionSampler(threshold=0.9)),
             ("blocks 32 + prefix cache, threshold 0.9",
              DiffusionSampler(block_size=32, threshold=0.9))],
    "bd3 (16)": [("blocks 16 + cache, 1 token/step", DiffusionSampler(block_size=16)),
                 ("blocks 16 + cache, threshold 0.9",
                  DiffusionSampler(block_size=16, threshold=0.9)),
                 ("blocks 16 + cache, threshold 0.7",
                  DiffusionSampler(block_size=16, threshold=0.7))],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.batches, args.repeats = [128], [1], 1
    train_once()  # the next-token code twin (the judge) and the next-block bench's models
    ensure_trained(*MODELS.values())
    tok = ByteTokenizer()
    judge_config, judge_params = load_run(bench_run_dir(CODE["next-token"]))
    judge = build_model(judge_config.model)
    prompts_all = prompts_from_corpus(judge_config.data.corpus, judge_config.data.data_dir,
                                      max(args.batches), length=32)
    rows, raw = [], []
    for length in args.lengths:
        for batch in args.batches:
            prompts = prompts_all[:batch]
            kw = dict(max_new_tokens=length, eos_id=-1, pad_id=tok.pad_id)

            def measure(label, model_name, fn, base):
                out = fn()  # compile
                seconds = median_seconds(fn, repeats=args.repeats, warmup=0)
                samples = [row[:n].tolist() for row, n in zip(out.tokens, out.num_tokens)]
                ppl = generative_perplexity(judge, judge_params, prompts, samples, tok.pad_id)
                entropy = unigram_entropy(samples)
                forwards = getattr(out, "forwards", length)
                tps = batch * length / seconds
                raw.append(dict(length=length, batch=batch, model=model_name, sampler=label,
                                seconds=seconds, tokens_per_s=tps, forwards=forwards,
                                gen_ppl=ppl, entropy=entropy,
                                sample=tok.decode(samples[0])[:200]))
                rows.append([length, batch, model_name, label, f"{forwards / length:.3f}",
                             f"{tps:,.0f}", f"{tps / base:.1f}x" if base else "1.0x",
                             f"{ppl:.2f}", f"{entropy:.2f}"])
                return tps

            ar_fn = lambda: ar.generate(judge, judge_params, prompts, **kw)  # noqa: E731
            measure("AR greedy (code_small)", "next-token", ar_fn, None)
            for name, path in MODELS.items():
                config, params = load_run(config_lib.load(path).train.run_dir)
                model = build_model(config.model)
                base = None
                for label, how in SAMPLERS[name]:
                    fn = lambda how=how: diffusion.generate(  # noqa: E731
                        model, params, prompts, how=how,
                        model_block_size=config.objective.block_size, rng=jax.random.key(0),
                        mask_id=tok.mask_id, **kw)
                    tps = measure(label, name, fn, base)
                    base = base or tps
    headers = ["new tokens", "batch", "model", "sampler", "forwards / token", "tokens/s",
               "speedup", "gen. perplexity", "unigram entropy (bits)"]
    table = markdown_table(headers, rows)
    print(table)
    write_result("diffusion", {"machine": machine(), "repeats": args.repeats, "rows": raw}, table)


if __name__ == "__main__":
    main()
