"""zoo-train: train a model from an experiment YAML, with `section.key=value` overrides.

    zoo-train --config configs/experiments/code_small.yaml train.steps=200 [--resume]

A resumed run keeps the checkpoint's train.steps and learning-rate schedule unless given
--allow-schedule-change. SIGTERM checkpoints and exits (every process at the same step).

Metrics go to <run_dir>/metrics.jsonl and, as TensorBoard scalars (train/loss, train/grad_norm,
train/learning_rate, train/tokens_per_s, val/loss, val/bits_per_byte, ...), to
<run_dir>/tensorboard: `tensorboard --logdir <run_dir>/tensorboard`, where --profile-steps
traces also open (the Profile tab).

Every process of a multi-host run (a TPU pod slice, `launch/local_pod.py`) runs the same
command with --distributed.
"""

import argparse
import sys

from zoo import config as config_lib


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="zoo-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML file")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.d_model=256")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in train.run_dir")
    parser.add_argument("--allow-schedule-change", action="store_true",
                        help="with --resume: continue under train.steps or learning-rate "
                             "settings other than the checkpoint's (refused otherwise)")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="checkpoint and stop at this step (as a preemption would)")
    parser.add_argument("--profile-steps", type=parse_steps, default=None, metavar="A:B",
                        help="write a jax.profiler trace of train steps A to B (from 1, "
                             "inclusive) to <run_dir>/tensorboard (TensorBoard's Profile tab)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the parameter count and per-device memory of params, "
                             "optimizer state and activations on the config's mesh; train nothing")
    parser.add_argument("--devices", type=int, default=None,
                        help="with --dry-run: size for a mesh of this many devices that need "
                             "not exist (e.g. a 256-chip pod, from a laptop): exact params and "
                             "optimizer bytes, activations estimated; nothing compiles")
    parser.add_argument("--distributed", action="store_true",
                        help="one process of a multi-host run: join the others first "
                             "(jax.distributed; see launch/local_pod.py and launch/tpu)")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after flags
    try:
        config = config_lib.load(args.config, args.overrides)
    except config_lib.ConfigError as e:
        print(f"zoo-train: config error: {e}", file=sys.stderr)
        return 2

    if args.devices is not None and (not args.dry_run or args.devices < 1):
        parser.error("--devices N (N >= 1) sizes a mesh of N devices with --dry-run")
    if args.distributed:
        from zoo.parallel import initialize_distributed
        initialize_distributed()
    if args.dry_run:
        return dry_run(config, args.devices)
    from zoo.parallel import ShardingError  # heavy imports after validation
    from zoo.train.loop import NonFiniteLossError, ResumeError, format_metrics, train

    print(f"zoo-train: {config.name} -> {config.train.run_dir}", flush=True)
    try:
        result = train(config, resume=args.resume, stop_at=args.stop_at,
                       progress=not args.no_progress,
                       allow_schedule_change=args.allow_schedule_change,
                       profile_steps=args.profile_steps)
    except (FileNotFoundError, config_lib.ConfigError, ShardingError) as e:  # e.g. a bad
        # heads.target_run, or sizes that do not divide over the mesh
        print(f"zoo-train: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, FileExistsError, ResumeError) as e:
        print(f"zoo-train: {e}", file=sys.stderr)
        return 1
    last = result.evals[-1] if result.evals else {}
    print(f"zoo-train: stopped at step {result.step}"
          + (" (SIGTERM)" if result.interrupted else "")
          + (f", {format_metrics(last)}" if last else ""), flush=True)
    return 0


def parse_steps(text: str) -> tuple[int, int]:
    """'A:B' -> (A, B), the type of --profile-steps (argparse names the flag); the range is
    checked against train.steps by zoo.train.profiling.check_steps."""
    first, _, last = text.partition(":")
    try:
        return int(first), int(last)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not A:B, two step numbers") from None


def dry_run(config, devices: int | None = None) -> int:
    from zoo.parallel import ShardingError
    from zoo.train import sizing

    try:
        result = sizing.size(config, devices=devices)
    except (ShardingError, FileNotFoundError, config_lib.ConfigError) as e:  # e.g. a tokenizer
        # larger than the model
        print(f"zoo-train: {e}", file=sys.stderr)
        return 2
    print(sizing.report(config, result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
