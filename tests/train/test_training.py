import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.checkpoint import Checkpointer
from zoo.runs import load_run
from zoo.train.loop import NonFiniteLossError, ResumeError, train
from zoo.train.optimizer import learning_rate_schedule

from conftest import REPO, assert_loss_falls


def test_loss_falls_and_metrics_are_logged(tiny_experiment):
    cfg = tiny_experiment("train.steps=40")
    result = train(cfg, progress=False)
    assert sorted(result.losses) == list(range(1, 41))
    assert_loss_falls(result.losses)
    assert [e["step"] for e in result.evals] == [20, 40]
    assert result.evals[1]["val_bits_per_byte"] < result.evals[0]["val_bits_per_byte"]
    rows = [json.loads(l) for l in (REPO / cfg.train.run_dir / "metrics.jsonl").read_text()
            .splitlines()]
    assert {"step", "loss", "grad_norm", "learning_rate", "tokens_per_s"} <= set(rows[0])
    assert any("val_bits_per_byte" in r for r in rows)
    assert Checkpointer(f"{cfg.train.run_dir}/checkpoints").all_steps() == [20, 40]


def test_resume_equals_uninterrupted(tiny_experiment, tmp_path):
    steps = ["train.steps=16", "train.checkpoint_every=4", "train.eval_every=8"]
    straight = train(tiny_experiment(*steps, f"train.run_dir={tmp_path / 'a'}"), progress=False)
    cfg = tiny_experiment(*steps, f"train.run_dir={tmp_path / 'b'}")
    first = train(cfg, stop_at=8, progress=False)
    assert first.step == 8
    checkpoints = Checkpointer(tmp_path / "b" / "checkpoints")
    assert checkpoints.data_state(8)["position"] == 8  # not the batches prefetched beyond it
    checkpoints.close()
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(cfg, progress=False)
    second = train(cfg, resume=True, progress=False)
    assert second.step == 16
    resumed = {**first.losses, **second.losses}
    assert sorted(resumed) == sorted(straight.losses) == list(range(1, 17))
    np.testing.assert_allclose([resumed[s] for s in range(1, 17)],
                               [straight.losses[s] for s in range(1, 17)], rtol=0, atol=1e-6)
    _, params_a = load_run(tmp_path / "a")
    _, params_b = load_run(tmp_path / "b")
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), params_a, params_b)
    with pytest.raises(ResumeError, match="data.batch_size is 8 but the config says 4"):
        train(tiny_experiment(*steps, f"train.run_dir={tmp_path / 'b'}", "data.batch_size=4"),
              resume=True, progress=False)


def test_non_finite_loss_stops_with_last_good_checkpoint(tiny_experiment):
    # A huge learning rate blows the weights up within a few steps of warm-up.
    cfg = tiny_experiment("train.learning_rate=1e30", "train.warmup_steps=2",
                          "train.checkpoint_every=1", "train.steps=20")
    with pytest.raises(NonFiniteLossError, match=r"non-finite .* at step (\d+)") as err:
        train(cfg, progress=False)
    bad_step = int(err.value.args[0].split("at step ")[1].split(" ")[0])
    ckpt = Checkpointer(f"{cfg.train.run_dir}/checkpoints")
    assert ckpt.latest_step() == bad_step - 1
    assert f"last good checkpoint is step {bad_step - 1}" in str(err.value)
    _, params = load_run(cfg.train.run_dir)
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))


def test_non_finite_loss_mid_log_window(tiny_experiment, monkeypatch):
    """Metrics reach the host once per log window, yet the error names the exact bad step and
    the checkpoint due after it (step 10) is never written."""
    import zoo.train.loop as loop

    class Poisoned:  # the objective, with a NaN loss at step 7
        def __init__(self, objective):
            self.objective = objective

        def __getattr__(self, name):
            return getattr(self.objective, name)

        def make_train_step(self, tx, schedule, shardings=None):
            step_fn = self.objective.make_train_step(tx, schedule, shardings)

            def step(state, batch):
                state, metrics = step_fn(state, batch)
                return state, {**metrics, "loss": jnp.where(state.step == 7, jnp.nan,
                                                            metrics["loss"])}
            return step

    fetches, device_get = [], jax.device_get

    def counting_device_get(tree):
        if "params_finite" in str(jax.tree.structure(tree)):  # train metrics, not eval sums
            fetches.append(tree)
        return device_get(tree)

    build_objective = loop.build_objective
    monkeypatch.setattr(loop, "build_objective", lambda *a: Poisoned(build_objective(*a)))
    monkeypatch.setattr(jax, "device_get", counting_device_get)
    cfg = tiny_experiment("train.log_every=5", "train.checkpoint_every=5", "train.steps=20",
                          "train.eval_every=20")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 7 .* last good "
                                                 "checkpoint is step 5 in"):
        train(cfg, progress=False)
    assert Checkpointer(f"{cfg.train.run_dir}/checkpoints").all_steps() == [5]
    assert len(fetches) == 2  # after steps 5 and 10, not after every step
    assert not any(t.name == "prefetch" for t in threading.enumerate())  # stopped on the error


