"""The masked-diffusion objective: the weighted loss against numpy, no gradient at unmasked
positions, the noise process, block diffusion's one-forward layout, and a run that trains."""

import jax
import jax.numpy as jnp
import numpy as np

from zoo import config as config_lib
from zoo.data.tokenizer import MASK_ID, PAD_ID
from zoo.train.diffusion import denoiser_logits, noise, weighted_losses
from zoo.train.loop import train

from conftest import REPO, assert_loss_falls


def test_weighted_loss_equals_numpy_on_a_fixed_mask():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 6, 11)).astype(np.float32)
    x0 = rng.integers(0, 11, (2, 6))
    masked = np.array([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0]], bool)
    t = np.repeat(np.array([[0.5], [0.25]], np.float32), 6, axis=1)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = np.where(masked, -np.take_along_axis(log_p, x0[..., None], -1)[..., 0] / t, 0)
    got = weighted_losses(jnp.asarray(logits), jnp.asarray(x0), jnp.asarray(masked),
                          jnp.asarray(t))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    grads = jax.grad(lambda lg: weighted_losses(lg, x0, masked, t).sum())(jnp.asarray(logits))
    assert not np.asarray(grads)[~masked].any()  # unmasked positions get no gradient
    assert np.abs(np.asarray(grads)[masked]).sum(-1).min() > 0


def test_noise_masks_at_rate_t_per_sequence_or_block():
    x0 = jnp.full((64, 256), 7).at[:, -4:].set(PAD_ID)
    xt, masked, t = noise(jax.random.key(0), x0, 1e-3)
    np.testing.assert_array_equal(np.asarray(xt) == MASK_ID, masked)
    assert not masked[:, -4:].any()  # PAD is never masked
    rate = np.asarray(masked[:, :-4]).mean(1)
    np.testing.assert_allclose(rate, np.asarray(t)[:, 0], atol=0.12)
    assert np.corrcoef(rate, np.asarray(t)[:, 0])[0, 1] > 0.95
    _, _, t_block = noise(jax.random.key(1), x0, 1e-3, block_size=32)
    blocks = np.asarray(t_block).reshape(64, 8, 32)
    assert (blocks == blocks[..., :1]).all() and np.unique(blocks[:, :, 0]).size == 64 * 8
    assert (np.asarray(t_block) > 1e-3).all() and (np.asarray(t_block) <= 1).all()


def test_noise_masks_with_the_tokenizers_mask_and_spares_its_pad():
    x0 = jnp.arange(4 * 64).reshape(4, 64) % 50
    xt, masked, _ = noise(jax.random.key(0), x0, 0.5, pad_id=3, mask_id=7)
    np.testing.assert_array_equal(np.where(masked, 7, x0), xt)
    assert masked.any() and not masked[x0 == 3].any()
    _, masked, _ = noise(jax.random.key(0), x0, 0.5, pad_id=None, mask_id=7)  # no PAD
    assert masked[x0 == 3].any()


def test_block_diffusion_forward_is_each_noised_block_over_its_clean_prefix(
        tiny_model_and_params):
    """One 2L forward == for every block b, a forward of [clean blocks < b, noised block b]:
    the exactness a KV cache of committed clean blocks relies on at sampling time."""
    model, params = tiny_model_and_params
    s, x0 = 4, jax.random.randint(jax.random.key(2), (2, 16), 0, 256)
    xt, _, _ = noise(jax.random.key(3), x0, 0.3, block_size=s)
    logits = denoiser_logits(model, params, xt, x0, s)
    forward = jax.jit(lambda seq: model.forward(params, seq, mask="block_causal", block_size=s)[0])
    for b in range(4):  # blocks after b (here: noised ones) are unseen by block b
        seq = jnp.concatenate([x0[:, :b * s], xt[:, b * s:]], axis=1)
        np.testing.assert_allclose(logits[:, b * s:(b + 1) * s],
                                   forward(seq)[:, b * s:(b + 1) * s], atol=2e-5)


def test_diffusion_run_trains_reports_the_elbo_and_samples(data_dir, tmp_path, capsys):
    from launch.generate import main as generate_cli
    for block_size in (0, 16):
        cfg = config_lib.load(REPO / "configs/experiments/tiny_diffusion.yaml", [
            f"data.data_dir={data_dir}", f"train.run_dir={tmp_path / str(block_size)}",
            f"objective.block_size={block_size}", "train.steps=30", "train.eval_every=30",
            "train.checkpoint_every=30"])
        result = train(cfg, progress=False)
        assert sorted(result.losses) == list(range(1, 31))
        assert_loss_falls(result.losses, 0.5, block_size)
        assert 0 < result.evals[-1]["val_bits_per_byte"] < 8.5
    run = str(tmp_path / "16")
    assert generate_cli(["--checkpoint", run, "--prompt", "def f(x):", "--max-new-tokens", "32",
                         "--block-size", "16", "--threshold", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "diffusion (threshold 0.9, blocks of 16): 32 tokens" in out and "forwards" in out
    assert generate_cli(["--checkpoint", run, "--prompt", "x", "--block-size", "5"]) == 2
    assert "block_size=5 does not divide the answer length 32" in capsys.readouterr().err
    assert generate_cli(["--checkpoint", run, "--prompt", "x", "--speculative",
                         "prompt_lookup"]) == 2
    assert "objective is 'masked_diffusion'" in capsys.readouterr().err
