"""Run N `zoo-train --distributed` processes on this machine, as the hosts of a pod would.

    python -m launch.local_pod 2 --devices-per-process 2 -- --config configs/experiments/tiny.yaml

Each process gets the coordinator's address (127.0.0.1, a free port), the process count and its
index through the ZOO_* variables `zoo.parallel.initialize_distributed` reads, and
`--devices-per-process` simulated CPU devices. Every process reads only its own rows of each
batch. The launcher forwards SIGTERM / SIGINT to all of them (they checkpoint and exit), stops
the rest when one fails, and exits with the first non-zero code.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from zoo.parallel import COORDINATOR_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(index: int, count: int, port: int, devices: int) -> dict[str, str]:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    values = (f"127.0.0.1:{port}", str(count), str(index))
    return {**os.environ, **dict(zip(COORDINATOR_ENV, values)), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])}


def run(count: int, train_args: list[str], devices: int = 1) -> int:
    """Start `count` processes of `zoo-train --distributed train_args`; their exit code."""
    if count < 1 or devices < 1:
        raise ValueError(f"need at least one process and one device, got {count} and {devices}")
    port = free_port()
    command = [sys.executable, "-m", "launch.train", "--distributed", *train_args]
    procs = [subprocess.Popen(command, env=process_env(i, count, port, devices))
             for i in range(count)]

    def forward(signum, frame):
        for p in procs:
            p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:  # the others would wait for it at the next collective forever
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in procs:
            p.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.local_pod", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("processes", type=int, help="number of processes (hosts)")
    parser.add_argument("--devices-per-process", type=int, default=1,
                        help="simulated CPU devices in each process")
    parser.epilog = "Everything after -- goes to zoo-train."
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    return run(args.processes, argv[split + 1:], args.devices_per_process)


if __name__ == "__main__":
    sys.exit(main())
