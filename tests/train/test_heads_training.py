"""Draft heads train on a frozen target through the ordinary loop (zoo-train)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.train import main as train_cli
from zoo.checkpoint import Checkpointer
from zoo.config import ConfigError
from zoo.train.heads import glance, glancing_losses, head_losses, load_heads_run
from zoo.runs import load_run
from zoo.train.loop import train

from conftest import REPO

TINY = str(REPO / "configs/experiments/tiny.yaml")


def test_head_k_at_position_t_learns_the_targets_greedy_token_t_plus_k_plus_1():
    """An oracle that knows the teacher sequence agrees everywhere, and Hydra's inputs are the
    teacher tokens t+1..t+K; any misalignment of labels or inputs would make it disagree."""
    t_len, k_heads, vocab = 10, 3, 50
    greedy = jax.random.randint(jax.random.key(0), (2, t_len), 0, vocab)  # greedy[j] = y_{j+1}
    rows = jnp.arange(2)[:, None, None]

    class Oracle:
        num_heads = k_heads

        def logits(self, params, target_params, hidden, tokens):
            t = hidden[..., 0].astype(jnp.int32)[..., None]  # the hidden state carries t
            ahead = jnp.minimum(t + jnp.arange(k_heads), t_len - 1)
            np.testing.assert_array_equal(tokens, greedy[rows, ahead])  # y_{t+1..t+K}
            label = greedy[rows, jnp.minimum(ahead + 1, t_len - 1)]  # y_{t+k+1}
            return 30.0 * jax.nn.one_hot(label, vocab)

    hidden = jnp.broadcast_to(jnp.arange(t_len, dtype=jnp.float32)[None, :, None], (2, t_len, 4))
    losses, agree, mask = head_losses(Oracle(), None, None, hidden, greedy)
    np.testing.assert_array_equal(mask.sum((0, 1)), [2 * (t_len - k) for k in (1, 2, 3)])
    assert agree[mask].all() and losses[mask].max() < 1e-3


@pytest.fixture(scope="module")
def target_run(data_dir, tmp_path_factory):
    """A tiny target LM trained for a few steps: its greedy tokens are the heads' labels."""
    from zoo import config as config_lib
    run_dir = tmp_path_factory.mktemp("target") / "run"
    train(config_lib.load(TINY, [f"data.data_dir={data_dir}", f"train.run_dir={run_dir}",
                                 "train.steps=30", "train.eval_every=30"]), progress=False)
    return run_dir


def _heads(tiny_experiment, target_run, kind, *overrides):
    return tiny_experiment(f"heads.kind={kind}", f"heads.target_run={target_run}",
                           "heads.num_heads=3", "train.learning_rate=1e-2", "train.warmup_steps=2",
                           *overrides)


