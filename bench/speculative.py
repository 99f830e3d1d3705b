"""Speculative decoding vs AR on the reference code model: tau, tokens/s and speedup.

    python bench/speculative.py            # trains the reference models once (cached in runs/bench)
    python bench/speculative.py --quick    # batch 1 only, fewer tokens: a smoke run
    python bench/speculative.py --target configs/experiments/code_mamba.yaml   # or code_hybrid

The default target is configs/experiments/code_ref.yaml; the draft LM, Medusa and Hydra heads are
trained once after it (runs/bench/*, ~35 min on 2 CPU cores in all). Other targets (the Mamba2
and hybrid reference models) are measured with the drafters that need no target-specific
training: prompt lookup and the draft LM as chains, Token Recycling and the draft LM as trees. The benchmark first measures
how a T-token tree step costs against a 1-token step (the premise of speculative decoding: a step
bound by moving weights verifies T tokens for little more than the price of one). Prompts are
the openings of the corpus' validation files. Greedy rows also check that the speculative tokens
equal the AR tokens.
"""

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, markdown_table, median_seconds, write_result  # noqa: E402

from kernels.trees import chain_parents  # noqa: E402
from launch.drafter_factory import (HEAD_DRAFTERS, MODEL_DRAFTERS, ensure_trained,  # noqa: E402
                                     make_drafter)
from zoo import config as config_lib  # noqa: E402
from zoo.data import code_corpus  # noqa: E402
from zoo.data.tokenizer import ByteTokenizer  # noqa: E402
from zoo.decode import ar, speculative  # noqa: E402
from zoo.decode.sampling import Sampler  # noqa: E402
from zoo.models import build_model  # noqa: E402
from zoo.train.loop import load_run  # noqa: E402

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
]


def step_cost(model, params, sizes=(1, 4, 8, 16, 32), repeats=10) -> dict[int, float]:
    """Median seconds of one `extend` of a T-node chain at batch 1 on a 256-token cache."""
    tokens = jnp.ones((1, 256), jnp.int32)
    _, _, cache = jax.jit(model.prefill, static_argnums=3)(params, tokens, jnp.array([256]), 512)
    extend = jax.jit(lambda p, c, t, par: model.extend(p, c, t, par)[0])
    cost = {}
    for t in sizes:
        args = (params, cache, jnp.ones((1, t), jnp.int32), chain_parents(t)[None])
        cost[t] = median_seconds(lambda: extend(*args).block_until_ready(), repeats=repeats)
    return cost


def prompts_from_corpus(corpus, data_dir, n, length=96) -> list[list[int]]:
    tok = ByteTokenizer()
    docs = code_corpus.corpus_documents(corpus, data_dir, "validation")
    docs = [d for d in docs if len(d.encode()) >= length] or docs
    return [tok.encode(docs[i % len(docs)].encode()[:length].decode("utf-8", "ignore"), bos=True)
            for i in range(n)]


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
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.new_tokens, args.repeats = [1], 48, 1

    # Draft heads are trained on code_ref; every other drafter serves any target.
    available = {s[0] for s in SPECS} - (set() if args.target == CODE_REF else set(HEAD_DRAFTERS))
    drafters = args.drafters or sorted(available)
    if set(drafters) - available:
        parser.error(f"drafters {sorted(set(drafters) - available)} are not available for "
                     f"{args.target} (heads are trained for {CODE_REF})")
    specs = [s for s in SPECS if s[0] in drafters]
    needed = {name for name, _ in specs}
    ensure_trained(args.target, *([DRAFT] if needed & set(MODEL_DRAFTERS) else []),
                   *[HEADS[kind] for kind in HEAD_DRAFTERS if kind in needed])
    config, params = load_run(config_lib.load(args.target).train.run_dir)
    target = build_model(config.model)
    cost = step_cost(target, params)
    weight_mb = sum(p.nbytes for p in jax.tree.leaves(params)) / 1e6
    print(f"target {config.name}: {weight_mb:.1f} MB of weights; one extend of T nodes costs "
          + ", ".join(f"T={t}: {c / cost[1]:.2f}x" for t, c in cost.items()) + " a 1-node step")

    prompts_all = prompts_from_corpus(config.data.corpus, config.data.data_dir, max(args.batches))
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
            ar_tps = base.num_tokens.sum() / ar_s
            for name, tree in specs:
                heads_run = (config_lib.load(HEADS[name]).train.run_dir
                             if name in HEAD_DRAFTERS else None)
                drafter, dparams = make_drafter(name, tree=tree, target_config=config,
                                                target_params=params, sampler=sampler,
                                                draft_run=heads_run)
                run = lambda: speculative.generate(  # noqa: E731
                    target, params, prompts, drafter=drafter, drafter_params=dparams,
                    sampler=sampler, rng=rng, **common)
                out, s = timed(run, args.repeats)
                tps = out.num_tokens.sum() / s
                exact = (bool(np.array_equal(out.tokens, base.tokens)) if sampler.greedy
                         else None)
                record = {"drafter": name, "tree": tree, "batch": batch,
                          "temperature": temperature, "tau": out.tau, "tokens_per_s": tps,
                          "ar_tokens_per_s": ar_tps, "speedup": tps / ar_tps, "exact": exact}
                records.append(record)
                rows.append([name, tree or "—", batch, temperature, f"{out.tau:.2f}",
                             f"{tps:,.0f}", f"{ar_tps:,.0f}", f"{tps / ar_tps:.2f}x",
                             {True: "yes", False: "NO", None: "—"}[exact]])
                print(" | ".join(map(str, rows[-1])), flush=True)
    table = markdown_table(["drafter", "tree", "batch", "temp", "τ", "tokens/s", "AR tokens/s",
                            "speedup", "= AR"], rows)
    table += (f"\n\nTarget {config.name} ({weight_mb:.0f} MB of float32 weights), "
              f"{args.new_tokens} new tokens per prompt, median of {args.repeats} runs after a "
              "compile run; τ = tokens emitted per target forward. One extend of T nodes costs "
              + ", ".join(f"{c / cost[1]:.2f}x (T={t})" for t, c in cost.items())
              + " a 1-node step.")
    print(table)
    payload = {"machine": machine(), "target": config_lib.to_dict(config),
               "step_cost_seconds": cost, "new_tokens": args.new_tokens,
               "repeats": args.repeats, "results": records, "time": time.time()}
    name = "speculative" + ("" if args.target == CODE_REF else f"_{config.name}")
    print(f"wrote {write_result(name + ('_quick' if args.quick else ''), payload, table)}")


if __name__ == "__main__":
    main()
