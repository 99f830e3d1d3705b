"""What one target step costs per tree size: the number `--tree auto` weighs against acceptance.

    python bench/extend_cost.py            # transformer, Mamba2, hybrid (code_* sizes), batch 1
    python bench/extend_cost.py --batches 1 16

For each model (random weights: the cost does not depend on them) and batch, the seconds of one
target step (extend of a T-node chain + verification + commit, run in a jitted loop as the
speculative engine runs it; `zoo.decode.calibration.extend_costs`) for T = 1, 4, 8, 16, and each
relative to T = 1, the plain decode step. A 96-token prompt fills the cache.
Writes bench/results/extend_cost.{json,md}.
"""

import argparse
import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, markdown_table, write_result  # noqa: E402

from zoo import config as config_lib  # noqa: E402
from zoo.decode.calibration import extend_costs  # noqa: E402
from zoo.models import build_model  # noqa: E402

MODELS = {"transformer": "configs/experiments/code_ref.yaml",  # the speculative bench targets
          "mamba2": "configs/experiments/code_mamba.yaml",
          "hybrid": "configs/experiments/code_hybrid.yaml"}
SIZES = (1, 4, 8, 16)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    rows, raw = [], []
    for name, path in MODELS.items():
        model = build_model(config_lib.load(path).model)
        params = model.init(jax.random.key(0))
        for batch in args.batches:
            prompts = [[(7 * i + j) % 250 + 3 for j in range(96)] for i in range(batch)]
            costs = extend_costs(model, params, prompts, SIZES, repeats=args.repeats)
            raw.append(dict(model=name, batch=batch, seconds=costs))
            rows.append([name, batch, f"{costs[1] * 1e3:.2f}"]
                        + [f"{costs[t] / costs[1]:.2f}x" for t in SIZES[1:]])
            print(" | ".join(map(str, rows[-1])), flush=True)
    headers = ["model", "batch", "T = 1 step (ms)"] + [f"T = {t} / T = 1" for t in SIZES[1:]]
    table = markdown_table(headers, rows)
    print(table)
    write_result("extend_cost", {"machine": machine(), "rows": raw}, table)


if __name__ == "__main__":
    main()
