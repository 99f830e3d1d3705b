"""zoo-tpu without gcloud: the exact command lines of --dry-run, and the real run path against a
fake gcloud that records its arguments (order, stop at the first failure, preemption)."""

import json
import pathlib
import re
import shlex
import sys
import tarfile
import tempfile
from importlib import metadata

import pytest

from launch.tpu import pod

REPO = pathlib.Path(__file__).resolve().parent.parent
SLICE = ["--name", "my-tpu", "--zone", "us-west4-a"]
CONFIG = "configs/experiments/code_small.yaml"
GCS = "train.run_dir=gs://my-bucket/code_small"
TPU_VM = "gcloud compute tpus tpu-vm"

CREATE = (f"{TPU_VM} create my-tpu --zone us-west4-a --accelerator-type v5litepod-8 "
          "--version v2-alpha-tpuv5-lite")
INSTALL_SSH = (f"{TPU_VM} ssh my-tpu --worker=all --zone us-west4-a --command 'mkdir -p ~/zoo "
               "&& tar -xzf zoo.tar.gz -C ~/zoo && python3 -m pip install --quiet -e ~/zoo "
               "\"jax[tpu]>=0.10.2,<0.11\" gcsfs'")
TRAIN = (f"{TPU_VM} ssh my-tpu --worker=all --zone us-west4-a --command 'cd ~/zoo || exit 1; "
         "export PATH=\"$HOME/.local/bin:$PATH\"; nohup zoo-train --distributed --resume "
         f"--no-progress --config {CONFIG} {GCS} >> ~/zoo/train.log 2>&1 < /dev/null &'")


