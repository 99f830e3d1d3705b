"""zoo-train: train a model from an experiment YAML, with `section.key=value` overrides.

    zoo-train --config configs/experiments/code_small.yaml train.steps=200 [--resume]
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
    parser.add_argument("--stop-at", type=int, default=None,
                        help="checkpoint and stop at this step (as a preemption would)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after flags
    try:
        config = config_lib.load(args.config, args.overrides)
    except config_lib.ConfigError as e:
        print(f"zoo-train: config error: {e}", file=sys.stderr)
        return 2

    from zoo.train.loop import (NonFiniteLossError, ResumeError, format_metrics,  # heavy imports
                                train)  # after validation

    print(f"zoo-train: {config.name} -> {config.train.run_dir}", flush=True)
    try:
        result = train(config, resume=args.resume, stop_at=args.stop_at,
                       progress=not args.no_progress)
    except (FileNotFoundError, config_lib.ConfigError) as e:  # e.g. a bad heads.target_run
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


if __name__ == "__main__":
    sys.exit(main())
