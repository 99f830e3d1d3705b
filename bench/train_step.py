"""Training step speed on this CPU: zoo's jitted AdamW step against PyTorch eager on the same
weights, its matmul FLOP utilisation, where the step's time goes, and bfloat16 mixed precision.

    python bench/train_step.py [--repeats 7] [--name train_step]
    PYTHONPATH=<a checkout of an older commit> python bench/train_step.py --name train_step_before

Models: code_ref (Llama-style, d_model 384, 6 layers, batch 16 x 128) and code_mamba (Mamba2),
random weights (speed does not depend on them), random byte tokens. Rows: zoo float32, zoo with
`model.dtype=bfloat16` (float32 params and optimizer state, bfloat16 compute), PyTorch float32
and PyTorch under CPU bfloat16 autocast, all timed in turn round by round (medians), so a change
in the machine's load hits every row alike.

FLOPs of a step are XLA's cost analysis of the compiled zoo step (the same count serves the
PyTorch rows: same model, same maths). Utilisation divides the step's FLOP rate by the measured
peak of one large (2048^3) matmul in XLA of the same dtype (bfloat16 rows: bfloat16 inputs,
float32 accumulation); PyTorch's matmul peak is listed beside it for reference.

Where the time goes, two ways: (1) forward, forward + backward and the whole step jitted
separately and timed in turn (backward = the difference, optimizer = step - forward+backward);
(2) a jax.profiler trace of a few steps read with `jax.profiler.ProfileData` (no extra package):
each XLA:CPU op's time from its start to its completion marker, summed over the threads,
grouped by the model part its op_name names. Also the process CPU seconds per step, which vary
less than wall time on a loaded machine.
"""

import argparse
import collections
import dataclasses
import glob
import os
import pathlib
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import (interleaved_seconds, machine, markdown_table, random_batch,  # noqa: E402
                    step_flops, torch_train_step, write_result, zoo_train_step)

import zoo  # noqa: E402
from zoo import config as config_lib  # noqa: E402
from zoo.models import build_model  # noqa: E402
from zoo.train.steps import mean_token_loss  # noqa: E402

CONFIGS = ("configs/experiments/code_ref.yaml", "configs/experiments/code_mamba.yaml")
PEAK_N = 2048

# op_name fragment -> model part, first match wins (the profile's grouping).
PARTS = (("/mlp/gate/", "MLP GEMMs"), ("/mlp/up/", "MLP GEMMs"), ("/mlp/down/", "MLP GEMMs"),
         ("/mlp/", "SwiGLU activation"),
         ("_qkv/q/", "q/k/v/o projections"), ("_qkv/k/", "q/k/v/o projections"),
         ("_qkv/v/", "q/k/v/o projections"), ("/attn/o/", "q/k/v/o projections"),
         ("_qkv", "RoPE"), ("/attn/", "attention core (QK^T, softmax, PV)"),
         ("norm", "RMSNorm"), ("lm_head", "embedding, LM head"), ("embed", "embedding, LM head"),
         ("/mixer/", "Mamba2 mixer"), ("cross_entropy", "loss"), ("log_softmax", "loss"))


def matmul_peaks(repeats: int) -> dict:
    """GFLOP/s of one PEAK_N^3 matmul: XLA float32, XLA bfloat16 (float32 accumulation),
    PyTorch float32 and bfloat16."""
    n = PEAK_N
    fns = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        mm = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
        fns[f"xla {jnp.dtype(dtype).name}"] = lambda mm=mm, a=a, b=b: mm(a, b).block_until_ready()
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        fns[f"torch {str(dtype).split('.')[-1]}"] = lambda a=a, b=b: a @ b
    seconds = interleaved_seconds(fns, repeats, warmup=2)
    return {name: 2 * n ** 3 / s / 1e9 for name, s in seconds.items()}


def with_dtype(config, dtype: str):
    """`config` with model.dtype (the compute dtype) set; params stay model.param_dtype."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, dtype=dtype))


def cpu_seconds(fn, repeats: int) -> float:
    """Median process CPU seconds (all threads) of `fn()`."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return float(np.median(times))


