"""The train step in bfloat16 mixed precision (`model.dtype: bfloat16`, `model.param_dtype:
float32`): float32 master params and optimizer state, bfloat16 compute, and a loss curve close to
float32's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import config as config_lib
from zoo.models import build_model
from zoo.train.optimizer import learning_rate_schedule, make_optimizer
from zoo.train.steps import init_state, make_train_step

from conftest import REPO


def _losses(experiment: str, dtype: str, steps: int = 12):
    config = config_lib.load(REPO / f"configs/experiments/{experiment}.yaml", [
        f"model.dtype={dtype}", "model.param_dtype=float32", "train.warmup_steps=0"])
    model = build_model(config.model)
    tx = make_optimizer(config.train)
    step = make_train_step(model, tx, learning_rate_schedule(config.train))
    state = init_state(model, tx, jax.random.key(0))
    rows = np.tile(np.random.default_rng(0).integers(0, 256, (8, 16)), 5)[:, :65]  # repeats
    batch = {"inputs": jnp.asarray(rows[:, :-1]), "targets": jnp.asarray(rows[:, 1:])}
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return np.array(losses), state


@pytest.mark.parametrize("experiment", ["tiny", "tiny_mamba2"])
def test_bfloat16_compute_trains_like_float32_on_float32_state(experiment):
    f32, _ = _losses(experiment, "float32")
    bf16, state = _losses(experiment, "bfloat16")
    kinds = {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state))
             if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert kinds == {jnp.dtype(jnp.float32)}, kinds
    assert bf16[-1] < bf16[0] - 1.0, bf16
    np.testing.assert_allclose(bf16, f32, rtol=0.03)