def test_resume_refuses_a_changed_schedule_unless_allowed(tiny_experiment):
    cfg = tiny_experiment("train.steps=6", "train.eval_every=6")
    train(cfg, stop_at=3, progress=False)
    config_yaml = (REPO / cfg.train.run_dir / "config.yaml").read_text()
    for change, message in [("train.steps=8", "train.steps=6 but the config says 8"),
                            ("train.learning_rate=0.01",
                             "train.learning_rate=0.003 but the config says 0.01")]:
        with pytest.raises(ResumeError, match=f"{message}.*--allow-schedule-change"):
            train(tiny_experiment("train.steps=6", "train.eval_every=6", change), resume=True,
                  progress=False)
    assert (REPO / cfg.train.run_dir / "config.yaml").read_text() == config_yaml
    longer = tiny_experiment("train.steps=8", "train.eval_every=6", "train.log_every=1")
    result = train(longer, resume=True, progress=False, allow_schedule_change=True)
    assert sorted(result.losses) == [4, 5, 6, 7, 8]
    rows = [json.loads(l) for l in (REPO / cfg.train.run_dir / "metrics.jsonl").read_text()
            .splitlines()]
    want = learning_rate_schedule(longer.train)(7)  # the new schedule at step 8
    assert [r["learning_rate"] for r in rows if r["step"] == 8 and "loss" in r] == [
        pytest.approx(want)]


def _cli(name):
    return [sys.executable, "-c", f"import sys; from launch.{name} import main; sys.exit(main())"]


def test_sigterm_saves_and_resume_continues(tiny_experiment, data_dir, tmp_path):
    run_dir = tmp_path / "sig"
    args = ["--config", str(REPO / "configs/experiments/tiny.yaml"), f"data.data_dir={data_dir}",
            f"train.run_dir={run_dir}", "train.steps=100000", "train.checkpoint_every=100000",
            "train.log_every=1", "--no-progress"]
    proc = subprocess.Popen(_cli("train") + args, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists()
                                      or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "SIGTERM" in out
    step = Checkpointer(run_dir / "checkpoints").latest_step()
    assert step is not None and step >= 3
    cfg = tiny_experiment(f"train.run_dir={run_dir}", f"train.steps={step + 2}")
    result = train(cfg, resume=True, progress=False, allow_schedule_change=True)
    assert sorted(result.losses) == [step + 1, step + 2]


def test_cli_train_then_generate(data_dir, tmp_path):
    run_dir = tmp_path / "cli"
    train_cmd = _cli("train") + ["--config", str(REPO / "configs/experiments/tiny.yaml"),
                                 f"data.data_dir={data_dir}", f"train.run_dir={run_dir}",
                                 "train.steps=6", "train.eval_every=3", "--no-progress"]
    done = subprocess.run(train_cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "val_bits_per_byte" in done.stdout
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("import os\nclass A:\\n    def\n")
    gen = subprocess.run(_cli("generate") + ["--checkpoint", str(run_dir), "--prompts-file",
                                             str(prompts), "--max-new-tokens", "8",
                                             "--temperature", "0.8", "--seed", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.count("--- completion ---") == 2 and "tokens/s" in gen.stdout
    spec = subprocess.run(_cli("generate") + ["--checkpoint", str(run_dir), "--prompt", "def f(",
                                              "--max-new-tokens", "12", "--temperature", "0",
                                              "--speculative", "prompt_lookup", "--tree", "chain3"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert spec.returncode == 0, spec.stderr
    assert "speculative (prompt_lookup)" in spec.stdout and "outputs identical" in spec.stdout
    unknown = subprocess.run(_cli("generate") + ["--checkpoint", str(run_dir), "--prompt", "x",
                                                 "--speculative", "oracle"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "unknown drafter 'oracle'" in unknown.stderr
    bad = subprocess.run(train_cmd + ["model.n_kv_heads=3"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "model.n_kv_heads=3: must divide model.n_heads=4" in bad.stderr
    missing = subprocess.run(_cli("generate") + ["--checkpoint", str(tmp_path), "--prompt", "x"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "not a zoo run directory" in missing.stderr


@pytest.mark.parametrize("family", ["mamba2", "hybrid"])
def test_ssm_models_train_and_decode_from_yaml(family, data_dir, tmp_path, capsys):
    """zoo-train's loop trains Mamba2 and hybrid configs as it does the transformer, and the run
    decodes speculatively through zoo-generate to the AR tokens."""
    from launch.generate import main as generate_cli
    from zoo import config as config_lib
    cfg = config_lib.load(REPO / f"configs/experiments/tiny_{family}.yaml", [
        f"data.data_dir={data_dir}", f"train.run_dir={tmp_path}", "train.steps=30",
        "train.eval_every=30", "train.checkpoint_every=30"])
    result = train(cfg, progress=False)
    assert sorted(result.losses) == list(range(1, 31))
    assert_loss_falls(result.losses)
    assert generate_cli(["--checkpoint", str(tmp_path), "--prompt", "def f(x):\\n    return x",
                         "--max-new-tokens", "12", "--temperature", "0", "--speculative",
                         "recycling"]) == 0
    assert "outputs identical" in capsys.readouterr().out


def test_load_run_restores_the_parameters_only(tiny_experiment, monkeypatch):
    """Generation and export read the parameters alone (not the AdamW moments, twice their
    size): load_run never restores the whole train state, and gets the same parameters."""
    from zoo.models import build_model
    from zoo.train.optimizer import make_optimizer
    from zoo.train.steps import init_state

    cfg = tiny_experiment("train.steps=4", "train.warmup_steps=1", "train.checkpoint_every=4",
                          "train.eval_every=4")
    train(cfg, progress=False)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.eval_shape(lambda: init_state(build_model(cfg.model),
                                                 make_optimizer(cfg.train), jax.random.key(0)))
    checkpointer = Checkpointer(f"{cfg.train.run_dir}/checkpoints", async_save=False)
    state, _ = checkpointer.restore(jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract))
    checkpointer.close()

    def whole_state(*args, **kwargs):
        raise AssertionError("load_run restored the whole train state")

    monkeypatch.setattr(Checkpointer, "restore", whole_state)
    _, params = load_run(cfg.train.run_dir)
    jax.tree.map(np.testing.assert_array_equal, params, state.params)
