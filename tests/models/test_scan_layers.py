"""Layers under nn.scan and nn.remat (model.scan_layers, model.remat) compute what the unrolled,
remat-free model computes, for every family; the two param layouts convert both ways."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.config import REMAT_POLICIES, ConfigError, ModelConfig
from zoo.models import build_model
from zoo.models.stacking import stack_layers, unstack_layers

from conftest import loud_ssm_params, tiny_model_config, tiny_ssm_config

CONFIGS = {
    "transformer": tiny_model_config(n_layers=3),
    "mamba2": tiny_ssm_config("mamba2", n_layers=4),
    "hybrid": tiny_ssm_config("hybrid", n_layers=4, layer_pattern="mama"),
}


def _close(a, b, atol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=atol), a, b)


def test_config_validates_scan_layers_and_remat():
    assert ModelConfig(family="hybrid", n_layers=6, layer_pattern="mmammm").scan_period == "mmammm"
    assert ModelConfig(family="hybrid", n_layers=6, layer_pattern="mamama").scan_period == "ma"
    assert ModelConfig(n_layers=4, scan_layers=True).scan_period == "a"
    with pytest.raises(ConfigError, match=r"model.scan_layers=True: needs a model.layer_pattern "
                                          r"that repeats .* 'mmammm' does not"):
        ModelConfig(family="hybrid", n_layers=6, layer_pattern="mmammm", scan_layers=True)
    with pytest.raises(ConfigError, match=r"model.remat='dots': must be one of \['none', 'full', "
                                          r"'checkpoint_dots'"):
        ModelConfig(remat="dots")


def test_remat_policy_names_are_jax_checkpoint_policies():
    for name in REMAT_POLICIES:
        assert callable(getattr(jax.checkpoint_policies, name)), name


@functools.cache
def _params(family):
    """The unrolled model's init (Mamba2 layers made loud, see conftest)."""
    params = build_model(CONFIGS[family]).init(jax.random.key(0))
    return params if family == "transformer" else loud_ssm_params(params)


def test_scanned_init_is_the_unrolled_init_stacked():
    """One seed, one model, in either layout; the stacked axis is named "layers"."""
    config = dataclasses.replace(CONFIGS["hybrid"], scan_layers=True)
    model = build_model(config)
    stacked = model.init(jax.random.key(0))
    params = build_model(CONFIGS["hybrid"]).init(jax.random.key(0))
    assert not any(k.startswith("block_") for k in stacked)
    assert sorted(stacked["layers"]) == ["block_0", "block_1"]  # period "ma"
    assert jax.tree.leaves(stacked["layers"])[0].shape[0] == 2
    _close(stacked, stack_layers(params, config), 0)
    _close(unstack_layers(stacked, config), params, 0)
    axes = jax.tree.leaves(model.logical_axes()["layers"],
                           is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert all(spec[0] == "layers" for spec in axes)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_scanned_forward_equals_unrolled(family):
    config = CONFIGS[family]
    scanned_config = dataclasses.replace(config, scan_layers=True)
    model, scanned = build_model(config), build_model(scanned_config)
    params, tokens = _params(family), _tokens(config)
    forward = jax.jit(lambda m, p: m.forward(p, tokens), static_argnums=0)
    want = forward(model, params)
    _close(forward(scanned, stack_layers(params, scanned_config)), want, 2e-5)
    _close(forward(scanned, params), want, 0)  # per-layer params run unrolled


def _tokens(config):
    return jax.random.randint(jax.random.key(1), (2, 24), 0, config.vocab_size)


def _grad(model, params, tokens):
    return jax.grad(lambda p: jnp.mean(model.forward(p, tokens)[0] ** 2))(params)


@pytest.fixture(scope="module")
def hybrid_gradient():
    """The unrolled, remat-free hybrid's params and gradient (it has both block kinds)."""
    params = _params("hybrid")
    model = build_model(CONFIGS["hybrid"])
    return params, jax.jit(_grad, static_argnums=0)(model, params, _tokens(model.config))


@pytest.mark.parametrize("scan, remat", [(False, "full"), (True, "none"), (True, "full"),
                                         (True, "dots_with_no_batch_dims_saveable")])
def test_gradients_equal_under_remat(hybrid_gradient, scan, remat):
    """Remat shows in the traced gradient iff asked for, and changes no number."""
    params, want = hybrid_gradient
    config = dataclasses.replace(CONFIGS["hybrid"], scan_layers=scan, remat=remat)
    model = build_model(config)
    convert = (lambda p: stack_layers(p, config)) if scan else (lambda p: p)
    args = (convert(params), _tokens(config))
    traced = jax.jit(_grad, static_argnums=0).trace(model, *args)
    assert ("remat" in str(traced.jaxpr)) == (remat != "none")
    _close(traced.lower().compile()(*args), convert(want), 1e-6)


def test_decoding_refuses_stacked_params_and_runs_on_unstacked():
    config = dataclasses.replace(CONFIGS["transformer"], scan_layers=True)
    model = build_model(config)
    stacked = stack_layers(_params("transformer"), config)
    tokens = jnp.array([[5, 6, 7, 8]], jnp.int32)
    with pytest.raises(ValueError, match=r"decoding reads per-layer params .*unstack_layers"):
        model.prefill(stacked, tokens, jnp.array([4]), 8)
    prefill = jax.jit(model.prefill, static_argnums=3)
    logits, _, _ = prefill(unstack_layers(stacked, config), tokens, jnp.array([4]), 8)
    _close(logits, jax.jit(model.forward)(stacked, tokens)[0], 2e-5)
