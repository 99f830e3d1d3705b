"""Where a run's logged metrics go: `metrics.jsonl` (one JSON record a line, read by
`zoo.plots` and the benchmarks) and, the same values, TensorBoard scalars in `<run>/tensorboard/`.

A record is `{"step": k, name: value, ...}`; its `val_*` values become TensorBoard tags
`val/*` (`val/loss`, `val/bits_per_byte`), the others `train/*` (`train/loss`,
`train/learning_rate`, `train/grad_norm`, `train/tokens_per_s`). Only process 0 writes.

Events are written with tensorboardX's `EventsWriter` (no TensorFlow) rather than its
`SummaryWriter`, which queues events for a thread and whose `flush()` leaves the queue unwritten:
here `flush()` (before each checkpoint) and `close()` (at exit, error or SIGTERM) put everything
logged so far on disk. A resumed run adds an event file whose purge event hides whatever earlier
runs logged past the checkpoint it resumes from (steps a crash lost and this run logs again).
"""

import json
import time

import jax
from etils import epath
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.record_writer import directory_check

TENSORBOARD_DIR = "tensorboard"  # under the run directory: `tensorboard --logdir <run>/tensorboard`


def tensorboard_tag(key: str) -> str:
    """`val_loss` -> `val/loss`; `loss` -> `train/loss`."""
    return "val/" + key.removeprefix("val_") if key.startswith("val_") else "train/" + key


class MetricsWriter:
    """Appends records to `<run_dir>/metrics.jsonl` and to TensorBoard; a no-op off process 0.
    `resumed_from`: the step the run continues after (None for a fresh run)."""

    def __init__(self, run_dir: epath.Path, resumed_from: int | None = None):
        self._active = jax.process_index() == 0
        self.jsonl = run_dir / "metrics.jsonl"
        self.tensorboard_dir = run_dir / TENSORBOARD_DIR
        if not self._active:
            return
        directory_check(str(self.tensorboard_dir))
        self._events = EventsWriter(str(self.tensorboard_dir / "events"))
        if resumed_from is not None:  # TensorBoard drops earlier files' events from here on
            self._events.write_event(Event(wall_time=time.time(), step=resumed_from + 1,
                                           session_log=SessionLog(status=SessionLog.START)))

    def write(self, record: dict) -> None:
        if not self._active:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        values = [Summary.Value(tag=tensorboard_tag(key), simple_value=value)
                  for key, value in record.items() if key != "step"]
        self._events.write_event(Event(wall_time=time.time(), step=record["step"],
                                       summary=Summary(value=values)))

    def flush(self) -> None:
        if self._active:
            self._events.flush()

    def close(self) -> None:
        if self._active:
            self._events.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
