"""Speculative decoding vs AR on the reference code model: tau, tokens/s and speedup.

    python bench/speculative.py            # trains the reference models once (cached in runs/bench)
    python bench/speculative.py --quick    # batch 1 only, fewer tokens: a smoke run
    python bench/speculative.py --target configs/experiments/code_mamba.yaml   # or code_hybrid
    python bench/speculative.py --dtype bfloat16   # the target served in bfloat16

The default target is configs/experiments/code_ref.yaml; the draft LM, Medusa and Hydra heads are
trained once after it (runs/bench/*, ~35 min on 2 CPU cores in all), and the Falcon drafter (a
decoder layer over 10 slots per position, glancing's extra pass: ~4x a Hydra step, ~20 min more).
Other targets (the Mamba2 and hybrid reference models) are measured with the drafters that need
no target-specific training: prompt lookup and the draft LM as chains, Token Recycling and the
draft LM as trees.
The benchmark first measures how a T-token tree step costs against a 1-token step (the premise of
speculative decoding: a step bound by moving weights verifies T tokens for little more than the
price of one), as the engine runs it (extend, verify, commit in one jitted loop). "auto" rows
decode with the tree `--tree auto` picks for that drafter, batch and temperature (calibrated
once, cached in the target's run; "none" means plain decoding). Prompts are the openings of the
corpus' validation files. Greedy rows also check that the speculative tokens equal the AR
tokens.

With --dtype the target runs in that dtype (`zoo.models.in_dtype`; draft heads follow it), and
the AR baseline is the faster of plain decoding in the run's dtype and in that one, both timed in
the same run: a tree step of bfloat16 GEMMs costs little more than one node on this CPU's AMX, but
at small sizes a bfloat16 1-node step can be slower than a float32 one.
"""

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, markdown_table, median_seconds, write_result  # noqa: E402

from launch.drafter_factory import (HEAD_DRAFTERS, MODEL_DRAFTERS, choose_tree,  # noqa: E402
                                     ensure_trained, make_drafter)
from zoo import config as config_lib  # noqa: E402
from zoo.data import code_corpus  # noqa: E402
from zoo.data.tokenizer import ByteTokenizer  # noqa: E402
from zoo.decode import ar, speculative  # noqa: E402
from zoo.decode.calibration import extend_costs  # noqa: E402
from zoo.decode.sampling import Sampler  # noqa: E402
from zoo.models import build_model, in_dtype  # noqa: E402
from zoo.quality import distinct_ngrams  # noqa: E402
from zoo.runs import load_run  # noqa: E402

CODE_REF = "configs/experiments/code_ref.yaml"
DRAFT = "configs/experiments/code_draft.yaml"
HEADS = {kind: f"configs/experiments/code_ref_{kind}.yaml" for kind in HEAD_DRAFTERS}

# (drafter, tree) pairs measured, train-free first.
SPECS = [
    ("prompt_lookup", "chain6"),
    ("recycling", "medusa_small"),
    ("draft", "chain4"),
    ("draft_tree", "medusa_small"),
    ("draft_dynamic", "d4k4w4b16"),
    ("medusa", "medusa_small"),
    ("hydra", "chain4"),
    ("hydra", "medusa_small"),
    ("falcon", "chain4"),
    ("falcon", "medusa_small"),
]
# `--tree auto` per drafter (zoo.decode.tree_search): the tree, chain or no speculation that the
# calibration (cached in the target's run) says is fastest at this batch and temperature.
AUTO = ["prompt_lookup", "recycling", "draft", "draft_tree", "medusa", "hydra", "falcon"]
COST_SIZES = (1, 4, 8, 16, 32)