def test_medusa_loss_falls_target_stays_frozen_and_resume_continues(tiny_experiment, target_run,
                                                                    tmp_path):
    steps = ["train.steps=24", "train.eval_every=12", "train.checkpoint_every=12"]
    cfg = _heads(tiny_experiment, target_run, "medusa", *steps,
                 f"train.run_dir={tmp_path / 'a'}")
    straight = train(cfg, progress=False)
    assert np.mean([straight.losses[s] for s in range(20, 25)]) < \
        np.mean([straight.losses[s] for s in range(1, 6)]) - 0.3
    last = straight.evals[-1]
    assert all(0 < last[f"val_head{k}_top1"] <= 1 for k in (1, 2, 3))
    assert last["val_loss"] < straight.evals[0]["val_loss"]
    rows = [json.loads(l) for l in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert any("val_head1_top1" in r for r in rows)

    # Only the heads are trained and saved; the target run is untouched.
    config, heads, params, target, target_params = load_heads_run(tmp_path / "a")
    assert config.heads.kind == "medusa" and set(params) == {"res_0"}
    assert Checkpointer(target_run / "checkpoints").latest_step() == 30
    _, reloaded = load_run(target_run)
    jax.tree.map(np.testing.assert_array_equal, target_params, reloaded)

    split = _heads(tiny_experiment, target_run, "medusa", *steps,
                   f"train.run_dir={tmp_path / 'b'}")
    first = train(split, stop_at=12, progress=False)
    second = train(split, resume=True, progress=False)
    resumed = {**first.losses, **second.losses}
    np.testing.assert_allclose([resumed[s] for s in range(1, 25)],
                               [straight.losses[s] for s in range(1, 25)], rtol=0, atol=1e-6)


def test_hydra_heads_train(tiny_experiment, target_run):
    result = train(_heads(tiny_experiment, target_run, "hydra", "heads.shared_lm_head=false",
                          "train.steps=16", "train.eval_every=8"), progress=False)
    assert np.mean([result.losses[s] for s in range(13, 17)]) < \
        np.mean([result.losses[s] for s in range(1, 5)]) - 0.3
    assert [e["step"] for e in result.evals] == [8, 16]
    assert all(0 < result.evals[-1][f"val_head{k}_top1"] <= 1 for k in (1, 2, 3))


def test_glance_shows_only_missed_tokens_a_ratio_of_them_per_row():
    """Per row, n of the m missed entries: n is floor or ceil of ratio * m, ratio * m on
    average, and every missed entry is equally likely to be shown."""
    missed = jax.random.bernoulli(jax.random.key(0), 0.6, (20000, 6))
    m = np.asarray(missed.sum(-1))
    for ratio in (0.5, 0.3):
        shown = np.asarray(glance(jax.random.key(1), missed, ratio))
        n = shown.sum(-1)
        assert not (shown & ~np.asarray(missed)).any()
        assert ((n == np.floor(ratio * m)) | (n == np.ceil(ratio * m))).all()
        # Mean of n: ratio * mean(m) within 5 standard errors (n - ratio*m has sd <= 0.5).
        assert abs(n.mean() - ratio * m.mean()) < 5 * 0.5 / np.sqrt(len(m))
        per_entry = shown.sum(0) / np.asarray(missed).sum(0)  # ~ratio at every column
        np.testing.assert_allclose(per_entry, ratio, atol=0.03)
    assert not glance(jax.random.key(2), missed, 0.0).any()
    np.testing.assert_array_equal(glance(jax.random.key(2), missed, 1.0), missed)


def test_glancing_shows_a_missed_token_to_the_next_query_of_its_block_and_drops_its_loss():
    """With ratio 1 every miss that has a next query in its block (depths 1-2, 3-4, 5) is shown:
    query q+1 reads token q+1 (query q's label) and query q leaves the loss. A miss at the end
    of a block, or past the window, is shown to nobody."""
    t_len, k_heads, vocab = 9, 5, 40
    greedy = jax.random.randint(jax.random.key(0), (2, t_len), 0, vocab)
    wrong = jax.random.bernoulli(jax.random.key(1), 0.5, (2, t_len, k_heads))
    seen = []

    class Heads:
        num_heads, block_size = k_heads, 2

        def logits(self, params, target_params, hidden, tokens, glanced=None):
            seen.append(glanced)
            labels = jnp.take(greedy, jnp.minimum(jnp.arange(t_len)[:, None] + jnp.arange(
                1, k_heads + 1), t_len - 1), axis=1)
            return 30.0 * jax.nn.one_hot(jnp.where(wrong, (labels + 1) % vocab, labels), vocab)

    hidden = jnp.zeros((2, t_len, 4))

    @jax.jit
    def run(rng):
        _, mask = glancing_losses(Heads(), None, None, hidden, greedy, rng, 1.0)
        assert seen[0] is None  # the first pass drafts without glancing
        _, _, inside = head_losses(Heads(), None, None, hidden, greedy)
        return mask, seen[1], inside

    mask, glanced, inside = map(np.asarray, run(jax.random.key(2)))
    has_next = np.array([True, False, True, False, False])
    shown = np.asarray(wrong) & inside & has_next
    assert shown.any() and (np.asarray(wrong) & inside & ~has_next).any()
    np.testing.assert_array_equal(glanced[..., 1:], shown[..., :-1])
    assert not glanced[..., 0].any()
    np.testing.assert_array_equal(mask, inside & ~shown)


def test_falcon_drafter_trains_and_decodes_through_zoo_generate(tiny_experiment, target_run,
                                                                tmp_path, capsys):
    run_dir = tmp_path / "falcon"
    result = train(_heads(tiny_experiment, target_run, "falcon", "heads.block_size=2",
                          "train.steps=16", "train.eval_every=8", f"train.run_dir={run_dir}"),
                   progress=False)
    assert np.mean([result.losses[s] for s in range(13, 17)]) < \
        np.mean([result.losses[s] for s in range(1, 5)]) - 0.3
    assert all(0 < result.evals[-1][f"val_head{k}_top1"] <= 1 for k in (1, 2, 3))
    from launch.generate import main as generate_cli
    assert generate_cli(["--checkpoint", str(target_run), "--prompt", "def f(x):", "--temperature",
                         "0", "--max-new-tokens", "12", "--speculative", "falcon",
                         "--draft-checkpoint", str(run_dir), "--tree", "chain3"]) == 0
    out = capsys.readouterr().out
    assert "speculative (falcon)" in out and "outputs identical" in out, out


def test_bad_target_run_fails_before_any_work(tiny_experiment, target_run, tmp_path, capsys,
                                               data_dir):
    run_dir = tmp_path / "heads"
    args = ["--config", TINY, f"data.data_dir={data_dir}", f"train.run_dir={run_dir}",
            "heads.kind=medusa", "--no-progress"]
    assert train_cli(args + [f"heads.target_run={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert "heads.target_run=" in err and "not a zoo run directory" in err
    assert train_cli(args + ["heads.target_run="]) == 2
    assert "heads.target_run='': must name the target's run directory" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="trained with model.d_model=64 but this config has "
                                         "model.d_model=32"):
        train(_heads(tiny_experiment, target_run, "medusa", "model.d_model=32",
                     f"train.run_dir={run_dir}"), progress=False)
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def medusa_run(data_dir, target_run, tmp_path_factory):
    from zoo import config as config_lib
    run_dir = tmp_path_factory.mktemp("medusa") / "run"
    train(config_lib.load(TINY, [f"data.data_dir={data_dir}", f"train.run_dir={run_dir}",
                                 "heads.kind=medusa", f"heads.target_run={target_run}",
                                 "heads.num_heads=4", "train.steps=4", "train.warmup_steps=1",
                                 "train.eval_every=4"]),
          progress=False)
    return run_dir


def test_zoo_generate_with_every_drafter_gives_the_ar_tokens(target_run, medusa_run, capsys):
    """The CLI path end to end: each drafter by name (draft LMs here are the target itself, the
    heads are a real heads run) decodes greedily to exactly the AR completion; so does
    verification on the GPU kernel, interpreted here."""
    from launch.generate import main as generate_cli
    base = ["--checkpoint", str(target_run), "--prompt", "def f(x):\\n    return x", "--temperature",
            "0", "--max-new-tokens", "12"]
    on_gpu_kernel = ["--kernel-backend", "pallas_gpu"]
    for name, tree, extra in [("recycling", "chain3", []),
                              ("prompt_lookup", "chain4", on_gpu_kernel),
                              ("draft_tree", "medusa_small", ["--draft-checkpoint", str(target_run)]),
                              ("draft_dynamic", "d2k2w2b5", ["--draft-checkpoint", str(target_run)]),
                              ("medusa", "medusa_small", ["--draft-checkpoint", str(medusa_run)])]:
        assert generate_cli(base + ["--speculative", name, "--tree", tree, *extra]) == 0, name
        out = capsys.readouterr().out
        assert f"speculative ({name})" in out and "outputs identical" in out, (name, out)


@pytest.mark.parametrize("args, message", [
    (["--speculative", "medusa"], "medusa needs the run directory of its trained heads"),
    (["--speculative", "hydra", "--draft-checkpoint", "{medusa}"], "holds 'medusa' heads, not "
                                                                   "'hydra' heads"),
    (["--speculative", "medusa", "--draft-checkpoint", "{target}"], "is an LM run, not a run of medusa heads"),
    (["--speculative", "draft", "--draft-checkpoint", "{medusa}"], "is a draft-heads run"),
    (["--speculative", "medusa", "--draft-checkpoint", "{medusa}", "--tree", "medusa_63"],
     "the tree is 5 deep but there are only 4 heads"),
    (["--speculative", "recycling", "--tree", "bushy"], "unknown tree 'bushy'"),
    (["--speculative", "draft_dynamic", "--tree", "d4k4"], "not a dynamic-tree spec"),
    (["--speculative", "prompt_lookup", "--tree", "medusa_small"], "is not a chain"),
    (["--speculative", "prompt_lookup", "--kernel-backend", "cuda"], "decode.kernel_backend"),
])
def test_zoo_generate_rejects_bad_drafter_arguments(target_run, medusa_run, capsys, args, message):
    from launch.generate import main as generate_cli
    args = [a.format(medusa=medusa_run, target=target_run) for a in args]
    assert generate_cli(["--checkpoint", str(target_run), "--prompt", "x", *args]) == 2
    assert message in capsys.readouterr().err


def test_zoo_generate_on_a_heads_run_names_its_target(target_run, medusa_run, capsys):
    """A heads run holds no LM: generating from it says which run to decode with instead."""
    from launch.generate import main as generate_cli
    assert generate_cli(["--checkpoint", str(medusa_run), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert f"{medusa_run} is a run of medusa draft heads" in err
    assert f"--checkpoint {target_run} --speculative medusa --draft-checkpoint {medusa_run}" in err


@pytest.mark.parametrize("name, acceptance, draft_s, says", [
    ("recycling", [[0.9, 0.05]], 0.0, "nodes, depth"),  # flat costs: a tree
    ("prompt_lookup", [[0.9]], 0.0, "candidates per depth [1, 1"),  # a chain
    ("recycling", [[0.01, 0.01]], 5e-3, "no speculation"),  # a hopeless drafter
])
def test_zoo_generate_tree_auto_follows_the_calibration(target_run, capsys, name, acceptance,
                                                        draft_s, says):
    """`--tree auto` decodes with the tree the cached calibration's costs and acceptance make
    best (written here, as a calibration on another device would be), and still gives the AR
    tokens."""
    from launch.drafter_factory import AUTO_FAN, AUTO_MAX_DEPTH, calibration_key
    from launch.generate import main as generate_cli
    from zoo.decode import calibration
    from zoo.decode.sampling import Sampler
    from zoo.decode.tree_search import Costs

    fan = 1 if name == "prompt_lookup" else AUTO_FAN
    key = calibration_key(name, batch=1, sampler=Sampler(), depth=AUTO_MAX_DEPTH, fan=fan)
    costs = Costs({1: 1e-3, 64: 1e-3}, (0.0,) + (draft_s,) * AUTO_MAX_DEPTH)
    calibration.save(target_run / calibration.FILENAME, key,
                     calibration.Calibration(tuple(map(tuple, acceptance)), costs))
    assert generate_cli(["--checkpoint", str(target_run), "--prompt", "def f(x):", "--temperature",
                         "0", "--max-new-tokens", "12", "--speculative", name,
                         "--tree", "auto"]) == 0
    out = capsys.readouterr().out
    assert "calibrating" not in out and "tree auto: " in out and says in out, out
    if says != "no speculation":
        assert "outputs identical" in out, out


def test_zoo_generate_serves_a_float32_run_in_bfloat16(target_run, medusa_run, capsys):
    """--dtype bfloat16: the target and its heads decode in bfloat16, and --tree auto reads the
    calibration of the bfloat16 target, not the float32 one's. (Token-for-token equality with
    AR is a float32 property: in bfloat16 a T-node extend's logits differ from a 1-node step's
    by bfloat16 roundings, GEMMs of other row counts, so a greedy near-tie may flip.)"""
    from launch.drafter_factory import AUTO_FAN, AUTO_MAX_DEPTH, calibration_key
    from launch.generate import main as generate_cli
    from zoo.decode import calibration
    from zoo.decode.sampling import Sampler
    from zoo.decode.tree_search import Costs

    common = ["--checkpoint", str(target_run), "--prompt", "def f(x):", "--temperature", "0",
              "--max-new-tokens", "12", "--dtype", "bfloat16"]
    assert generate_cli(common + ["--speculative", "medusa", "--draft-checkpoint",
                                  str(medusa_run)]) == 0
    assert "speculative (medusa): 12 tokens" in capsys.readouterr().out
    keys = {dtype: calibration_key("recycling", batch=1, sampler=Sampler(), depth=AUTO_MAX_DEPTH,
                                   fan=AUTO_FAN, dtype=dtype) for dtype in ("float32", "bfloat16")}
    for dtype, acceptance, draft_s in (("float32", 0.9, 0.0), ("bfloat16", 0.01, 5e-3)):
        calibration.save(target_run / calibration.FILENAME, keys[dtype], calibration.Calibration(
            ((acceptance, acceptance),), Costs({1: 1e-3, 64: 1e-3},
                                               (0.0,) + (draft_s,) * AUTO_MAX_DEPTH)))
    assert generate_cli(common + ["--speculative", "recycling", "--tree", "auto"]) == 0
    out = capsys.readouterr().out
    assert "calibrating" not in out and "no speculation" in out, out


def test_ensure_trained_resumes_a_run_stopped_midway(tmp_path, monkeypatch):
    """A benchmark's model whose run stopped before train.steps is resumed, not used half
    trained; a finished one is left alone; a missing one trains from scratch."""
    import zoo.train.loop
    from launch.drafter_factory import ensure_trained

    calls = []
    monkeypatch.setattr(zoo.train.loop, "train",
                        lambda config, resume: calls.append((config.name, resume)))
    paths = {}
    for name, done in (("fresh", None), ("midway", 200), ("finished", 400)):
        run = tmp_path / name
        if done is not None:
            (run / "checkpoints" / str(done)).mkdir(parents=True)
        paths[name] = tmp_path / "experiments" / f"{name}.yaml"
        paths[name].parent.mkdir(exist_ok=True)
        paths[name].write_text(f"name: {name}\nmodel: tiny\ntrain:\n  steps: 400\n"
                               f"  run_dir: {run}\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.yaml").write_text(
        (REPO / "configs" / "models" / "tiny.yaml").read_text())
    ensure_trained(*paths.values())
    assert calls == [("fresh", False), ("midway", True)]
