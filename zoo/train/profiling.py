"""`zoo-train --profile-steps A:B`: a `jax.profiler` trace of training steps A to B (inclusive,
numbered like the logged steps: step k is the k-th update), written where TensorBoard's profile
plugin looks for it: `<run>/tensorboard/plugins/profile/<time>/<host>.xplane.pb`.

The trace starts before step A is dispatched and stops once step B's results are ready: the host
runs ahead of the devices, so stopping right after dispatching B would cut B off. Only process 0
traces (the processes of one machine, as under `launch/local_pod.py`, would write the same file).
"""

import jax
from etils import epath

from zoo.config import ConfigError


def check_steps(steps: tuple[int, int] | None, train_steps: int) -> None:
    """Raise ConfigError unless 1 <= A <= B <= train.steps."""
    if steps is not None and not 1 <= steps[0] <= steps[1] <= train_steps:
        raise ConfigError(f"--profile-steps {steps[0]}:{steps[1]}: want 1 <= A <= B <= "
                          f"train.steps={train_steps} (steps count from 1)")


class StepProfiler:
    """Traces `steps` (A, B) into `log_dir`; `before(step)`/`after(step, outputs)` bracket each
    step. On exit, a trace still running (the run stopped before B) is stopped and written."""

    def __init__(self, steps: tuple[int, int] | None, log_dir: epath.Path):
        self.steps = steps if jax.process_index() == 0 else None
        self.log_dir = log_dir
        self.tracing = False

    def before(self, step: int) -> None:
        if self.steps and not self.tracing and self.steps[0] <= step <= self.steps[1]:
            jax.profiler.start_trace(str(self.log_dir))  # a resumed run may start inside A..B
            self.tracing = True

    def after(self, step: int, outputs) -> None:
        if self.tracing and step == self.steps[1]:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
