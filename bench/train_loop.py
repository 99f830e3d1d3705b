"""Training-loop throughput (steps/s) of this tree against an earlier commit, on the same configs:
what the loop itself costs around the jitted step (batch assembly, host transfers, waiting on
metrics), since both run the same step.

    python bench/train_loop.py --before <commit> [--after <commit>] [--configs tiny code_small]

Each commit is checked out in a temporary git worktree and imported through PYTHONPATH (so
uncommitted edits elsewhere do not count); each run is its own process, before and after
alternating. Steps/s is the loop's own tokens/s of
each log window (wall time from one metrics fetch to the next, validation excluded) over the
tokens of a step, the first window (compilation) left out; the table gives medians over windows
and repeats, and the after/before ratio of those medians.
"""

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from common import machine, markdown_table, write_result

REPO = pathlib.Path(__file__).resolve().parent.parent
SETTINGS = {  # config -> (steps, log_every): windows of >= a second or so on 2 CPU cores
    "tiny": (300, 25),
    "code_small": (36, 4),
}

WORKER = r"""
import json, sys
from zoo import config as config_lib
from zoo.train.loop import train

path, run_dir, steps, log_every = sys.argv[1:]
config = config_lib.load(path, [f"train.run_dir={run_dir}", f"train.steps={steps}",
                                f"train.log_every={log_every}", "train.eval_every=100000",
                                "train.checkpoint_every=100000", "train.warmup_steps=1"])
train(config, progress=False)
rows = [json.loads(l) for l in open(f"{run_dir}/metrics.jsonl") if '"loss"' in l]
tokens = config.data.batch_size * config.data.seq_len
print(json.dumps([r["tokens_per_s"] / tokens for r in rows if r["step"] > int(log_every)]))
"""


@contextlib.contextmanager
def worktree(rev: str):
    """A detached checkout of `rev` in a temporary directory (removed afterwards)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO,
                       check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO,
                           check=True)


def steps_per_s(tree: pathlib.Path, config: str) -> list[float]:
    steps, log_every = SETTINGS[config]
    with tempfile.TemporaryDirectory() as run_dir:
        done = subprocess.run(
            [sys.executable, "-c", WORKER, str(tree / f"configs/experiments/{config}.yaml"),
             run_dir, str(steps), str(log_every)],
            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu"},
            capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the commit to compare against")
    parser.add_argument("--after", default="HEAD", help="the commit measured against it")
    parser.add_argument("--configs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    before_rev, after_rev = (subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO,
                                            check=True, capture_output=True,
                                            text=True).stdout.strip()
                             for rev in (args.before, args.after))
    results = {}
    with worktree(before_rev) as before_tree, worktree(after_rev) as after_tree:
        for config in args.configs:
            runs = {"before": [], "after": []}
            for _ in range(args.repeats):
                runs["before"].append(steps_per_s(before_tree, config))
                runs["after"].append(steps_per_s(after_tree, config))
            results[config] = {
                label: {"median": statistics.median(s for r in rs for s in r), "windows": rs}
                for label, rs in runs.items()}
            print(config, {k: round(v["median"], 3) for k, v in results[config].items()},
                  flush=True)
    def runs(r):  # each run's median, to show the spread between runs
        return " / ".join(f"{statistics.median(w):.2f}" for w in r["windows"])

    rows = [[config, f"{steps} (log every {log_every})", f"{r['before']['median']:.2f}",
             f"{r['after']['median']:.2f}", f"{r['after']['median'] / r['before']['median']:.2f}x",
             runs(r["before"]), runs(r["after"])]
            for config, r in results.items() for steps, log_every in [SETTINGS[config]]]
    table = (f"Training-loop steps/s, before = {before_rev}, after = {after_rev}: medians over "
             f"the log windows of {args.repeats} alternating runs each\n\n"
             + markdown_table(["config", "steps", "before", "after", "after / before",
                               "before, each run", "after, each run"], rows))
    print(table)
    write_result("train_loop", {"machine": machine(), "before": before_rev, "after": after_rev,
                                "settings": SETTINGS, "results": results}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
