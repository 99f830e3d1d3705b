"""zoo-generate: complete prompts with a trained model, optionally with speculative decoding.

    zoo-generate --checkpoint runs/code_small --prompt "def fibonacci(n):"
    zoo-generate --checkpoint runs/code_small --prompts-file prompts.txt --temperature 0.8
    zoo-generate --checkpoint runs/code_small --prompt "import os" --speculative prompt_lookup
    zoo-generate --checkpoint runs/code_small --prompt "import os" --speculative medusa \
        --draft-checkpoint runs/code_small_medusa --tree medusa_small

With --speculative the prompts are decoded twice, plainly and speculatively, and both outputs
are printed with the measured speedup (greedy outputs are identical by construction).

The run's objective picks the decoder: a next-block run (objective.kind next_block) emits a
block per forward. A run on a video corpus continues held-out clips instead of prompts:

    zoo-generate --checkpoint runs/sprites_nbp --clips 4 --given-frames 4 --out samples/
      -> samples/grid.png (conditioning | generated frames, one row per clip), clip_<i>.gif,
         frames/s and the consistency score of the generated frames
"""

import argparse
import dataclasses
import functools
import pathlib
import sys
import time

from zoo.config import DTYPES  # no jax: argument errors come before heavy imports


def _describe(choice) -> str:
    """One line on what `--tree auto` chose and why."""
    if choice.tree is None:
        return (f"no speculation (nothing beats the plain step's "
                f"{choice.ar_tokens_per_second:.0f} tokens/s on this device and batch)")
    tree = choice.tree
    return (f"{tree.num_nodes} nodes, depth {tree.max_depth}, candidates per depth "
            f"{list(tree.topk_per_depth)}: expected {choice.tokens_per_step:.2f} tokens per step "
            f"at {choice.seconds_per_step * 1e3:.1f} ms, {choice.speedup:.2f}x the plain step")


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
    prompts = parser.add_mutually_exclusive_group()
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
                             "medusa, hydra, falcon")
    parser.add_argument("--tree", help="the drafter's tree: chainN, a preset (medusa_small, "
                                       "medusa_63), dDkKwWbB for draft_dynamic, or auto: the "
                                       "tree with the most tokens/s measured on this device "
                                       "and batch (calibrated once, cached in the run; may be "
                                       "no speculation) (default per drafter)")
    parser.add_argument("--kernel-backend",
                        help="backend of the tree kernels (tree attention, SSM tree scan): "
                             "auto, xla, reference, pallas_tpu, pallas_gpu (a Pallas kernel off "
                             "its platform runs interpreted; default: the run's decode config)")
    parser.add_argument("--dtype", choices=DTYPES,
                        help="run the model (weights, activations, caches) in this dtype "
                             "(default: the run's); draft heads follow it, draft LMs keep theirs")
    parser.add_argument("--draft-checkpoint",
                        help="run directory of the draft LM (draft*) or of the heads (medusa, "
                             "hydra, falcon)")
    diffusion = parser.add_argument_group("masked diffusion runs (default: the run's decode "
                                          "config)")
    diffusion.add_argument("--steps", type=int, help="sampling steps over the answer (0: one "
                                                     "token per step)")
    diffusion.add_argument("--threshold", type=float,
                           help="parallel decoding: unmask every position whose confidence "
                                "exceeds this, in (0, 1] (0: off)")
    diffusion.add_argument("--block-size", type=int,
                           help="semi-AR blocks of this many tokens with a KV cache (0: none)")
    diffusion.add_argument("--no-cache", action="store_true",
                           help="blocks without the KV cache (the whole sequence every step)")
    diffusion.add_argument("--order", choices=("confidence", "random"), default="confidence",
                           help="vanilla sampler: unmask the most confident positions (LLaDA) or "
                                "random ones (MDLM; what a weakly trained model needs)")
    video = parser.add_argument_group("video runs")
    video.add_argument("--clips", type=int, default=4, help="validation clips to continue")
    video.add_argument("--given-frames", type=int, default=4, help="conditioning frames per clip")
    video.add_argument("--frames", type=int, help="frames per clip, given + generated (default: "
                                                  "as many as the run was trained on)")
    video.add_argument("--out", help="where to write grid.png and the GIFs (default: "
                                     "<checkpoint>/samples)")
    args = parser.parse_args(argv)

    if args.prompt is None and args.prompts_file is None:
        texts = None  # a video run continues clips; a text run needs prompts (checked below)
    elif args.prompt is not None:
        texts = [args.prompt.replace("\\n", "\n")]
    else:
        path = pathlib.Path(args.prompts_file)
        if not path.is_file():
            print(f"zoo-generate: prompts file not found: {path}", file=sys.stderr)
            return 2
        texts = [line.replace("\\n", "\n") for line in path.read_text().splitlines() if line]

    import jax

    from launch.drafter_factory import choose_tree, make_drafter
    from zoo.decode import ar, next_block, speculative
    from zoo.decode.sampling import Sampler
    from zoo.models import build_model, in_dtype
    from zoo.runs import load_run, tokenizer_for_run

    try:  # a text run's tokenizer is checked against its model before the params load
        tok = None if texts is None else tokenizer_for_run(args.checkpoint)
        config, params = load_run(args.checkpoint, args.step)
        if config.heads.kind != "none":
            raise ValueError(
                f"{args.checkpoint} is a run of {config.heads.kind} draft heads, not a model; "
                f"decode with their target: --checkpoint {config.heads.target_run} "
                f"--speculative {config.heads.kind} --draft-checkpoint {args.checkpoint}")
        if args.dtype is not None:
            model_config, params = in_dtype(config.model, params, args.dtype)
            config = dataclasses.replace(config, model=model_config)
        if args.kernel_backend is not None:
            config = dataclasses.replace(config, decode=dataclasses.replace(
                config.decode, kernel_backend=args.kernel_backend))
        dc = config.decode
        pick = lambda value, default: default if value is None else value  # noqa: E731
        sampler = Sampler(pick(args.temperature, dc.temperature), pick(args.top_k, dc.top_k),
                          pick(args.top_p, dc.top_p))
        if config.data.is_video:
            return _continue_clips(args, config, params, sampler, pick(args.seed, dc.seed))
        if texts is None:
            raise ValueError("give --prompt or --prompts-file (this is a text run)")
        if config.objective.kind == "masked_diffusion":
            return _sample_diffusion(args, config, params, sampler, tok, texts,
                                     pick(args.seed, dc.seed), pick)
        if args.speculative and config.objective.kind != "lm":
            raise ValueError(f"--speculative verifies a next-token model; this run's objective "
                             f"is {config.objective.kind!r}")
        drafter = drafter_params = None
        tree, speculate = args.tree, bool(args.speculative)
        if speculate and tree == "auto":
            choice = choose_tree(args.speculative, target_config=config, target_params=params,
                                 sampler=sampler, run_dir=args.checkpoint, batch=len(texts),
                                 draft_run=args.draft_checkpoint)
            tree, speculate = choice.tree, choice.tree is not None
            print(f"tree auto: {_describe(choice)}")
        if speculate:
            drafter, drafter_params = make_drafter(
                args.speculative, tree=tree, target_config=config,
                target_params=params, sampler=sampler, draft_run=args.draft_checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"zoo-generate: {e}", file=sys.stderr)
        return 2
    model = build_model(config.model, dc.kernel_backend)
    prompt_ids = [tok.encode(t, bos=True) for t in texts]
    kwargs = dict(max_new_tokens=pick(args.max_new_tokens, dc.max_new_tokens), sampler=sampler,
                  rng=jax.random.key(pick(args.seed, dc.seed)), eos_id=_eos(tok),
                  pad_id=tok.pad_id)
    decoder = ar.generate
    if config.objective.kind == "next_block":
        decoder = functools.partial(next_block.generate, block_size=config.objective.block_size)
    try:
        out, compile_s, seconds = _timed(lambda: decoder(model, params, prompt_ids,
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
    kind = ("next-block" if config.objective.kind == "next_block" else "AR")
    per_forward = (f", {out.forwards} forwards of blocks of {config.objective.block_size}"
                   if kind == "next-block" else "")
    print(f"{kind}: {total} tokens in {seconds:.2f} s: {total / seconds:.1f} tokens/s "
          f"(batch {len(texts)}{per_forward}; compile + first run {compile_s:.1f} s)")
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


def _eos(tok) -> int:
    """The id that ends a row: the tokenizer's EOS, or -1 (never) when it has none."""
    return -1 if tok.eos_id is None else tok.eos_id


def _sample_diffusion(args, config, params, sampler, tok, texts, seed, pick) -> int:
    """Sample answers after the prompts from a masked diffusion run; print them with the
    number of model forwards and tokens/s."""
    import jax

    from zoo.decode import diffusion
    from zoo.models import build_model

    if args.speculative:
        raise ValueError("--speculative verifies a next-token model; this run's objective is "
                         "'masked_diffusion'")
    if tok.mask_id is None:
        raise ValueError(f"{args.checkpoint}'s tokenizer names no mask_token, which masked "
                         "diffusion samples with")
    dc = config.decode
    how = diffusion.DiffusionSampler(
        steps=pick(args.steps, dc.steps), threshold=pick(args.threshold, dc.threshold),
        block_size=pick(args.block_size, dc.block_size), cache=not args.no_cache,
        sampler=sampler, order=args.order)
    model = build_model(config.model, dc.kernel_backend)
    run = lambda: diffusion.generate(  # noqa: E731
        model, params, [tok.encode(t, bos=True) for t in texts],
        max_new_tokens=pick(args.max_new_tokens, dc.max_new_tokens), how=how,
        model_block_size=config.objective.block_size, rng=jax.random.key(seed),
        eos_id=_eos(tok), pad_id=tok.pad_id, mask_id=tok.mask_id)
    out, compile_s, seconds = _timed(run)
    for row, text in enumerate(texts):
        print(f"--- prompt ---\n{text}\n--- completion ---\n"
              f"{tok.decode(out.tokens[row, :out.num_tokens[row]])}\n")
    total = int(out.num_tokens.sum())
    rule = (f"threshold {how.threshold}" if how.threshold
            else f"{how.steps} steps" if how.steps else "one token per step")
    rule += ", random order" if how.order == "random" else ""
    blocks = f", blocks of {how.block_size}" if how.block_size else ""
    print(f"diffusion ({rule}{blocks}): {total} tokens in {seconds:.2f} s: "
          f"{total / seconds:.1f} tokens/s, {out.forwards} forwards (batch {len(texts)}; "
          f"compile + first run {compile_s:.1f} s)")
    return 0


def _continue_clips(args, config, params, sampler, seed) -> int:
    """Continue held-out clips of a video run; write a PNG grid and GIFs; print frames/s and the
    consistency score."""
    import jax
    import numpy as np

    from zoo.data import video, video_images, video_score
    from zoo.decode.clips import continue_clips
    from zoo.models import build_model

    spec = video.video_spec(config.data.corpus)
    trained = (config.data.seq_len + config.objective.shift) // spec.tokens_per_frame
    frames = args.frames or trained
    if args.clips < 1:
        raise ValueError(f"--clips must be >= 1, got {args.clips}")
    if not 3 <= frames <= spec.frames:
        raise ValueError(f"--frames must be in [3, {spec.frames}], got {frames}")
    if not 2 <= args.given_frames < frames:
        raise ValueError(f"--given-frames must be in [2, {frames - 1}] (the consistency score "
                         f"reads motion from 2 frames), got {args.given_frames}")
    clips = video.load_clips(config.data.corpus, config.data.data_dir, "validation")
    clips = clips[:args.clips, :frames * spec.tokens_per_frame]
    model = build_model(config.model, config.decode.kernel_backend)
    out = continue_clips(model, params, config.objective, clips, args.given_frames,
                         spec.tokens_per_frame, sampler=sampler, rng=jax.random.key(seed))
    cond = video.tokens_to_clip(clips[:, :args.given_frames * spec.tokens_per_frame],
                                spec.height, spec.width)
    gen = video.tokens_to_clip(out.tokens, spec.height, spec.width)
    target = pathlib.Path(args.out or pathlib.Path(args.checkpoint) / "samples")
    target.mkdir(parents=True, exist_ok=True)
    video_images.save_grid(list(zip(cond, gen)), target / "grid.png")
    for i, (c, g) in enumerate(zip(cond, gen)):
        video_images.save_gif(np.concatenate([c, g]), target / f"clip_{i}.gif")
    made = gen.shape[0] * gen.shape[1]
    score = video_score.mean_consistency(cond, gen)
    print(f"{config.objective.kind}: {made} frames ({len(clips)} clips x {gen.shape[1]}) in "
          f"{out.seconds:.2f} s: {made / out.seconds:.1f} frames/s, {out.forwards} forwards; "
          f"consistency {score:.3f}")
    print(f"wrote {target / 'grid.png'} and {len(clips)} GIFs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
