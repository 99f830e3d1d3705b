import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import config as config_lib
from zoo.config import ConfigError, HeadsConfig
from zoo.models.heads import build_heads, target_unembedding

from conftest import REPO, tiny_model_config, tiny_ssm_config


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
    (["heads.kind=eagle"],
     "heads.kind='eagle': must be one of ['none', 'medusa', 'hydra', 'falcon']"),
    (["heads.kind=medusa"], "heads.target_run='': must name the target's run directory"),
    (["heads.kind=hydra", "heads.target_run=r", "heads.num_heads=0"],
     "heads.num_heads=0: must be > 0"),
    (["heads.num_layers=-1"], "heads.num_layers=-1: must be > 0"),
    (["heads.shared_lm_head=2"], "heads.shared_lm_head=2: must be true or false"),
    (["heads.kind=falcon", "heads.target_run=r", "heads.block_size=0"],
     "heads.block_size=0: must be > 0"),
    (["heads.kind=falcon", "heads.target_run=r", "heads.num_heads=2", "heads.block_size=3"],
     "heads.block_size=3: must be <= heads.num_heads=2 (the deepest draft depth)"),
])
def test_bad_heads_config_names_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        config_lib.load(REPO / "configs/experiments/tiny.yaml", override)
    assert message in str(err.value)


def test_shipped_heads_experiments_load_without_their_target():
    for kind in ("medusa", "hydra", "falcon"):
        cfg = config_lib.load(REPO / f"configs/experiments/code_small_{kind}.yaml")
        assert cfg.heads.kind == kind and cfg.heads.target_run == "runs/code_small"
        assert cfg.model == config_lib.load(REPO / "configs/experiments/code_small.yaml").model
        assert cfg.train.run_dir != cfg.heads.target_run


def _falcon(config, **kw):
    """Falcon heads 5 deep in blocks of 2 (depths 1-2, 3-4, 5: the last block is short), two
    layers, so a context slot that looked ahead would leak into the next layer's queries."""
    return build_heads(HeadsConfig(kind="falcon", target_run="x", **{
        "num_heads": 5, "block_size": 2, "num_layers": 2, **kw}), config)


def _loud(params, seed=1):
    """Weights of order one: at init (std 0.02) an effect through two attention hops is ~1e-7,
    below any float tolerance, so a leak would go unseen."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten([x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_falcon_params_shapes_and_logical_axes(tiny_model_and_params):
    model, params = tiny_model_and_params
    for shared in (True, False):
        heads = _falcon(model.config, shared_lm_head=shared)
        head_params, axes = (jax.eval_shape(heads.init, jax.random.key(0)) if shared else
                             heads.init(jax.random.key(0), params)), heads.logical_axes()
        assert jax.tree.structure(axes, is_leaf=_is_spec) == jax.tree.structure(head_params)
        assert set(head_params) == {"inputs", "layer_0", "layer_1", "offsets"} | (
            set() if shared else {"lm_head"})
        chex.assert_shape([head_params["offsets"], head_params["layer_1"]["attn"]["q"]["kernel"]],
                          [(2, 64), (64, 4, 16)])  # an offset per query of a block
        assert tuple(axes["offsets"]) == ("draft_inputs", "embed")
    np.testing.assert_array_equal(head_params["lm_head"]["kernel"], params["lm_head"]["kernel"])
    hybrid = _falcon(tiny_ssm_config("hybrid"))  # any target: the layers are the drafter's own
    target = {"embed": {"embedding": jnp.ones((260, 32))}, "lm_head": {"kernel": jnp.ones((32,
                                                                                          260))}}
    out = jax.eval_shape(hybrid.logits, jax.eval_shape(hybrid.init, jax.random.key(0)), target,
                         jnp.ones((2, 32)), jnp.zeros((2, 5), jnp.int32))
    chex.assert_shape(out, (2, 5, 260))


@pytest.fixture(scope="module")
def falcon(tiny_model_and_params):
    """(heads, loud head params, target params, hidden [3, E], tokens [3, 5]), built once."""
    model, params = tiny_model_and_params
    heads = _falcon(model.config)
    return (heads, _loud(heads.init(jax.random.key(1))), params,
            jax.random.normal(jax.random.key(2), (3, 64)),
            jax.random.randint(jax.random.key(3), (3, 5), 0, 256))


def test_falcon_block_is_coupled_and_sees_only_the_context_before_it(falcon):
    """Query q (depth q+1) sees the context up to its block's boundary and its block's other
    queries, nothing else: changing a query's input moves its block-mates only, changing the
    token at depth j moves only the blocks after depth j. Blocks: depths 1-2 (boundary 0),
    3-4 (boundary 2), 5 (boundary 4)."""
    heads, head_params, params, hidden, tokens = falcon
    logits = jax.jit(heads.logits)
    out = logits(head_params, params, hidden, tokens)

    def moved(changed):
        return [not np.allclose(changed[:, q], out[:, q], rtol=0, atol=1e-6) for q in range(5)]

    none = jnp.zeros((3, 5), bool)
    for q, mates in [(1, {0, 1}), (3, {2, 3})]:  # query q reads token q (depth q) when glanced
        got = moved(logits(head_params, params, hidden, tokens, none.at[:, q].set(True)))
        assert got == [p in mates for p in range(5)], (q, got)
    for depth, later in [(0, 0), (1, 2), (2, 2), (3, 4), (4, 4)]:  # blocks with boundary >= it
        got = moved(logits(head_params, params, hidden, tokens.at[:, depth].add(1)))
        assert got == [p >= later for p in range(5)], (depth, got)
    np.testing.assert_array_equal(  # glancing the first query of a block changes nothing
        logits(head_params, params, hidden, tokens, none.at[:, 2].set(True)), out)


def test_falcon_block_by_block_equals_the_teacher_forced_forward(falcon):
    """Drafting runs one block at a time on its context; training runs all blocks at once
    under one mask. Both give the same logits (the short last block too), so the drafter is
    what training trained."""
    heads, head_params, params, hidden, tokens = falcon

    @jax.jit
    def both(head_params, tokens):
        return heads.logits(head_params, params, hidden, tokens), [
            heads.block_logits(head_params, params, hidden, tokens[:, : m + 1])
            for m in (0, 2, 4)]

    out, blocks = both(head_params, tokens)
    for m, got in zip((0, 2, 4), blocks):
        chex.assert_shape(got, (3, min(2, 5 - m), 260))
        np.testing.assert_allclose(got, out[:, m: m + got.shape[1]], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="must end at a block boundary"):
        heads.block_logits(head_params, params, hidden, tokens[:, :2])
    with pytest.raises(ValueError, match="for Falcon heads, not hydra heads"):
        build_heads(HeadsConfig(kind="hydra", target_run="x"), heads.model).block_logits(
            None, params, hidden, tokens[:, :1])
