"""Multi-host training on one machine: `launch/local_pod.py` starts 2 `zoo-train --distributed`
processes of 2 simulated CPU devices each, joined by jax.distributed over 127.0.0.1, the
parameters split over all 4 devices (fsdp 2 within a process x 2 across processes, the processes
standing in for the slices of a multi-slice pod) and each process reading its own half of every
batch. Their losses equal a single-process, single-device run, and checkpoints move between the
two setups (each restore reshards onto the other mesh)."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from zoo.checkpoint import Checkpointer
from zoo.data.packing import load_token_stream
from zoo.runs import load_run
from zoo.train.loop import train

from conftest import REPO

STEPS = ["train.steps=6", "train.checkpoint_every=3", "train.eval_every=3", "train.log_every=1"]
POD_MESH = ["mesh.data=1", "mesh.fsdp=2", "mesh.dcn_fsdp=2"]  # fsdp=4 across the 2 processes


def pod_command(data_dir, run_dir, *args) -> list[str]:
    return [sys.executable, "-m", "launch.local_pod", "2", "--devices-per-process", "2",
            "--", "--no-progress", "--config", "configs/experiments/tiny.yaml", *STEPS,
            *POD_MESH, f"data.data_dir={data_dir}", f"train.run_dir={run_dir}", *args]


def local_pod(data_dir, run_dir, *args):
    done = subprocess.run(pod_command(data_dir, run_dir, *args), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def logged_losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def assert_same_run(losses: dict, want: dict, run_dir, want_dir):
    assert sorted(losses) == sorted(want) == list(range(1, max(want) + 1))
    np.testing.assert_allclose([losses[s] for s in want], list(want.values()), atol=2e-5)
    _, params = load_run(run_dir)
    _, want_params = load_run(want_dir)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4), params, want_params)


def test_two_processes_train_and_checkpoint_like_one(tiny_experiment, data_dir, tmp_path):
    one = tmp_path / "one"
    straight = train(tiny_experiment(*STEPS, f"train.run_dir={one}"), progress=False)

    # 2 processes train 3 steps and checkpoint; 1 process (1 device) resumes to step 6.
    two = tmp_path / "two"
    done = local_pod(data_dir, two, "--stop-at", "3")
    assert "stopped at step 3" in done.stdout
    assert "dcn_fsdp: 2" in (two / "config.yaml").read_text()  # the pod's config, recorded
    resumed = train(tiny_experiment(*STEPS, f"train.run_dir={two}"), resume=True, progress=False)
    assert_same_run({**logged_losses(two), **resumed.losses}, straight.losses, two, one)

    # 1 process trains 3 steps; 2 processes resume to step 6.
    three = tmp_path / "three"
    train(tiny_experiment(*STEPS, f"train.run_dir={three}"), stop_at=3, progress=False)
    local_pod(data_dir, three, "--resume")
    assert_same_run(logged_losses(three), straight.losses, three, one)


def _process(launcher_pid: int, index: int) -> int:
    """The pid of the launcher's child with ZOO_PROCESS_ID=index."""
    children = pathlib.Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text()
    for pid in map(int, children.split()):
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"ZOO_PROCESS_ID={index}".encode() in environ:
            return pid
    raise AssertionError(f"no process {index} among {children}")


def test_sigterm_on_one_process_stops_both_at_one_step(tiny_experiment, data_dir, tmp_path):
    """Only process 1 is preempted (SIGTERM): both processes checkpoint the same step and exit 0
    (a process stopping on its own would leave the other waiting in a collective), and the run
    resumes to the uninterrupted run's losses."""
    run, long = tmp_path / "pod", ["train.steps=1000", "train.checkpoint_every=1000"]

    def config(run_dir):
        return tiny_experiment(*STEPS, *long, f"train.run_dir={run_dir}")

    load_token_stream(config(run).data.corpus, data_dir, "train")  # built here, not by both
    pod = subprocess.Popen(pod_command(data_dir, run, *long), cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        metrics = run / "metrics.jsonl"
        while not metrics.exists() or len(metrics.read_text().splitlines()) < 3:
            assert pod.poll() is None, pod.communicate()[0][-4000:]
            time.sleep(0.2)
        os.kill(_process(pod.pid, 1), signal.SIGTERM)
        out, _ = pod.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        for index in (0, 1):
            os.kill(_process(pod.pid, index), signal.SIGKILL)
        pytest.fail("the processes hung after SIGTERM: " + pod.communicate()[0][-4000:])
    assert pod.returncode == 0, out[-4000:]
    stops = re.findall(r"stopped at step (\d+) \(SIGTERM\)", out)
    assert len(stops) == 2 and stops[0] == stops[1], out[-4000:]
    step = int(stops[0])
    assert Checkpointer(run / "checkpoints").all_steps() == [step]

    resumed = train(config(run), resume=True, stop_at=step + 2, progress=False)
    straight = train(config(tmp_path / "one"), stop_at=step + 2, progress=False)
    assert_same_run({**logged_losses(run), **resumed.losses}, straight.losses, run,
                    tmp_path / "one")
