"""Charts of the benchmark results, drawn from the dicts the benchmarks save as JSON.

    python bench/charts.py     # redraw every chart from bench/results/*.json and runs/bench

`common.write_result` draws a result's chart beside its JSON and Markdown (`<name>.png`) whenever
a benchmark writes them; this script redraws them all without re-running anything (the
benchmarks take hours), plus the training loss of the speculative benchmark's targets.
Each chart function takes a results dict (`losses`: run folders) and a path, saves a ~100 dpi PNG
there and returns the figure. matplotlib's object API (no pyplot) keeps drawing free of global figure state.
"""

import argparse
import fnmatch
import functools
import json
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False}
DPI = 100
FAMILY_COLOURS = {"transformer": "tab:blue", "mamba2": "tab:orange", "hybrid": "tab:green"}
FIXED_COLOUR, AUTO_COLOUR = "tab:blue", "tab:orange"
# The speculative benchmark's targets (bench/speculative.py, code_* experiments).
LOSS_RUNS = ("code_ref", "code_mamba", "code_hybrid")
LOSS_CHART = "target_losses.png"


def _chart(fn):
    """Run a chart function under the shared style and save its figure to the path given."""
    @functools.wraps(fn)
    def draw(results, path):
        import matplotlib  # noqa: PLC0415

        with matplotlib.rc_context(STYLE):
            fig = fn(results)
            fig.savefig(path, dpi=DPI)
        return fig
    return draw


def _figure(ncols, width, height, **kwargs):
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False, **kwargs)[0]


def _greedy_or_sampled(temperature) -> str:
    return "greedy" if temperature == 0 else f"temperature {temperature:g}"


def _spec_label(row) -> str:
    """A row's bar label, drafter · tree; a drafter's `--tree auto` rows share "auto"."""
    return f"{row['drafter']} · {'auto' if row['tree'].startswith('auto') else row['tree']}"


@_chart
def speedup(results):
    """Speculative tokens/s over plain decoding per drafter and tree (bench/speculative.py): one
    panel per (temperature, batch), fixed trees and `--tree auto` rows, the 1.0x line marked."""
    from matplotlib.lines import Line2D  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    rows = results["results"]
    labels = list(dict.fromkeys(_spec_label(r) for r in rows))
    groups = sorted({(r["temperature"], r["batch"]) for r in rows})
    top = max(r["speedup"] for r in rows)
    fig, axes = _figure(len(groups), 1.5 + 3.6 * len(groups), 1.3 + 0.24 * len(labels),
                        sharey=True)
    for ax, (temperature, batch) in zip(axes, groups):
        for r in (r for r in rows if (r["temperature"], r["batch"]) == (temperature, batch)):
            auto = r["tree"].startswith("auto")
            y = labels.index(_spec_label(r))
            ax.barh(y, r["speedup"], color=AUTO_COLOUR if auto else FIXED_COLOUR)
            note = f"{r['speedup']:.2f}x" + (f" ({r['tree'][len('auto: '):]})" if auto else "")
            ax.text(r["speedup"] + 0.02 * top, y, note, va="center", fontsize=7)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_xlim(0, top * 1.6)
        ax.set_title(f"batch {batch}, {_greedy_or_sampled(temperature)}")
        ax.set_xlabel("speedup (x plain decoding's tokens/s)")
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    fig.suptitle(f"Speculative decoding vs plain decoding: {results['target']['name']}")
    fig.legend(handles=[Patch(color=FIXED_COLOUR, label="fixed tree"),
                        Patch(color=AUTO_COLOUR, label="--tree auto (its choice beside the bar)"),
                        Line2D([], [], color="black", linestyle="--", label="1.0x: no gain")],
               loc="outside lower center", ncols=3)
    return fig


@_chart
def extend_cost(results):
    """Seconds of one target step against the tree size T per model family
    (bench/extend_cost.py): absolute, and relative to the 1-node step."""
    fig, (absolute, relative) = _figure(2, 9, 3.6)
    batches = {r["batch"] for r in results["rows"]}
    for r in results["rows"]:
        sizes = sorted(int(t) for t in r["seconds"])
        seconds = np.array([r["seconds"][str(t)] for t in sizes])
        name = r["model"] + (f", batch {r['batch']}" if len(batches) > 1 else "")
        style = dict(marker="o", color=FAMILY_COLOURS.get(r["model"]), label=name)
        absolute.plot(sizes, seconds * 1e3, **style)
        relative.plot(sizes, seconds / seconds[0], **style)
    relative.plot(sizes, sizes, color="grey", linestyle=":", label="T full steps (no sharing)")
    for ax, ylabel in ((absolute, "ms per target step"), (relative, "x the 1-node step")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(t) for t in sizes])
        ax.set_xlabel("tree nodes T per step")
        ax.set_ylabel(ylabel)
        ax.legend()
    absolute.set_title("one extend + verify + commit")
    relative.set_title("relative to plain decoding's step")
    fig.suptitle("What a speculative step of T nodes costs (random weights, code_* sizes)")
    return fig


