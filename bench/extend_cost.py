"""What one target step costs per tree size: the number `--tree auto` weighs against acceptance.

    python bench/extend_cost.py            # transformer, Mamba2, hybrid (code_* sizes), batch 1
    python bench/extend_cost.py --batches 1 16
    python bench/extend_cost.py --before /tmp/old   # and another checkout, for a before/after
    python bench/extend_cost.py --dtype bfloat16    # weights, activations and caches in bf16

For each model (random weights: the cost does not depend on them) and batch, the seconds of one
target step (extend of a T-node chain + verification + commit, run in a jitted loop as the
speculative engine runs it; the loop `zoo.decode.calibration.extend_costs` times) for T = 1, 4,
8, 16, and each relative to T = 1, the plain decode step. A 96-token prompt fills the cache.
Beside it, the same ratio for the model's matmuls alone (`matmul_steps`): the least a step of T
nodes can cost relative to one node on this machine, whatever the tree code does.

With `--before DIR` (a checkout of the repository at an earlier commit, e.g. from `git archive`),
each round measures DIR's code and this checkout's in turn, each in its own process, and every
number is the median over `--rounds` rounds: a change in the machine's load between rounds hits
both alike. Writes bench/results/extend_cost.{json,md} (and extend_cost_before.{json,md}).
"""

import argparse
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, markdown_table, median_seconds, write_result  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
MODELS = {"transformer": "configs/experiments/code_ref.yaml",  # the speculative bench targets
          "mamba2": "configs/experiments/code_mamba.yaml",
          "hybrid": "configs/experiments/code_hybrid.yaml"}
SIZES = (1, 4, 8, 16)


def matmul_steps(params, batch: int, t: int, steps: int):
    """A jitted loop of `steps` passes over the model's matmuls alone: every `kernel` in params
    (as [in, out]) times a [batch * t, in] input scaled by the last product's corner, so that
    they run one after another, as in the model. What a step of T nodes costs at the least."""
    import jax
    import jax.numpy as jnp

    kernels = [leaf.reshape(leaf.shape[0], -1)
               for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
               if getattr(path[-1], "key", None) == "kernel"]
    inputs = [jnp.ones((batch * t, w.shape[0]), w.dtype) for w in kernels]

    def run(kernels, inputs):
        def body(_, scale):
            for w, x in zip(kernels, inputs):
                scale = 1.0 + 1e-30 * (x * scale @ w)[0, 0]
            return scale
        return jax.lax.fori_loop(0, steps, body, jnp.float32(1.0))

    return functools.partial(jax.jit(run), kernels, inputs)


def measure(batches, repeats, dtype: str = "float32", steps: int = 8) -> list[dict]:
    """[{model, batch, seconds: {T: s}, matmul_seconds: {T: s}}] with the `zoo` on sys.path: the
    loop of target steps that `zoo.decode.calibration.extend_costs` times, every T compiled
    first, then `repeats` rounds of a block of calls per T in turn (the median of each block,
    then of the rounds): within a block the machine is as warm as a decoder repeating one step
    (interleaving single calls of different programs makes the small matmuls slower), across
    rounds a change in load hits every T alike."""
    import jax
    import jax.numpy as jnp

    from zoo import config as config_lib
    from zoo.decode.ar import pad_prompts
    from zoo.decode.calibration import _target_steps
    from zoo.models import build_model

    rows = []
    for name, path in MODELS.items():
        overrides = [f"model.dtype={dtype}", f"model.param_dtype={dtype}"]
        model = build_model(config_lib.load(REPO / path, overrides).model)
        params = model.init(jax.random.key(0))
        for batch in batches:
            prompts = [[(7 * i + j) % 250 + 3 for j in range(96)] for i in range(batch)]
            tokens, lengths = pad_prompts(prompts, model.vocab_size, pad_id=0)
            _, _, cache = model.prefill(params, jnp.asarray(tokens), jnp.asarray(lengths),
                                        tokens.shape[1] + steps)
            runs = {t: functools.partial(_target_steps(model, t, steps), params, cache,
                                         jnp.zeros((batch, t), jnp.int32)) for t in SIZES}
            runs.update({("matmuls", t): matmul_steps(params, batch, t, steps) for t in SIZES})
            seconds = {key: [] for key in runs}
            for _ in range(repeats):  # blocks of calls in turn: warm within, load-fair across
                for key, run in runs.items():
                    seconds[key].append(median_seconds(lambda run=run: jax.block_until_ready(
                        run()), repeats=5, warmup=1))
            seconds = {key: statistics.median(s) for key, s in seconds.items()}
            costs = {t: seconds[t] / steps for t in SIZES}
            matmuls = {t: seconds["matmuls", t] / steps for t in SIZES}
            rows.append(dict(model=name, batch=batch, seconds=costs, matmul_seconds=matmuls))
            print(name, batch, {t: f"{s * 1e3:.3f} ms" for t, s in costs.items()},
                  file=sys.stderr, flush=True)
    return rows


