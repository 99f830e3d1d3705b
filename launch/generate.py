"""zoo-generate: complete prompts with a trained model.

    zoo-generate --checkpoint runs/code_small --prompt "def fibonacci(n):"
    zoo-generate --checkpoint runs/code_small --prompts-file prompts.txt --temperature 0.8
"""

import argparse
import pathlib
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="zoo-generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run directory written by zoo-train")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="one prompt (\\n is a newline)")
    prompts.add_argument("--prompts-file", help="a file with one prompt per line")
    parser.add_argument("--max-new-tokens", type=int, help="default: the run's decode config")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    args = parser.parse_args(argv)

    if args.prompt is not None:
        texts = [args.prompt.replace("\\n", "\n")]
    else:
        path = pathlib.Path(args.prompts_file)
        if not path.is_file():
            print(f"zoo-generate: prompts file not found: {path}", file=sys.stderr)
            return 2
        texts = [line.replace("\\n", "\n") for line in path.read_text().splitlines() if line]

    import jax

    from zoo.data.tokenizer import ByteTokenizer
    from zoo.decode.ar import generate
    from zoo.decode.sampling import Sampler
    from zoo.models import build_model
    from zoo.train.loop import load_run

    try:
        config, params = load_run(args.checkpoint, args.step)
    except FileNotFoundError as e:
        print(f"zoo-generate: {e}", file=sys.stderr)
        return 2
    dc = config.decode
    pick = lambda value, default: default if value is None else value  # noqa: E731
    try:
        sampler = Sampler(pick(args.temperature, dc.temperature), pick(args.top_k, dc.top_k),
                          pick(args.top_p, dc.top_p))
    except ValueError as e:
        print(f"zoo-generate: {e}", file=sys.stderr)
        return 2
    tok = ByteTokenizer()
    model = build_model(config.model)
    prompt_ids = [tok.encode(t, bos=True) for t in texts]
    kwargs = dict(max_new_tokens=pick(args.max_new_tokens, dc.max_new_tokens), sampler=sampler,
                  rng=jax.random.key(pick(args.seed, dc.seed)), eos_id=tok.eos_id,
                  pad_id=tok.pad_id, max_len=dc.max_len)
    try:
        start = time.perf_counter()
        generate(model, params, prompt_ids, **kwargs)  # compile (once per shape bucket)
        compiled = time.perf_counter()
        out = generate(model, params, prompt_ids, **kwargs)
        elapsed = time.perf_counter() - compiled
    except ValueError as e:
        print(f"zoo-generate: {e}", file=sys.stderr)
        return 2
    for text, row, n in zip(texts, out.tokens, out.num_tokens):
        print(f"--- prompt ---\n{text}\n--- completion ---\n{tok.decode(row[:n])}\n")
    total = int(out.num_tokens.sum())
    print(f"{total} tokens in {elapsed:.2f} s: {total / elapsed:.1f} tokens/s "
          f"(batch {len(texts)}; compile + first run {compiled - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