@_chart
def tree_scan(results):
    """Mamba2 tree scan in one pass against re-scanning every root-to-leaf path
    (bench/ssm_tree_scan.py): ms per call against tree size, one panel per tree shape."""
    rows = results["results"]
    shapes = list(dict.fromkeys(r["tree"] for r in rows))
    fig, axes = _figure(len(shapes), 3.2 * len(shapes), 3.4, sharey=True)
    series = (("ms_xla", "tree scan, one pass (XLA)", "tab:blue"),
              ("ms_naive", "per-path rescan", "tab:red"),
              ("ms_reference", "node-by-node reference", "grey"))
    for ax, shape in zip(axes, shapes):
        mine = sorted((r for r in rows if r["tree"] == shape), key=lambda r: r["tree_nodes"])
        nodes = [r["tree_nodes"] for r in mine]
        for key, name, colour in series:
            ax.plot(nodes, [r[key] for r in mine], marker="o", color=colour, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(nodes, [str(t) for t in nodes])
        ax.set_xlabel("tree nodes T")
        ax.set_title(f"{shape} trees")
    axes[0].set_ylabel("ms per call (median)")
    axes[0].legend()
    fig.suptitle(f"SSM tree scan: one Mamba2 layer (H={results['heads']}, "
                 f"P={results['head_dim']}, N={results['state_dim']}), batch {results['batch']}")
    return fig


@_chart
def parallel_memory(results):
    """Per-device memory and training tokens/s of each mesh, 1 vs 8 simulated devices
    (bench/parallel.py)."""
    meshes = list(results["results"])
    parts = (("params_mib", "parameters"), ("optimizer_mib", "optimizer state"),
             ("temp_mib", "step temporaries"))
    fig, (memory, speed) = _figure(2, 10, 3.8, width_ratios=[3, 2])
    x = np.arange(len(meshes))
    width = 0.8 / len(parts)
    for i, (key, name) in enumerate(parts):
        values = [results["results"][m][key] for m in meshes]
        bars = memory.bar(x + (i - 1) * width, values, width, label=name)
        memory.bar_label(bars, fmt="%.3g", fontsize=7)
    memory.set_yscale("log")
    memory.set_ylabel("MiB per device (log scale)")
    memory.set_title("memory per device")
    memory.legend()
    bars = speed.bar(x, [results["results"][m]["tokens_per_s"] for m in meshes], color="grey")
    speed.bar_label(bars, fmt="%.0f", fontsize=7)
    speed.set_ylabel("training tokens/s")
    speed.set_title("throughput (8 devices share 2 CPU cores)")
    for ax in (memory, speed):
        ax.set_xticks(x, [m.replace(" tensor", "\ntensor") for m in meshes])
        ax.grid(axis="x", visible=False)
    fig.suptitle(f"Sharded training, 1 vs 8 simulated devices: "
                 f"{pathlib.Path(results['config']).stem}, same global batch")
    return fig


@_chart
def ar_throughput(results):
    """AR decoding tokens/s against batch (bench/ar_decode.py), the batch-1 bandwidth roofline
    marked."""
    rows = sorted(results["results"], key=lambda r: r["batch"])
    batches = [r["batch"] for r in rows]
    fig, (ax,) = _figure(1, 5, 3.4)
    ax.plot(batches, [r["tokens_per_s"] for r in rows], marker="o", label="measured")
    roofline = results["roofline_tokens_per_s_batch1"]
    ax.plot([1], [roofline], marker="_", markersize=20, color="grey", linestyle="",
            label=f"batch-1 roofline: weights read once a step ({roofline:.0f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch (prompts decoded together)")
    ax.set_ylabel("generated tokens/s")
    dtype = results["config"].get("model", {}).get("dtype", "float32")
    ax.set_title(f"AR greedy decoding: {results['config']['name']} ({dtype}), "
                 f"{results['new_tokens']} new tokens")
    ax.legend(loc="upper left")
    return fig


@_chart
def losses(run_dirs):
    """Train and validation loss by step of training runs (their metrics.jsonl), one panel each."""
    from zoo import plots  # noqa: PLC0415

    fig, axes = _figure(len(run_dirs), 0.6 + 3.4 * len(run_dirs), 3.4, sharey=True)
    for ax, run in zip(axes, run_dirs):
        plots.plot_losses(run, ax=ax)
    fig.suptitle("Training loss of the speculative benchmark's targets")
    return fig


# Result name patterns (bench/results/<name>.json) and the chart each gets as <name>.png.
CHARTS = {"speculative*": speedup, "extend_cost": extend_cost,
          "extend_cost_bfloat16": extend_cost, "ssm_tree_scan": tree_scan,
          "parallel": parallel_memory, "ar_decode": ar_throughput,
          "ar_decode_bfloat16": ar_throughput}


def chart_for(name: str):
    """The chart function for the result `name`, or None if it has none."""
    return next((fn for pattern, fn in CHARTS.items() if fnmatch.fnmatchcase(name, pattern)),
                None)


def draw(name: str, results: dict, folder) -> pathlib.Path | None:
    """Save the chart of result `name` as `folder/<name>.png`; its path, or None without one."""
    fn = chart_for(name)
    if fn is None:
        return None
    path = pathlib.Path(folder) / f"{name}.png"
    fn(results, path)
    return path


def redraw(results_dir, runs_dir) -> list[pathlib.Path]:
    """Redraw every chart from the JSON in `results_dir`, and the loss chart of the benchmark
    targets trained under `runs_dir` (those present); the PNGs written."""
    results_dir = pathlib.Path(results_dir)
    written = [draw(p.stem, json.loads(p.read_text()), results_dir)
               for p in sorted(results_dir.glob("*.json"))]
    runs = [pathlib.Path(runs_dir) / r for r in LOSS_RUNS
            if (pathlib.Path(runs_dir) / r / "metrics.jsonl").is_file()]
    if runs:
        losses(runs, results_dir / LOSS_CHART)
        written.append(results_dir / LOSS_CHART)
    return [p for p in written if p is not None]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=ROOT / "bench" / "results",
                        help="folder of the benchmarks' JSON; the PNGs are written there")
    parser.add_argument("--runs", default=ROOT / "runs" / "bench",
                        help="folder of the benchmark targets' training runs")
    args = parser.parse_args(argv)
    if not pathlib.Path(args.results).is_dir():
        parser.error(f"--results {args.results} is not a folder")
    for path in redraw(args.results, args.runs):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
