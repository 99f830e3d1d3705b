"""The next-block objective: block-causal loss against the next block's tokens, a run that trains
and records its objective, and zoo-generate decoding text and video runs by it."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from zoo import config as config_lib
from zoo.data.packing import PackedDataset
from zoo.export.convert import export_run
from zoo.runs import load_run
from zoo.train.loop import train
from zoo.train.steps import token_losses

from conftest import REPO, assert_loss_falls


def test_loss_is_block_causal_cross_entropy_against_the_next_block(tiny_model_and_params):
    """Position k of block b is scored on token k of block b + 1, seeing blocks <= b only."""
    model, params = tiny_model_and_params
    s, stream = 4, np.random.default_rng(0).integers(0, 256, 100)
    batch = PackedDataset(stream, 16, shift=s).windows(np.array([0, 3]))
    losses, mask = token_losses(model, params, batch, block_size=s)
    assert mask.all()
    for row, start in enumerate((0, 48)):
        inputs = jnp.asarray(stream[None, start:start + 16])
        logits, _ = model.forward(params, inputs, mask="block_causal", block_size=s)
        want = optax.softmax_cross_entropy_with_integer_labels(
            logits[0], jnp.asarray(stream[start + s:start + 16 + s]))
        np.testing.assert_allclose(losses[row], want, rtol=1e-5, atol=1e-5)
    # Changing a token of block 2 leaves blocks 0-1's losses alone and moves all of block 2's
    # (bidirectional inside the block), so no position sees the block it predicts.
    changed = {k: v.copy() for k, v in batch.items()}
    changed["inputs"][:, 9] = (changed["inputs"][:, 9] + 1) % 256
    again, _ = token_losses(model, params, changed, block_size=s)
    np.testing.assert_array_equal(again[:, :8], losses[:, :8])
    assert (np.abs(np.asarray(again[:, 8:12] - losses[:, 8:12])) > 1e-7).all()


def test_text_run_trains_records_its_objective_and_decodes_by_blocks(data_dir, tmp_path,
                                                                      capsys):
    from launch.generate import main as generate_cli
    cfg = config_lib.load(REPO / "configs/experiments/tiny_nbp.yaml", [
        f"data.data_dir={data_dir}", f"train.run_dir={tmp_path}", "train.steps=30",
        "train.eval_every=30", "train.checkpoint_every=30"])
    result = train(cfg, progress=False)
    assert sorted(result.losses) == list(range(1, 31))
    assert_loss_falls(result.losses)
    loaded, _ = load_run(tmp_path)
    assert loaded.objective == config_lib.ObjectiveConfig("next_block", 4)
    assert generate_cli(["--checkpoint", str(tmp_path), "--prompt", "def f(x):\\n    return",
                         "--max-new-tokens", "20", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert "next-block: 20 tokens" in out and "6 forwards of blocks of 4" in out
    assert generate_cli(["--checkpoint", str(tmp_path), "--prompt", "x",
                         "--speculative", "prompt_lookup"]) == 2
    assert "this run's objective is 'next_block'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="trains objective.kind='next_block'; Hugging Face"):
        export_run(tmp_path, tmp_path / "hf")  # transformers would run it causally


def test_video_run_continues_held_out_clips_into_pictures(data_dir, tmp_path, capsys):
    from launch.generate import main as generate_cli
    run = tmp_path / "run"
    cfg = config_lib.load(REPO / "configs/experiments/tiny_sprites_nbp.yaml", [
        f"data.data_dir={data_dir}", f"train.run_dir={run}", "train.steps=4",
        "train.warmup_steps=1", "train.eval_every=4", "train.checkpoint_every=4"])
    train(cfg, progress=False)
    out_dir = tmp_path / "samples"
    assert generate_cli(["--checkpoint", str(run), "--clips", "2", "--given-frames", "2",
                         "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    # Trained on 4 frames (192 inputs + one 64-token frame): 2 given, 2 generated per clip.
    assert "4 frames (2 clips x 2)" in printed and "frames/s, 2 forwards" in printed
    with Image.open(out_dir / "grid.png") as grid:
        assert grid.size[0] > 4 * 16 * 8 and grid.size[1] > 2 * 16 * 8
    for i in range(2):
        with Image.open(out_dir / f"clip_{i}.gif") as gif:
            assert gif.size == (128, 128)
    assert generate_cli(["--checkpoint", str(run), "--given-frames", "4"]) == 2
    assert "--given-frames must be in [2, 3]" in capsys.readouterr().err