@pytest.fixture(autouse=True)
def archive_dir(tmp_path, monkeypatch):
    """The install step's tarball goes to the temporary directory: make that tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def install_lines(tmp_path) -> list[str]:
    archive = tmp_path / "zoo-my-tpu.tar.gz"
    return [f"git -C {REPO} archive --format=tar.gz -o {archive} HEAD",
            f"{TPU_VM} scp {archive} my-tpu:zoo.tar.gz --worker=all --zone us-west4-a",
            INSTALL_SSH]


def dry_run(capsys, *argv) -> list[str]:
    assert pod.main([*argv, *SLICE, "--dry-run"]) == 0
    return capsys.readouterr().out.splitlines()


def test_create(capsys):
    assert dry_run(capsys, "create") == [CREATE]
    assert dry_run(capsys, "create", "--spot", "--project", "p1", "--accelerator-type",
                   "v5litepod-16") == [
        f"{TPU_VM} create my-tpu --zone us-west4-a --accelerator-type v5litepod-16 "
        "--version v2-alpha-tpuv5-lite --spot --project p1"]


def test_install(capsys, archive_dir):
    assert dry_run(capsys, "install") == install_lines(archive_dir)


def test_train(capsys):
    assert dry_run(capsys, "train", "--config", CONFIG, GCS) == [TRAIN]


def test_train_quotes_overrides_through_both_shells(capsys):
    """An override with a space survives the local shell line and the remote shell command."""
    [line] = dry_run(capsys, "train", "--config", CONFIG, "data.corpus=my corpus", GCS)
    argv = shlex.split(line)
    remote = shlex.split(argv[argv.index("--command") + 1])
    start = remote.index("zoo-train")
    assert remote[start:remote.index(">>")] == [
        "zoo-train", "--distributed", "--resume", "--no-progress", "--config", CONFIG,
        "data.corpus=my corpus", GCS]


def test_logs(capsys):
    tail = "--command 'tail -n +1 -F ~/zoo/train.log'"
    assert dry_run(capsys, "logs") == [f"{TPU_VM} ssh my-tpu --worker=0 --zone us-west4-a {tail}"]
    assert dry_run(capsys, "logs", "--worker", "3") == [
        f"{TPU_VM} ssh my-tpu --worker=3 --zone us-west4-a {tail}"]


def test_stop(capsys):
    assert dry_run(capsys, "stop") == [
        f"{TPU_VM} ssh my-tpu --worker=all --zone us-west4-a --command 'pkill -TERM -f "
        "\"[z]oo-train\" || echo \"no training process running\"; while pgrep -f \"[z]oo-train\" "
        "> /dev/null; do sleep 1; done'"]


def test_stop_pattern_does_not_match_its_own_shell():
    """pkill/pgrep -f would otherwise see the remote shell whose command line holds the pattern
    (and wait for it forever)."""
    [step] = pod.stop_steps(pod.build_parser().parse_args(["stop", *SLICE]))
    remote = step.argv[step.argv.index("--command") + 1]
    assert re.search("[z]oo-train", "python3 /home/me/.local/bin/zoo-train --config c.yaml")
    assert not re.search("[z]oo-train", remote)


def test_delete(capsys):
    assert dry_run(capsys, "delete") == [f"{TPU_VM} delete my-tpu --zone us-west4-a --quiet"]


def test_up_is_create_install_train(capsys, archive_dir):
    assert dry_run(capsys, "up", "--config", CONFIG, GCS) == [
        CREATE, *install_lines(archive_dir), TRAIN]


def test_status_dry_run(capsys, archive_dir):
    describe = f"{TPU_VM} describe my-tpu --zone us-west4-a --format 'value(state)'"
    assert dry_run(capsys, "status") == [describe]
    assert dry_run(capsys, "status", "--resume-if-preempted", "--config", CONFIG, GCS) == [
        describe, "# if the state is PREEMPTED:",
        f"{TPU_VM} delete my-tpu --zone us-west4-a --quiet", CREATE,
        *install_lines(archive_dir), TRAIN]


def test_warns_without_a_gcs_run_dir(capsys):
    pod.main(["train", *SLICE, "--dry-run", "--config", CONFIG, "train.run_dir=runs/x"])
    assert "train.run_dir=gs://" in capsys.readouterr().err
    pod.main(["train", *SLICE, "--dry-run", "--config", CONFIG, GCS])
    assert capsys.readouterr().err == ""


def test_missing_name_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        pod.main(["create", "--zone", "us-west4-a"])
    assert e.value.code == 2 and "--name" in capsys.readouterr().err


def test_resume_if_preempted_needs_a_config(capsys):
    with pytest.raises(SystemExit) as e:
        pod.main(["status", *SLICE, "--resume-if-preempted"])
    assert e.value.code == 2 and "--config" in capsys.readouterr().err


def test_jax_tpu_range_is_setup_pys():
    setup = (REPO / "setup.py").read_text()
    [jax_range] = re.findall(r'"jax(>=[^"]+)"', setup)
    assert pod.JAX_TPU == f"jax[tpu]{jax_range}"


def test_console_script_is_registered():
    [script] = metadata.entry_points(group="console_scripts", name="zoo-tpu")
    assert script.value == "launch.tpu.pod:main"


# ---- the real run path, against a fake gcloud ----

FAKE_GCLOUD = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_CALLS"], "a") as f:
    f.write(json.dumps(args) + "\\n")
verb = args[3]  # compute tpus tpu-vm VERB
if verb == os.environ.get("FAKE_GCLOUD_FAIL"):
    print("fake gcloud: " + verb + " failed", file=sys.stderr)
    sys.exit(1)
if verb == "describe":
    print(os.environ.get("FAKE_GCLOUD_STATE", "READY"))
"""


