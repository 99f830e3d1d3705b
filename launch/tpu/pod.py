"""zoo-tpu: run zoo-train on a Cloud TPU VM or pod slice through gcloud.

    zoo-tpu up --name my-tpu --zone us-west4-a --config configs/experiments/code_small.yaml \\
        train.run_dir=gs://my-bucket/code_small     # create + install + train
    zoo-tpu logs --name my-tpu --zone us-west4-a     # follow worker 0's train.log
    zoo-tpu stop --name my-tpu --zone us-west4-a     # SIGTERM: checkpoint, then exit
    zoo-tpu delete --name my-tpu --zone us-west4-a
    zoo-tpu status --name my-tpu --zone us-west4-a --resume-if-preempted \\
        --config configs/experiments/code_small.yaml train.run_dir=gs://my-bucket/code_small

Training always runs with --resume, so running `train` (or `up`) again after a stop or a
preemption continues from the latest checkpoint. Every subcommand takes --dry-run: print the
commands, one shell line each, and run nothing. `up` first sizes the config on the slice's
chips (`zoo-train --dry-run --devices N`, on stderr, in seconds and without the chips), so a
config that does not divide over the slice is refused before a slice is created.
"""

import argparse
import pathlib
import shlex
import subprocess
import sys
import tempfile
from typing import NamedTuple

ACCELERATOR = "v5litepod-8"          # TPU v5e, 8 chips, one worker
RUNTIME = "v2-alpha-tpuv5-lite"      # the TPU VM image for v5e
JAX_TPU = "jax[tpu]>=0.10.2,<0.11"   # the jax range of setup.py (tests/test_tpu_launch.py checks)
REPO = pathlib.Path(__file__).resolve().parents[2]
REMOTE_DIR = "~/zoo"
REMOTE_ARCHIVE = "zoo.tar.gz"        # relative to the remote home directory
LOG = "~/zoo/train.log"
# "[z]oo-train" matches zoo-train's command line but not the remote shell's own (which holds the
# pattern itself), so pkill/pgrep never signal or wait for the shell that runs them.
PATTERN = '"[z]oo-train"'


class Step(NamedTuple):
    name: str        # named in progress and error messages
    argv: list[str]


