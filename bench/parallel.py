"""Sharded training on 1 vs 8 simulated CPU devices at the same global batch: training tokens/s,
per-device memory (params, optimizer state, compiled-step temporaries) and checkpoint save /
restore time (synchronous, median of 3).

    python bench/parallel.py [--config configs/experiments/code_small.yaml] [--steps 10]

Each mesh runs in its own process (the device count is fixed when jax starts). On this 2-core
CPU, 8 simulated devices share the same two cores, so the tokens/s column shows the cost of
partitioning and collectives, not a speedup; the memory columns are what each device would hold.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

MESHES = [  # (label, devices, overrides)
    ("1 device", 1, ["mesh.data=1"]),
    ("data=8", 8, ["mesh.data=8"]),
    ("fsdp=8", 8, ["mesh.data=1", "mesh.fsdp=8"]),
    ("data=2 fsdp=2 tensor=2", 8, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]),
]

WORKER = r"""
import json, sys, time, statistics
import jax, numpy as np
from zoo import config as config_lib
from zoo.checkpoint import Checkpointer
from zoo.train import sizing
from zoo.train.loop import build_objective, global_batch, sharded_setup
from zoo.parallel import Layout
from zoo.train.optimizer import learning_rate_schedule, make_optimizer

config_path, steps, ckpt_dir, *overrides = sys.argv[1:]
config = config_lib.load(config_path, overrides)
sizes = sizing.size(config)
layout = Layout.from_config(config.mesh)
objective = build_objective(config, layout)
tx = make_optimizer(config.train)
shardings, make_state = sharded_setup(config, objective, tx, layout)
state = make_state()
step = objective.make_train_step(tx, learning_rate_schedule(config.train), shardings)
dc = config.data
rng = np.random.default_rng(0)
def batch():
    t = rng.integers(0, 256, (dc.batch_size, dc.seq_len + 1), dtype=np.int32)
    return global_batch({"inputs": t[:, :-1], "targets": t[:, 1:]}, shardings.batch)
for _ in range(2):  # compile and warm up
    state, m = step(state, batch())
jax.block_until_ready(state)
times = []
for _ in range(int(steps)):
    b = batch()
    start = time.perf_counter()
    state, m = step(state, b)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
checkpointer = Checkpointer(ckpt_dir, async_save=False, keep=5)
save_times, restore_times = [], []
for k in range(1, 4):  # median of 3: the first save also pays one-time setup
    start = time.perf_counter()
    checkpointer.save(k, state, {"position": 0})
    save_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    restored, _ = checkpointer.restore(state, k)
    jax.block_until_ready(restored)
    restore_times.append(time.perf_counter() - start)
save_s, restore_s = statistics.median(save_times), statistics.median(restore_times)
checkpointer.close()
print(json.dumps({"step_s": statistics.median(times),
                  "tokens_per_s": dc.batch_size * dc.seq_len / statistics.median(times),
                  "params_mib": sizes.params_bytes / 2**20,
                  "optimizer_mib": sizes.optimizer_bytes / 2**20,
                  "temp_mib": (sizes.temp_bytes or 0) / 2**20,
                  "save_s": save_s, "restore_s": restore_s, "parameters": sizes.parameters}))
"""


def run_mesh(config: str, steps: int, devices: int, overrides: list[str]) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", WORKER, config, str(steps), f"{tmp}/ckpt",
                               *overrides], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/experiments/code_small.yaml")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mesh (median)")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(__file__))
    from common import machine, markdown_table, write_result

    results = {}
    for label, devices, overrides in MESHES:
        results[label] = run_mesh(args.config, args.steps, devices, overrides)
        print(label, results[label], flush=True)
    base = results["1 device"]["tokens_per_s"]
    rows = [[label, devices, f"{r['tokens_per_s']:,.0f}", f"{r['tokens_per_s'] / base:.2f}x",
             f"{r['params_mib']:.2f}", f"{r['optimizer_mib']:.2f}", f"{r['temp_mib']:.1f}",
             f"{r['save_s']:.2f}", f"{r['restore_s']:.2f}"]
            for (label, devices, _), r in zip(MESHES, results.values())]
    table = markdown_table(["mesh", "devices", "train tokens/s", "vs 1 device",
                            "params MiB/device", "optimizer MiB/device", "step temp MiB/device",
                            "save s", "restore s"], rows)
    print(table)
    write_result("parallel", {"config": args.config, "machine": machine(), "results": results},
                 table)


if __name__ == "__main__":
    main()