def speed_rows(config, repeats: int, with_torch: bool) -> list[dict]:
    """zoo float32 / bfloat16 (and PyTorch float32 / bfloat16 autocast) steps, timed in turn."""
    tokens = random_batch(config)
    steps, flops = {}, {}
    for dtype in ("float32", "bfloat16"):
        steps[f"zoo {dtype}"], compiled = zoo_train_step(with_dtype(config, dtype), tokens)
        flops[dtype] = step_flops(compiled)
    if with_torch:
        steps["torch float32"] = torch_train_step(config, tokens)
        steps["torch bfloat16 autocast"] = torch_train_step(config, tokens, torch.bfloat16)
    seconds = interleaved_seconds(steps, repeats, warmup=2)
    cpu = {name: cpu_seconds(steps[name], max(3, repeats // 2)) for name in steps
           if name.startswith("zoo")}
    n = tokens.size - tokens.shape[0]
    return [{"config": config.name, "what": name, "seconds": s, "tokens_per_s": n / s,
             "cpu_seconds": cpu.get(name), "dtype": "bfloat16" if "bfloat16" in name else
             "float32", "step_gflop": flops["float32"] / 1e9,
             "step_gflop_per_s": flops["float32"] / s / 1e9} for name, s in seconds.items()]


def phase_seconds(config, repeats: int) -> dict:
    """Wall seconds of the forward (loss), forward + backward and the whole AdamW step."""
    tokens = random_batch(config)
    batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
    model = build_model(config.model)
    params = model.init(jax.random.key(0))

    def loss(params):
        return mean_token_loss(model, params, batch)

    forward, backward = jax.jit(loss), jax.jit(jax.value_and_grad(loss))
    step, _ = zoo_train_step(config, tokens)
    return interleaved_seconds({
        "forward": lambda: jax.block_until_ready(forward(params)),
        "forward + backward": lambda: jax.block_until_ready(backward(params)),
        "step": step}, repeats, warmup=2)


def op_seconds(trace_dir: str, steps: int) -> dict:
    """Seconds per step of each XLA op in a profile: start to its "end: <op>" completion marker
    (a GEMM handed to Eigen returns at once and completes later), summed over threads."""
    path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
    starts, ends = collections.defaultdict(list), collections.defaultdict(list)
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if "XLA" not in line.name:
                continue
            for event in line.events:
                if event.name.startswith("end: "):
                    ends[event.name[5:]].append(event.start_ns)
                elif not event.name.startswith(("ThunkExecutor", "ThreadpoolListener",
                                                "SlinkyThreadPool")):
                    starts[event.name].append((event.start_ns, event.duration_ns))
    total = collections.Counter()
    for name, events in starts.items():
        done = sorted(ends.get(name, []))
        for start, duration in events:
            after = [e for e in done if e >= start]
            total[name] += max(duration, after[0] - start if after else 0) / 1e9 / steps
    return total


def hlo_op_names(hlo: str) -> dict:
    """Instruction name -> the JAX op_name it came from. A fusion without one of its own (XLA
    names some after their ops, e.g. bitcast_bitcast_fusion) takes the last op_name inside the
    computation it calls: its root's side, where the profile would otherwise call it optimizer."""
    line_re = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$", re.M)
    computations = {m.group(1): m.group(2) for m in re.finditer(
        r"^%?([\w.\-]+) \(.*?\n(.*?)^}", hlo, re.M | re.S)}
    names = {}
    for name, rest in line_re.findall(hlo):
        found = re.search(r'op_name="([^"]*)"', rest)
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        if not found and called and called.group(1) in computations:
            inner = re.findall(r'op_name="([^"]*)"', computations[called.group(1)])
            found = inner[-1] if inner else None
        else:
            found = found.group(1) if found else None
        if found:
            names[name] = found
    return names


def profile(config, steps: int = 3) -> dict:
    """Traced op time per step grouped by model part and phase, and the top ops."""
    step, compiled = zoo_train_step(config, random_batch(config))
    op_names = hlo_op_names(compiled.as_text())
    step()
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(steps):
                step()
        seconds = op_seconds(tmp, steps)
    parts = collections.Counter()
    top = []
    for name, s in seconds.items():
        op_name = op_names.get(name, "")
        phase = ("backward" if "transpose(jvp(" in op_name else "forward" if "jvp(" in op_name
                 else "optimizer")
        part = ("AdamW, clipping, metrics" if phase == "optimizer"
                else next((p for key, p in PARTS if key in op_name), "other"))
        parts[(part, phase)] += s
        top.append((s, name, part, phase))
    top.sort(reverse=True)
    return {"parts": [{"part": p, "phase": ph, "seconds": s} for (p, ph), s in parts.items()],
            "top_ops": [{"op": n, "part": p, "phase": ph, "seconds": s}
                        for s, n, p, ph in top[:12]],
            "traced_seconds": sum(seconds.values())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--name", default="train_step")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    load = [os.getloadavg()[0]]
    peaks = matmul_peaks(args.repeats * 2)
    print("matmul peaks GFLOP/s", peaks, flush=True)
    rows = []
    for path in CONFIGS:
        config = config_lib.load(path)
        rows += speed_rows(config, args.repeats, with_torch=config.model.family == "transformer")
        print(rows[-1], flush=True)
    ref = config_lib.load(CONFIGS[0])
    phases = phase_seconds(ref, args.repeats)
    prof = profile(ref)
    load.append(os.getloadavg()[0])

    torch_f32 = {r["config"]: r["tokens_per_s"] for r in rows if r["what"] == "torch float32"}
    table_rows = []
    for r in rows:
        peak = peaks[f"{r['what'].split()[0].replace('zoo', 'xla')} {r['dtype']}"]
        r["matmul_utilisation"] = r["step_gflop_per_s"] / peak
        base = torch_f32.get(r["config"])
        table_rows.append([r["config"], r["what"], f"{r['tokens_per_s']:,.0f}",
                           f"{r['tokens_per_s'] / base:.2f}x" if base else "—",
                           f"{r['seconds']:.3f}",
                           f"{r['cpu_seconds']:.2f}" if r["cpu_seconds"] else "—",
                           f"{r['step_gflop']:.1f}", f"{r['step_gflop_per_s']:.0f}",
                           f"{100 * r['matmul_utilisation']:.0f}%"])
    out = [f"# Training step speed ({args.name})", "",
           markdown_table(["config", "step", "tokens/s", "vs torch float32", "s/step",
                           "CPU s/step", "GFLOP/step", "GFLOP/s", "of matmul peak"],
                           table_rows), "",
           "Matmul peak, one 2048^3 matmul (GFLOP/s): " + ", ".join(
               f"{k} {v:.0f}" for k, v in peaks.items()) + ". Each row is measured against its own "
           "side's peak in its dtype (zoo: XLA, torch: PyTorch); GFLOP/step is XLA's cost "
           "analysis of zoo's float32 step, used for every row.", "",
           "## Where code_ref's float32 step goes", "",
           markdown_table(["phase", "s", "share of step"],
                          [["forward", f"{phases['forward']:.3f}",
                            f"{phases['forward'] / phases['step']:.0%}"],
                           ["backward", f"{phases['forward + backward'] - phases['forward']:.3f}",
                            f"{(phases['forward + backward'] - phases['forward']) / phases['step']:.0%}"],
                           ["AdamW update, clipping", f"{phases['step'] - phases['forward + backward']:.3f}",
                            f"{(phases['step'] - phases['forward + backward']) / phases['step']:.0%}"],
                           ["step", f"{phases['step']:.3f}", "100%"]]), ""]
    traced = prof["traced_seconds"]
    part_rows = sorted(prof["parts"], key=lambda p: -p["seconds"])
    out += ["Profile (jax.profiler trace of 3 steps; op time summed over XLA's threads, per "
            f"step; {traced:.2f} s traced per step):", "",
            markdown_table(["model part", "phase", "s/step", "share"],
                           [[p["part"], p["phase"], f"{p['seconds']:.3f}",
                             f"{p['seconds'] / traced:.1%}"] for p in part_rows
                            if p["seconds"] / traced >= 0.005]), "",
            "Top ops:", "",
            markdown_table(["op", "part", "phase", "s/step"],
                           [[t["op"], t["part"], t["phase"], f"{t['seconds']:.4f}"]
                            for t in prof["top_ops"]]), "",
            f"Load average {load[0]:.1f} at the start, {load[1]:.1f} at the end (2 cores); "
            f"medians of {args.repeats} rounds; zoo from {pathlib.Path(zoo.__file__).parent}."]
    text = "\n".join(out)
    print(text)
    write_result(args.name, {"machine": machine(), "peaks_gflop_per_s": peaks, "rows": rows,
                             "phases": phases, "profile": prof, "load": load,
                             "zoo": str(pathlib.Path(zoo.__file__).parent)}, text)


if __name__ == "__main__":
    main()