class StepFailed(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Slice:
    """gcloud command lines for one TPU VM / pod slice."""

    def __init__(self, args: argparse.Namespace):
        self.gcloud, self.name, self.zone, self.project = (args.gcloud, args.name, args.zone,
                                                           args.project)

    def tpu_vm(self, verb: str, *words: str, extra: tuple[str, ...] = ()) -> list[str]:
        project = ["--project", self.project] if self.project else []
        return [self.gcloud, "compute", "tpus", "tpu-vm", verb, *words, "--zone", self.zone,
                *extra, *project]

    def ssh(self, command: str, worker: str = "all") -> list[str]:
        return self.tpu_vm("ssh", self.name, f"--worker={worker}", extra=("--command", command))


# TPU types name v2/v3/v4/v5p slices by TensorCores (two per chip) and v5e/v6e slices by chips.
# JAX has a device per core on v2/v3 and per chip from v4 on (v4/v5p "megacore" joins a chip's two
# cores), so its device count is the number in the name except on v4 and v5p, where it is half.
HALVED_TPU_NAMES = ("v4", "v5p")


def tpu_devices(accelerator_type: str) -> int:
    """JAX devices of a TPU type, e.g. v5litepod-64 -> 64, v5p-512 -> 256, v4-8 -> 4."""
    generation, _, count = accelerator_type.rpartition("-")
    if not generation or not count.isdigit() or int(count) < 1:
        raise ValueError(f"--accelerator-type {accelerator_type!r}: expected a TPU type like "
                         "v5litepod-8, v5p-512 or v6e-256")
    return int(count) // (2 if generation in HALVED_TPU_NAMES else 1)


def size_on_slice(args) -> None:
    """Print (stderr) what the config needs per chip of the slice; SizingFailed if it cannot run
    there (a dimension that does not divide, a bad config)."""
    from zoo import config as config_lib  # jax comes with sizing: only for `up`
    from zoo.train import sizing

    try:
        devices = tpu_devices(args.accelerator_type)
        config = config_lib.load(args.config, args.overrides)
        report = sizing.report(config, sizing.size(config, devices=devices))
    except (ValueError, FileNotFoundError) as e:  # ConfigError and ShardingError among them
        raise StepFailed(f"sizing {args.config} on {args.accelerator_type}: {e}", 2) from None
    print("\n".join(f"# {line}" for line in report.splitlines()), file=sys.stderr, flush=True)


def archive_path(name: str) -> pathlib.Path:
    return pathlib.Path(tempfile.gettempdir()) / f"zoo-{name}.tar.gz"


def create_steps(args) -> list[Step]:
    spot = ("--spot",) if args.spot else ()
    return [Step("create", Slice(args).tpu_vm(
        "create", args.name, extra=("--accelerator-type", args.accelerator_type,
                                    "--version", args.version, *spot)))]


def install_steps(args) -> list[Step]:
    """Ship the committed tree (git archive HEAD) to every worker and pip-install it there, with
    gcsfs, through which orbax and the loop write a gs:// run directory."""
    tpu, archive = Slice(args), str(archive_path(args.name))
    remote = (f"mkdir -p {REMOTE_DIR} && tar -xzf {REMOTE_ARCHIVE} -C {REMOTE_DIR} && "
              f'python3 -m pip install --quiet -e {REMOTE_DIR} "{JAX_TPU}" gcsfs')
    return [
        Step("install: pack the repository",
             ["git", "-C", str(REPO), "archive", "--format=tar.gz", "-o", archive, "HEAD"]),
        Step("install: copy to the workers",
             tpu.tpu_vm("scp", archive, f"{args.name}:{REMOTE_ARCHIVE}", "--worker=all")),
        Step("install: pip install on the workers", tpu.ssh(remote)),
    ]


def train_steps(args) -> list[Step]:
    """Start zoo-train on every worker in the background; its output goes to ~/zoo/train.log.
    --distributed joins the workers into one JAX job; --resume continues the latest checkpoint
    if there is one (else starts fresh), which is what makes a rerun after preemption resume."""
    zoo_train = shlex.join(["zoo-train", "--distributed", "--resume", "--no-progress",
                            "--config", args.config, *args.overrides])
    # `nohup ... < /dev/null &` with every stream redirected lets the ssh session end at once;
    # pip's --user installs put zoo-train in ~/.local/bin, not on a non-login shell's PATH.
    remote = (f'cd {REMOTE_DIR} || exit 1; export PATH="$HOME/.local/bin:$PATH"; '
              f"nohup {zoo_train} >> {LOG} 2>&1 < /dev/null &")
    return [Step("train", Slice(args).ssh(remote))]


def up_steps(args) -> list[Step]:
    size_on_slice(args)
    return create_steps(args) + install_steps(args) + train_steps(args)


def logs_steps(args) -> list[Step]:
    return [Step("logs", Slice(args).ssh(f"tail -n +1 -F {LOG}", worker=args.worker))]


def stop_steps(args) -> list[Step]:
    """SIGTERM every worker's zoo-train (it saves a checkpoint and exits), then wait until they
    have exited, so that a `delete` right after cannot cut the save short."""
    remote = (f'pkill -TERM -f {PATTERN} || echo "no training process running"; '
              f"while pgrep -f {PATTERN} > /dev/null; do sleep 1; done")
    return [Step("stop", Slice(args).ssh(remote))]


def delete_steps(args) -> list[Step]:
    return [Step("delete", Slice(args).tpu_vm("delete", args.name, extra=("--quiet",)))]


def describe_step(args) -> Step:
    return Step("status", Slice(args).tpu_vm("describe", args.name,
                                             extra=("--format", "value(state)")))


def call(step: Step, capture: bool = False) -> str:
    """Run one step (its stdout returned when `capture`); StepFailed names the step."""
    print(f"zoo-tpu: {step.name}: {shlex.join(step.argv)}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(step.argv, check=True, text=True, capture_output=capture)
    except FileNotFoundError:
        raise StepFailed(f"step '{step.name}' failed: {step.argv[0]!r} not found (install the "
                         "Google Cloud CLI or pass --gcloud)", 127) from None
    except subprocess.CalledProcessError as e:
        detail = f": {e.stderr.strip()}" if capture and e.stderr and e.stderr.strip() else ""
        raise StepFailed(f"step '{step.name}' failed (exit {e.returncode}){detail}",
                         e.returncode if e.returncode > 0 else 1) from None
    return done.stdout if capture else ""


def run_steps(steps: list[Step], dry_run: bool) -> None:
    for step in steps:
        if dry_run:
            print(shlex.join(step.argv))
        else:
            call(step)


def status(args) -> None:
    """Print the slice's state; with --resume-if-preempted, a PREEMPTED slice is deleted and
    brought `up` again, and training resumes from the run's latest checkpoint."""
    describe = describe_step(args)
    if args.dry_run:
        print(shlex.join(describe.argv))
        if args.resume_if_preempted:
            print("# if the state is PREEMPTED:")
            run_steps(delete_steps(args) + up_steps(args), dry_run=True)
        return
    state = call(describe, capture=True).strip()
    print(state)
    if args.resume_if_preempted and state == "PREEMPTED":
        print("zoo-tpu: the slice was preempted: recreating it and resuming training",
              file=sys.stderr)
        run_steps(delete_steps(args) + up_steps(args), dry_run=False)


def warn_run_dir(overrides: list[str]) -> None:
    if not any(o.startswith("train.run_dir=gs://") for o in overrides):
        print("zoo-tpu: warning: no train.run_dir=gs://... override: on a slice with more than "
              "one worker every worker must see the same run directory (a GCS bucket), and the "
              "checkpoints are lost with the VM otherwise", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="TPU VM / slice name")
    common.add_argument("--zone", required=True, help="e.g. us-west4-a")
    common.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    common.add_argument("--dry-run", action="store_true",
                        help="print the commands, one shell line each, and run nothing")
    common.add_argument("--gcloud", default="gcloud", help="gcloud executable")

    create = argparse.ArgumentParser(add_help=False)
    create.add_argument("--accelerator-type", default=ACCELERATOR,
                        help=f"TPU type, e.g. v5litepod-16 for 4 workers (default {ACCELERATOR})")
    create.add_argument("--version", default=RUNTIME,
                        help=f"TPU VM runtime version (default {RUNTIME})")
    create.add_argument("--spot", action="store_true", help="a Spot (preemptible) slice")

    def training(config_required: bool) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--config", required=config_required,
                            help="experiment YAML, relative to the repository root")
        parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                            help="zoo-train overrides, after the flags; on a multi-worker slice "
                                 "include train.run_dir=gs://BUCKET/RUN")
        return parser

    parser = argparse.ArgumentParser(prog="zoo-tpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("create", parents=[common, create], help="create the TPU VM / slice")
    sub.add_parser("install", parents=[common],
                   help="copy the committed repository (git HEAD) to every worker, pip-install it")
    sub.add_parser("train", parents=[common, training(True)],
                   help="start zoo-train on every worker (resumes the latest checkpoint)")
    sub.add_parser("up", parents=[common, create, training(True)],
                   help="create + install + train")
    logs = sub.add_parser("logs", parents=[common], help="follow a worker's train.log")
    logs.add_argument("--worker", default="0", help="worker index (default 0)")
    sub.add_parser("stop", parents=[common],
                   help="SIGTERM zoo-train on every worker (checkpoint, then exit) and wait")
    sub.add_parser("delete", parents=[common], help="delete the TPU VM / slice")
    status_parser = sub.add_parser("status", parents=[common, create, training(False)],
                                   help="print the state (READY, PREEMPTED, ...)")
    status_parser.add_argument("--resume-if-preempted", action="store_true",
                               help="if PREEMPTED: delete, then up (needs --config)")
    return parser


STEPS = {"create": create_steps, "install": install_steps, "train": train_steps,
         "up": up_steps, "logs": logs_steps, "stop": stop_steps, "delete": delete_steps}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "status" and args.resume_if_preempted and not args.config:
        parser.error("status --resume-if-preempted needs --config (to bring the slice up again)")
    if getattr(args, "config", None):
        warn_run_dir(args.overrides)
    try:
        if args.command == "status":
            status(args)
        else:
            run_steps(STEPS[args.command](args), args.dry_run)
    except StepFailed as e:
        print(f"zoo-tpu: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:  # e.g. leaving `logs`
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
