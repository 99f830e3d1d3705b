"""Layers under nn.scan vs unrolled, and remat policies: what the train step costs to compile and
how much scratch memory it needs.

    python bench/scan_layers.py [--repeats 3]

A narrow transformer (d_model 64) so that it runs in minutes on a CPU: compile time is set by
the number of distinct blocks XLA sees, not their width. For 4, 16 and 32 layers, the train step
(forward, backward, AdamW) is lowered and compiled unrolled and scanned (median of `repeats`
fresh compiles). At 16 layers, each remat setting (none, full, dots_with_no_batch_dims_saveable)
gives the compiled step's temporaries (`memory_analysis().temp_size_in_bytes`: activations
kept for the backward pass and scratch, not the params or optimizer state) and its step time.

Read on XLA:CPU (bench/results/scan_layers.md): remat cuts the temporaries only when scanned;
unrolled, the step recomputes (it is slower) but keeps about as much, as if the recomputation
were scheduled early, next to the forward. The scan's backward loop forces the order.
"""

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.common import machine, markdown_table, median_seconds, write_result  # noqa: E402
from zoo.config import ModelConfig, TrainConfig  # noqa: E402
from zoo.models import build_model  # noqa: E402
from zoo.train.optimizer import learning_rate_schedule, make_optimizer  # noqa: E402
from zoo.train.steps import init_state, make_train_step  # noqa: E402

MODEL = ModelConfig(d_model=64, n_heads=4, n_kv_heads=2, mlp_dim=192)
BATCH, SEQ = 8, 256
LAYERS = (4, 16, 32)
REMATS = ("none", "full", "dots_with_no_batch_dims_saveable")
MEMORY_LAYERS = 16


def compiled_step(config: ModelConfig):
    """(seconds to trace and lower, seconds to compile, the compiled train step, the model,
    the optimizer)."""
    train = TrainConfig(steps=10, warmup_steps=1)
    tx = make_optimizer(train)
    model = build_model(config)
    state = jax.eval_shape(lambda: init_state(model, tx, jax.random.key(0)))
    batch = {k: jax.ShapeDtypeStruct((BATCH, SEQ), np.int32) for k in ("inputs", "targets")}
    step = make_train_step(model, tx, learning_rate_schedule(train))
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    traced = time.perf_counter()
    compiled = lowered.compile()
    return traced - start, time.perf_counter() - traced, compiled, model, tx


def compile_rows(repeats: int):
    rows = []
    for layers in LAYERS:
        for scanned in (False, True):
            config = dataclasses.replace(MODEL, n_layers=layers, scan_layers=scanned)
            runs = [compiled_step(config)[:2] for _ in range(repeats)]
            rows.append({"layers": layers, "scanned": scanned,
                         "lower_s": float(np.median([r[0] for r in runs])),
                         "compile_s": float(np.median([r[1] for r in runs]))})
            print(rows[-1], flush=True)
    return rows


def memory_rows(repeats: int):
    rows = []
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (BATCH, SEQ + 1), dtype=np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    for scanned in (False, True):
        for remat in REMATS:
            config = dataclasses.replace(MODEL, n_layers=MEMORY_LAYERS, scan_layers=scanned,
                                         remat=remat)
            _, _, compiled, model, tx = compiled_step(config)
            state = init_state(model, tx, jax.random.key(0))

            def run():
                nonlocal state
                state, metrics = compiled(state, batch)
                jax.block_until_ready(metrics)

            rows.append({"scanned": scanned, "remat": remat,
                         "temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20,
                         "step_s": median_seconds(run, repeats=repeats)})
            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    compiles, memory = compile_rows(args.repeats), memory_rows(max(args.repeats, 3))
    unrolled = {r["layers"]: r for r in compiles if not r["scanned"]}
    compile_table = markdown_table(
        ["layers", "layout", "trace + lower s", "compile s", "compile vs unrolled"],
        [[r["layers"], "scanned" if r["scanned"] else "unrolled", f"{r['lower_s']:.2f}",
          f"{r['compile_s']:.2f}", f"{r['compile_s'] / unrolled[r['layers']]['compile_s']:.2f}x"]
         for r in compiles])
    baseline = {r["scanned"]: r for r in memory if r["remat"] == "none"}
    memory_table = markdown_table(
        ["layout", "remat", "temporaries MiB", "vs none", "step s", "vs none"],
        [["scanned" if r["scanned"] else "unrolled", r["remat"], f"{r['temp_mib']:.1f}",
          f"{r['temp_mib'] / baseline[r['scanned']]['temp_mib']:.2f}x", f"{r['step_s']:.3f}",
          f"{r['step_s'] / baseline[r['scanned']]['step_s']:.2f}x"] for r in memory])
    shape = (f"d_model {MODEL.d_model}, {MODEL.n_heads} heads, mlp {MODEL.mlp_dim}, batch "
             f"{BATCH} x {SEQ} tokens, float32, {jax.default_backend()}")
    table = (f"# Scanned layers and remat ({shape})\n\nTrain step compile time (median of "
             f"{args.repeats} fresh compiles):\n\n{compile_table}\n\nAt {MEMORY_LAYERS} layers: "
             f"the compiled step's temporaries and its time (median of {max(args.repeats, 3)} "
             f"steps):\n\n{memory_table}")
    print(table)
    write_result("scan_layers", {"machine": machine(), "model": dataclasses.asdict(MODEL),
                                 "batch": BATCH, "seq_len": SEQ, "compile": compiles,
                                 "memory": memory, "memory_layers": MEMORY_LAYERS}, table)


if __name__ == "__main__":
    main()