def timed(fn, repeats):
    out = fn()  # compile
    seconds = median_seconds(fn, repeats=repeats, warmup=0)
    return out, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--target", default=CODE_REF, help="experiment YAML of the target")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--drafters", nargs="+", help="default: every drafter the target has")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.8])
    parser.add_argument("--dtype", choices=config_lib.DTYPES,
                        help="run the target in this dtype (default: the run's)")
    parser.add_argument("--name", help="results file name in bench/results (default: "
                                       "speculative[_<target>][_<dtype>])")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.new_tokens, args.repeats = [1], 48, 1

    # Draft heads are trained on code_ref; every other drafter serves any target.
    available = {s[0] for s in SPECS} - (set() if args.target == CODE_REF else set(HEAD_DRAFTERS))
    drafters = args.drafters or sorted(available)
    if set(drafters) - available:
        parser.error(f"drafters {sorted(set(drafters) - available)} are not available for "
                     f"{args.target} (heads are trained for {CODE_REF})")
    specs = [s for s in SPECS if s[0] in drafters] + [(n, "auto") for n in AUTO if n in drafters]
    needed = {name for name, _ in specs}
    ensure_trained(args.target, *([DRAFT] if needed & set(MODEL_DRAFTERS) else []),
                   *[HEADS[kind] for kind in HEAD_DRAFTERS if kind in needed])
    run_dir = config_lib.load(args.target).train.run_dir
    config, params = load_run(run_dir)
    trained_config, trained_params = config, params  # plain decoding in the run's own dtype
    if args.dtype is not None:
        model_config, params = in_dtype(config.model, params, args.dtype)
        config = dataclasses.replace(config, model=model_config)
    target = build_model(config.model)
    other_dtype = trained_config.model.dtype != config.model.dtype
    trained_target = build_model(trained_config.model)
    # One target step (extend + verify + commit) per tree size, run as the engine runs it.
    cost = extend_costs(target, params, [[1] * 256], COST_SIZES)
    weight_mb = sum(p.nbytes for p in jax.tree.leaves(params)) / 1e6
    print(f"target {config.name}: {weight_mb:.1f} MB of weights; one extend of T nodes costs "
          + ", ".join(f"T={t}: {c / cost[1]:.2f}x" for t, c in cost.items()) + " a 1-node step")

    prompts_all = code_corpus.opening_prompts(config.data.corpus, config.data.data_dir,
                                              max(args.batches))
    tok = ByteTokenizer()
    common = dict(max_new_tokens=args.new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id)
    rows, records = [], []
    for temperature in args.temperatures:
        sampler = Sampler(temperature=temperature)
        for batch in args.batches:
            prompts = prompts_all[:batch]
            rng = jax.random.key(0)
            base, ar_s = timed(lambda: ar.generate(target, params, prompts, sampler=sampler,
                                                   rng=rng, **common), args.repeats)
            ar_tps, ar_dtype = base.num_tokens.sum() / ar_s, config.model.dtype
            if other_dtype:  # the strongest plain decoding: the faster dtype
                other, other_s = timed(lambda: ar.generate(
                    trained_target, trained_params, prompts, sampler=sampler, rng=rng, **common),
                    args.repeats)
                if other.num_tokens.sum() / other_s > ar_tps:
                    ar_tps, ar_dtype = other.num_tokens.sum() / other_s, trained_config.model.dtype
            # Repetition of the plain decode: greedy loops inflate every drafter's acceptance.
            distinct = distinct_ngrams([row[:n] for row, n in zip(base.tokens.tolist(),
                                                                  base.num_tokens)])
            for name, tree in specs:
                heads_run = (config_lib.load(HEADS[name]).train.run_dir
                             if name in HEAD_DRAFTERS else None)
                shown, template = tree, tree
                if tree == "auto":
                    template = choose_tree(name, target_config=config, target_params=params,
                                           sampler=sampler, run_dir=run_dir, batch=batch,
                                           draft_run=heads_run).tree
                    shown = "auto: " + ("none (AR)" if template is None else
                                        f"{template.num_nodes} nodes, depth {template.max_depth}")
                if template is None:  # auto chose plain decoding: that is what a user gets
                    out, s = timed(lambda: ar.generate(target, params, prompts, sampler=sampler,
                                                       rng=rng, **common), args.repeats)
                else:
                    drafter, dparams = make_drafter(name, tree=template, target_config=config,
                                                    target_params=params, sampler=sampler,
                                                    draft_run=heads_run)
                    run = lambda: speculative.generate(  # noqa: E731
                        target, params, prompts, drafter=drafter, drafter_params=dparams,
                        sampler=sampler, rng=rng, **common)
                    out, s = timed(run, args.repeats)
                tps = out.num_tokens.sum() / s
                tau = getattr(out, "tau", 1.0)  # plain decoding: one token per forward
                exact = (bool(np.array_equal(out.tokens, base.tokens)) if sampler.greedy
                         else None)
                record = {"drafter": name, "tree": shown, "batch": batch,
                          "temperature": temperature, "tau": tau, "tokens_per_s": tps,
                          "ar_tokens_per_s": ar_tps, "ar_dtype": ar_dtype,
                          "speedup": tps / ar_tps, "exact": exact,
                          "ar_distinct_4grams": distinct}
                records.append(record)
                rows.append([name, shown or "—", batch, temperature, f"{tau:.2f}",
                             f"{tps:,.0f}", f"{ar_tps:,.0f}", f"{tps / ar_tps:.2f}x",
                             {True: "yes", False: "NO", None: "—"}[exact], f"{distinct:.2f}"])
                print(" | ".join(map(str, rows[-1])), flush=True)
                # Every row compiles its own loops (and a calibration several more): without
                # this, the process runs out of memory mappings (vm.max_map_count) in LLVM.
                jax.clear_caches()
    table = markdown_table(["drafter", "tree", "batch", "temp", "τ", "tokens/s", "AR tokens/s",
                            "speedup", "= AR", "AR distinct 4-grams"], rows)
    table += (f"\n\nTarget {config.name} ({weight_mb:.0f} MB of {config.model.dtype} weights), "
              f"{args.new_tokens} new tokens per prompt, median of {args.repeats} runs after a "
              "compile run; τ = tokens emitted per target forward. One extend of T nodes costs "
              + ", ".join(f"{c / cost[1]:.2f}x (T={t})" for t, c in cost.items())
              + " a 1-node step. AR distinct 4-grams: the fraction of the plain decode's 4-byte "
              "spans that are distinct (1.0 never repeats; low = looping text, which flatters τ)."
              + (f" AR tokens/s: the faster of plain decoding in {trained_config.model.dtype} and "
                 f"in {config.model.dtype} (= AR compares with the {config.model.dtype} tokens)."
                 if other_dtype else ""))
    print(table)
    payload = {"machine": machine(), "target": config_lib.to_dict(config),
               "step_cost_seconds": cost, "new_tokens": args.new_tokens,
               "repeats": args.repeats, "results": records, "time": time.time()}
    name = args.name or ("speculative" + ("" if args.target == CODE_REF else f"_{config.name}")
                         + (f"_{config.model.dtype}" if other_dtype else ""))
    print(f"wrote {write_result(name + ('_quick' if args.quick else ''), payload, table)}")


if __name__ == "__main__":
    main()
