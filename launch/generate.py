"""zoo-generate: complete prompts with a trained model, optionally with speculative decoding.

    zoo-generate --checkpoint runs/code_small --prompt "def fibonacci(n):"
    zoo-generate --checkpoint runs/code_small --prompts-file prompts.txt --temperature 0.8
    zoo-generate --checkpoint runs/code_small --prompt "import os" --speculative prompt_lookup
    zoo-generate --checkpoint runs/code_small --prompt "import os" --speculative medusa \
        --draft-checkpoint runs/code_small_medusa --tree medusa_small

With --speculative the prompts are decoded twice, plainly and speculatively, and both outputs
are printed with the measured speedup (greedy outputs are identical by construction).
"""

import argparse
import dataclasses
import pathlib
import sys
import time


def _timed(fn):
    """(result, compile seconds, run seconds): the first call compiles (once per shape bucket)."""
    start = time.perf_counter()
    fn()
    compiled = time.perf_counter()
    result = fn()
    return result, compiled - start, time.perf_counter() - compiled


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
    parser.add_argument("--speculative", metavar="DRAFTER",
                        help="also decode speculatively with this drafter and compare: "
                             "prompt_lookup, recycling, draft, draft_tree, draft_dynamic, "
                             "medusa, hydra")
    parser.add_argument("--tree", help="the drafter's tree: chainN, a preset (medusa_small, "
                                       "medusa_63) or dDkKwWbB for draft_dynamic (default per "
                                       "drafter)")
    parser.add_argument("--kernel-backend",
                        help="backend of the tree kernels (tree attention, SSM tree scan): "
                             "auto, xla, reference, pallas_tpu, pallas_gpu (a Pallas kernel off "
                             "its platform runs interpreted; default: the run's decode config)")
    parser.add_argument("--draft-checkpoint",
                        help="run directory of the draft LM (draft*) or of the heads (medusa, "
                             "hydra)")
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

    from launch.drafter_factory import make_drafter
    from zoo.data.tokenizer import ByteTokenizer
    from zoo.decode import ar, speculative
    from zoo.decode.sampling import Sampler
    from zoo.models import build_model
    from zoo.train.loop import load_run

    try:
        config, params = load_run(args.checkpoint, args.step)
        if args.kernel_backend is not None:
            config = dataclasses.replace(config, decode=dataclasses.replace(
                config.decode, kernel_backend=args.kernel_backend))
        dc = config.decode
        pick = lambda value, default: default if value is None else value  # noqa: E731
        sampler = Sampler(pick(args.temperature, dc.temperature), pick(args.top_k, dc.top_k),
                          pick(args.top_p, dc.top_p))
        drafter = drafter_params = None
        if args.speculative:
            drafter, drafter_params = make_drafter(
                args.speculative, tree=args.tree, target_config=config,
                target_params=params, sampler=sampler, draft_run=args.draft_checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"zoo-generate: {e}", file=sys.stderr)
        return 2
    tok = ByteTokenizer()
    model = build_model(config.model, dc.kernel_backend)
    prompt_ids = [tok.encode(t, bos=True) for t in texts]
    kwargs = dict(max_new_tokens=pick(args.max_new_tokens, dc.max_new_tokens), sampler=sampler,
                  rng=jax.random.key(pick(args.seed, dc.seed)), eos_id=tok.eos_id,
                  pad_id=tok.pad_id)
    try:
        out, compile_s, seconds = _timed(lambda: ar.generate(model, params, prompt_ids,
                                                             max_len=dc.max_len, **kwargs))
        if drafter is not None:
            spec, spec_compile_s, spec_seconds = _timed(lambda: speculative.generate(
                model, params, prompt_ids, drafter=drafter, drafter_params=drafter_params,
                **kwargs))
    except ValueError as e:
        print(f"zoo-generate: {e}", file=sys.stderr)
        return 2
    for row, text in enumerate(texts):
        print(f"--- prompt ---\n{text}\n--- completion ---\n"
              f"{tok.decode(out.tokens[row, :out.num_tokens[row]])}\n")
        if drafter is not None:
            print(f"--- speculative completion ({args.speculative}) ---\n"
                  f"{tok.decode(spec.tokens[row, :spec.num_tokens[row]])}\n")
    total = int(out.num_tokens.sum())
    print(f"AR: {total} tokens in {seconds:.2f} s: {total / seconds:.1f} tokens/s "
          f"(batch {len(texts)}; compile + first run {compile_s:.1f} s)")
    if drafter is not None:
        spec_total = int(spec.num_tokens.sum())
        speed = spec_total / spec_seconds
        same = (out.tokens == spec.tokens).all()
        print(f"speculative ({args.speculative}): {spec_total} tokens in {spec_seconds:.2f} s: "
              f"{speed:.1f} tokens/s, {spec.tau:.2f} tokens per target forward, "
              f"speedup {speed / (total / seconds):.2f}x (compile + first run "
              f"{spec_compile_s:.1f} s); outputs "
              + ("identical" if same else "differ (sampling: same distribution, other draws)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