def measure_in(checkout: pathlib.Path, batches, repeats, xla_flags=None,
               dtype: str = "float32") -> list[dict]:
    """`measure` in a fresh process importing `checkout`'s zoo and kernels (with `xla_flags` as
    its XLA_FLAGS, if given)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run([sys.executable, __file__, "--worker", "--repeats", str(repeats),
                          "--dtype", dtype, "--batches", *map(str, batches)],
                         env=env, cwd=checkout, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout)


def medians(runs: list[list[dict]]) -> list[dict]:
    """Per (model, batch), the median over runs of each T's seconds."""
    return [dict(model=row["model"], batch=row["batch"],
                 **{key: {t: statistics.median(run[i][key][t] for run in runs) for t in SIZES}
                    for key in ("seconds", "matmul_seconds")})
            for i, row in enumerate(runs[0])]


def table(rows: list[dict]) -> str:
    headers = (["model", "batch", "T = 1 step (ms)"] + [f"T = {t} / T = 1" for t in SIZES[1:]]
               + [f"matmuls alone, T = {t} / T = 1" for t in SIZES[1:]])
    body = [[r["model"], r["batch"], f"{r['seconds'][1] * 1e3:.2f}"]
            + [f"{r['seconds'][t] / r['seconds'][1]:.2f}x" for t in SIZES[1:]]
            + [f"{r['matmul_seconds'][t] / r['matmul_seconds'][1]:.2f}x" for t in SIZES[1:]]
            for r in rows]
    return markdown_table(headers, body)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", type=pathlib.Path, help="another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--xla-flags", help="XLA_FLAGS for the measuring processes, e.g. "
                        "--xla_cpu_experimental_ynn_fusion_type= (XLA:CPU's dots without YNNPACK)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="model.dtype and model.param_dtype of every model")
    parser.add_argument("--name", default="extend_cost", help="result file name")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # JSON keys are strings: T back to int in `medians`' callers
        print(json.dumps(measure(args.batches, args.repeats, args.dtype)))
        return
    if args.before is None:
        rows = (measure(args.batches, args.repeats, args.dtype) if args.xla_flags is None else
                measure_in(REPO, args.batches, args.repeats, args.xla_flags, args.dtype))
        print(table(rows))
        write_result(args.name, {"machine": machine(), "xla_flags": args.xla_flags,
                                 "dtype": args.dtype, "rows": rows},
                     table(rows) + f"\n\nModels in {args.dtype}.")
        return
    runs = {"before": [], "after": []}
    for _ in range(args.rounds):
        for label, checkout in (("before", args.before), ("after", REPO)):
            rows = measure_in(checkout.resolve(), args.batches, args.repeats, args.xla_flags,
                              args.dtype)
            runs[label].append([dict(r, **{key: {int(t): s for t, s in r[key].items()}
                                               for key in ("seconds", "matmul_seconds")})
                                for r in rows])
    note = (f"\n\nMedians over {args.rounds} rounds, each measuring the code before and after in "
            f"turn (separate processes); before = {args.before}"
            + (f"; XLA_FLAGS={args.xla_flags}" if args.xla_flags is not None else "") + ".")
    for label, name in (("before", f"{args.name}_before"), ("after", args.name)):
        rows = medians(runs[label])
        print(f"{label}:\n{table(rows)}")
        write_result(name, {"machine": machine(), "xla_flags": args.xla_flags,
                            "rounds": args.rounds, "rows": rows, "runs": runs[label]},
                     table(rows) + note)


if __name__ == "__main__":
    main()
