import json
import re
import shutil
import struct

import pytest
from tensorboardX.proto import event_pb2

from launch.train import main as train_cli
from zoo.checkpoint import Checkpointer
from zoo.train.loop import train
from zoo.train.metrics import tensorboard_tag

from conftest import REPO


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under `logdir` by tag, in order, as TensorBoard shows
    them (no `tensorboard` package here): a file's purge step (a SessionLog START event) hides
    what earlier files logged at that step or later. Events are TFRecords: u64 length, u32 CRC,
    the Event proto, u32 CRC."""
    scalars = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):  # named by creation time
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
            i += 16 + length
            if event.session_log.status == event_pb2.SessionLog.START:
                scalars = {tag: [(s, v) for s, v in logged if s < event.step]
                           for tag, logged in scalars.items()}
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_scalars_match_metrics_jsonl_across_a_crash_and_profile(tiny_experiment,
                                                                         monkeypatch):
    """Each metrics.jsonl value is a TensorBoard scalar at its step, on disk before any
    checkpoint of that step. A run that crashed after logging steps 5-6 but before checkpointing
    step 6 resumes from 4 and logs 5-6 again: TensorBoard shows each step once, this run's value.
    --profile-steps writes an xplane trace where TensorBoard's profile plugin looks."""
    cfg = tiny_experiment("train.steps=6", "train.log_every=1", "train.eval_every=3",
                          "train.checkpoint_every=4", "train.warmup_steps=2")
    run = REPO / cfg.train.run_dir
    on_disk, save = {}, Checkpointer.save

    def checking_save(self, step, *args):
        on_disk[step] = [s for s, _ in read_scalars(run / "tensorboard").get("train/loss", [])]
        save(self, step, *args)

    monkeypatch.setattr(Checkpointer, "save", checking_save)
    train(cfg, progress=False, profile_steps=(2, 3))
    assert on_disk == {4: [1, 2, 3, 4], 6: [1, 2, 3, 4, 5, 6]}
    [trace] = (run / "tensorboard/plugins/profile").glob("*/*.xplane.pb")
    assert b"jit_train_step" in trace.read_bytes()
    shutil.rmtree(run / "checkpoints/6")  # the crash: step 6 logged, never checkpointed
    train(cfg, resume=True, progress=False)

    latest = {}  # (tag, step) -> the last value metrics.jsonl holds
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        step = record.pop("step")
        for key, value in record.items():
            latest[tensorboard_tag(key), step] = value
    assert {tag for tag, _ in latest} == {
        "train/loss", "train/grad_norm", "train/learning_rate", "train/tokens_per_s",
        "val/loss", "val/bits_per_byte"}
    scalars = read_scalars(run / "tensorboard")
    assert set(scalars) == {tag for tag, _ in latest}
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in scalars["val/bits_per_byte"]] == [3, 6]
    for tag, logged in scalars.items():
        for step, value in logged:
            assert value == pytest.approx(latest[tag, step], rel=1e-6), (tag, step)


@pytest.mark.parametrize("steps, message", [
    ("2", "argument --profile-steps: '2' is not A:B"),
    ("a:3", "argument --profile-steps: 'a:3' is not A:B"),
    ("3:2", "--profile-steps 3:2: want 1 <= A <= B <= train.steps=6"),
    ("0:2", "--profile-steps 0:2: want 1 <= A"),
    ("2:7", "--profile-steps 2:7: want .* <= train.steps=6")])
def test_bad_profile_steps_are_refused_before_any_work(steps, message, data_dir, tmp_path,
                                                        capsys):
    args = ["--config", str(REPO / "configs/experiments/tiny.yaml"), f"data.data_dir={data_dir}",
            f"train.run_dir={tmp_path / 'run'}", "train.steps=6", "--profile-steps", steps]
    try:
        code = train_cli(args)
    except SystemExit as exit:  # argparse
        code = exit.code
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()