@pytest.fixture
def gcloud(tmp_path, monkeypatch):
    """(path of a fake gcloud, function returning the verbs it was called with, in order)."""
    calls = tmp_path / "calls.jsonl"
    fake = tmp_path / "gcloud"
    fake.write_text(FAKE_GCLOUD.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("FAKE_GCLOUD_CALLS", str(calls))

    def recorded() -> list[list[str]]:
        if not calls.exists():
            return []
        return [json.loads(line) for line in calls.read_text().splitlines()]
    return str(fake), recorded


def verbs(calls) -> list[str]:
    return [call[3] for call in calls]


def test_up_runs_every_step(gcloud, archive_dir):
    fake, recorded = gcloud
    assert pod.main(["up", *SLICE, "--gcloud", fake, "--config", CONFIG, GCS]) == 0
    calls = recorded()
    assert verbs(calls) == ["create", "scp", "ssh", "ssh"]
    expected = [CREATE, *install_lines(archive_dir)[1:], TRAIN]
    assert calls == [shlex.split(line)[1:] for line in expected]
    with tarfile.open(archive_dir / "zoo-my-tpu.tar.gz") as tar:  # the real git archive ran
        assert "setup.py" in tar.getnames()


def test_a_failed_step_stops_the_sequence(gcloud, monkeypatch, capsys):
    fake, recorded = gcloud
    monkeypatch.setenv("FAKE_GCLOUD_FAIL", "scp")
    code = pod.main(["up", *SLICE, "--gcloud", fake, "--config", CONFIG, GCS])
    assert code != 0
    assert verbs(recorded()) == ["create", "scp"]  # no pip install, no training
    assert "step 'install: copy to the workers' failed (exit 1)" in capsys.readouterr().err


def test_missing_gcloud_is_a_clear_error(tmp_path, capsys):
    code = pod.main(["delete", *SLICE, "--gcloud", str(tmp_path / "no-gcloud")])
    assert code == 127
    assert "step 'delete' failed" in capsys.readouterr().err


def test_status_prints_the_state(gcloud, monkeypatch, capsys):
    fake, recorded = gcloud
    monkeypatch.setenv("FAKE_GCLOUD_STATE", "READY")
    assert pod.main(["status", *SLICE, "--gcloud", fake, "--resume-if-preempted",
                     "--config", CONFIG, GCS]) == 0
    assert capsys.readouterr().out == "READY\n"
    assert verbs(recorded()) == ["describe"]


def test_a_preempted_slice_is_recreated_and_training_resumes(gcloud, monkeypatch, capsys):
    fake, recorded = gcloud
    monkeypatch.setenv("FAKE_GCLOUD_STATE", "PREEMPTED")
    assert pod.main(["status", *SLICE, "--gcloud", fake, "--resume-if-preempted",
                     "--config", CONFIG, GCS]) == 0
    calls = recorded()
    assert verbs(calls) == ["describe", "delete", "create", "scp", "ssh", "ssh"]
    assert "--resume" in shlex.split(calls[-1][calls[-1].index("--command") + 1])
    assert "PREEMPTED" in capsys.readouterr().out


def test_a_failed_describe_names_the_step(gcloud, monkeypatch, capsys):
    fake, recorded = gcloud
    monkeypatch.setenv("FAKE_GCLOUD_FAIL", "describe")
    assert pod.main(["status", *SLICE, "--gcloud", fake]) == 1
    err = capsys.readouterr().err
    assert "step 'status' failed (exit 1): fake gcloud: describe failed" in err


def test_tpu_devices_per_type():
    assert [pod.tpu_devices(t) for t in ("v5litepod-8", "v6e-256", "v5p-512", "v4-8", "v3-32")] \
        == [8, 256, 256, 4, 32]
    with pytest.raises(ValueError, match="'v5p'"):
        pod.tpu_devices("v5p")


def test_up_sizes_the_config_on_the_slice_first(capsys, archive_dir):
    """The catalog's pod run, sized on the slice's 256 chips (a v5p-512) on this machine."""
    pod_run = "configs/experiments/llama3_1_8b_pod256.yaml"
    assert pod.main(["up", *SLICE, "--dry-run", "--accelerator-type", "v5p-512",
                     "--config", pod_run, GCS]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{TPU_VM} create") and f"--config {pod_run}" in out
    assert "# llama3_1_8b_pod256: transformer, 8,030,261,248 parameters" in err
    assert "(256 devices)" in err and "optimizer state" in err
    # A config that does not divide over the slice's chips is refused before anything runs.
    assert pod.main(["up", *SLICE, "--dry-run", "--accelerator-type", "v5p-256",
                     "--config", pod_run, GCS]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "needs 256 devices, there are 128" in err and "v5p-256" in err
