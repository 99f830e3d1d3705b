import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import config as config_lib
from zoo.config import ConfigError, HeadsConfig
from zoo.models.heads import build_heads, target_unembedding

from conftest import REPO, tiny_model_config


def _heads(model, kind, **kw):
    return build_heads(HeadsConfig(kind=kind, target_run="x", num_heads=3, **kw), model.config)


def _is_spec(x):
    return isinstance(x, jax.sharding.PartitionSpec)


def test_heads_params_shapes_and_logical_axes(tiny_model_and_params):
    model, _ = tiny_model_and_params
    medusa = _heads(model, "medusa", num_layers=2, shared_lm_head=False)
    params, axes = medusa.init(jax.random.key(0)), medusa.logical_axes()
    assert jax.tree.structure(axes, is_leaf=_is_spec) == jax.tree.structure(params)
    chex.assert_shape([params["res_0"], params["res_1"], params["lm_head"]],
                      [(3, 64, 64), (3, 64, 64), (3, 64, 260)])
    assert tuple(axes["res_1"]) == ("draft_heads", "embed", "mlp")
    assert tuple(axes["lm_head"]) == ("draft_heads", "embed", "vocab")
    assert set(_heads(model, "medusa").init(jax.random.key(0))) == {"res_0"}  # shared LM head

    hydra = _heads(model, "hydra")
    params, axes = hydra.init(jax.random.key(0)), hydra.logical_axes()
    assert jax.tree.structure(axes, is_leaf=_is_spec) == jax.tree.structure(params)
    assert sorted(params) == ["head_1", "head_2", "head_3"]
    chex.assert_shape(params["head_3"]["inputs"]["kernel"], (3, 64, 64))  # h + P [e1; e2; e3]
    assert tuple(axes["head_2"]["inputs"]["kernel"]) == ("draft_inputs", "embed", "mlp")
    assert tuple(axes["head_1"]["residual"]["res_0"]["kernel"]) == ("embed", "mlp")


def test_untrained_medusa_heads_start_as_the_targets_lm_head(tiny_model_and_params):
    """The W's start at zero, so every head begins with the target's own next-token logits;
    an own LM head starts as a copy of the target's."""
    model, params = tiny_model_and_params
    logits, hidden = jax.jit(model.forward)(params, jnp.array([[1, 2, 3, 4, 5]]))
    for shared in (True, False):
        heads = _heads(model, "medusa", shared_lm_head=shared)
        out = jax.jit(heads.logits)(heads.init(jax.random.key(1), params), params, hidden)
        chex.assert_shape(out, (1, 5, 3, 260))
        for k in range(3):
            np.testing.assert_allclose(out[:, :, k], logits, atol=1e-4)
    table = jnp.arange(6.0).reshape(3, 2)  # a tied target's LM head is its embedding's transpose
    np.testing.assert_array_equal(
        target_unembedding(tiny_model_config(tie_embeddings=True), {"embed": {"embedding": table}}),
        table.T)


def test_hydra_heads_read_only_the_tokens_before_their_depth(tiny_model_and_params):
    model, params = tiny_model_and_params
    heads = _heads(model, "hydra", shared_lm_head=False)
    head_params = heads.init(jax.random.key(1), params)
    hidden = jax.random.normal(jax.random.key(2), (4, 64))
    tokens = jnp.array([[7, 8, 9]] * 4)
    logits, head_logits = jax.jit(heads.logits), jax.jit(heads.head_logits)
    out = logits(head_params, params, hidden, tokens)
    chex.assert_shape(out, (4, 3, 260))
    for k in (1, 2, 3):  # one depth at a time (drafting) == teacher-forced (training)
        np.testing.assert_allclose(head_logits(head_params, params, hidden, tokens[:, :k]),
                                   out[:, k - 1], atol=1e-5)
    changed = logits(head_params, params, hidden, tokens.at[:, 1].set(100))
    np.testing.assert_allclose(changed[:, 0], out[:, 0], atol=1e-5)  # head 1 reads token 1 only
    assert not np.allclose(changed[:, 1], out[:, 1], atol=1e-3)
    with pytest.raises(ValueError, match=r"need tokens \[..., 3\]"):
        heads.logits(head_params, params, hidden)


@pytest.mark.parametrize("override, message", [
    (["heads.kind=eagle"], "heads.kind='eagle': must be one of ['none', 'medusa', 'hydra']"),
    (["heads.kind=medusa"], "heads.target_run='': must name the target's run directory"),
    (["heads.kind=hydra", "heads.target_run=r", "heads.num_heads=0"],
     "heads.num_heads=0: must be > 0"),
    (["heads.num_layers=-1"], "heads.num_layers=-1: must be > 0"),
    (["heads.shared_lm_head=2"], "heads.shared_lm_head=2: must be true or false"),
])
def test_bad_heads_config_names_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        config_lib.load(REPO / "configs/experiments/tiny.yaml", override)
    assert message in str(err.value)


def test_shipped_heads_experiments_load_without_their_target():
    for kind in ("medusa", "hydra"):
        cfg = config_lib.load(REPO / f"configs/experiments/code_small_{kind}.yaml")
        assert cfg.heads.kind == kind and cfg.heads.target_run == "runs/code_small"
        assert cfg.model == config_lib.load(REPO / "configs/experiments/code_small.yaml").model
        assert cfg.train.run_dir != cfg.heads.target_run
