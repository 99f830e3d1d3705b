import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.trees import chain_parents
from zoo.layers.attention import attention_mask
from zoo.models import build_model

from conftest import random_parents, tiny_model_config


def _tokens(seed, shape, vocab=256):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


def _next_logits(model, params, seq, pad_to=32):
    """Logits after the last token of `seq` from one causal forward (padding after it is unseen),
    padded to a fixed length so every call reuses one compilation."""
    padded = jnp.zeros((1, pad_to), jnp.int32).at[0, :len(seq)].set(seq)
    return jax.jit(model.forward)(params, padded)[0][0, len(seq) - 1]


def test_params_shapes_and_logical_axes(tiny_model_and_params):
    model, params = tiny_model_and_params
    axes = model.logical_axes()
    assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) \
        == jax.tree.structure(params)
    chex.assert_shape(params["block_0"]["attn"]["q"]["kernel"], (64, 4, 16))
    chex.assert_shape(params["block_0"]["attn"]["k"]["kernel"], (64, 2, 16))
    assert tuple(axes["block_0"]["attn"]["k"]["kernel"]) == ("embed", "kv_heads", "head_dim")
    assert tuple(axes["embed"]["embedding"]) == ("vocab", "embed")
    assert "lm_head" in params  # untied by default
    tied = build_model(tiny_model_config(tie_embeddings=True)).init(jax.random.key(0))
    assert "lm_head" not in tied


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dtypes(dtype):
    model = build_model(tiny_model_config(dtype=dtype, param_dtype=dtype))
    params = model.init(jax.random.key(0))
    assert all(p.dtype == jnp.dtype(dtype) for p in jax.tree.leaves(params))
    logits, hidden = model.forward(params, _tokens(0, (2, 8)))
    assert logits.dtype == jnp.float32 and hidden.dtype == jnp.dtype(dtype)
    assert jnp.isfinite(logits).all()


def test_prefill_then_chain_extends_equal_full_forward(tiny_model_and_params):
    model, params = tiny_model_and_params
    tokens = _tokens(1, (2, 12))
    full, _ = model.forward(params, tokens)
    logits, _, cache = model.prefill(params, tokens[:, :5], jnp.array([5, 5]), max_len=32)
    chex.assert_trees_all_close(logits, full[:, :5], atol=1e-5)
    # A 4-token chain in one extend, then commit it and extend the remaining 3 one by one.
    chain_logits, _, pending = model.extend(params, cache, tokens[:, 5:9], chain_parents(4))
    chex.assert_trees_all_close(chain_logits, full[:, 5:9], atol=1e-5)
    cache = model.commit(cache, pending, jnp.tile(jnp.arange(4), (2, 1)), jnp.array([4, 4]))
    np.testing.assert_array_equal(cache.lengths, [9, 9])
    for i in range(9, 12):
        step_logits, _, pending = model.extend(params, cache, tokens[:, i:i + 1], chain_parents(1))
        chex.assert_trees_all_close(step_logits[:, 0], full[:, i], atol=1e-5)
        cache = model.commit(cache, pending, jnp.zeros((2, 1), jnp.int32), jnp.array([1, 1]))


def test_ragged_prefill_rows_equal_their_own_forwards(tiny_model_and_params):
    model, params = tiny_model_and_params
    tokens = _tokens(2, (2, 10))
    lengths = jnp.array([10, 4])
    logits, _, cache = model.prefill(params, tokens, lengths, max_len=16)
    short, _ = model.forward(params, tokens[1:, :4])
    chex.assert_trees_all_close(logits[1, :4], short[0], atol=1e-5)
    nxt = _tokens(3, (2, 1))
    step, _, _ = model.extend(params, cache, nxt, chain_parents(1))
    want, _ = model.forward(params, jnp.concatenate([tokens[1:, :4], nxt[1:]], 1))
    chex.assert_trees_all_close(step[1, 0], want[0, -1], atol=1e-5)


@pytest.mark.parametrize("kind", ["random", "star", "chain"])
def test_tree_extend_equals_forward_along_each_path(tiny_model_and_params, kind):
    """Node i's logits from one tree extend == a plain forward over prefix + path(root..i)."""
    model, params = tiny_model_and_params
    rng = np.random.default_rng(4)
    b, t, prefix_len = 2, 9, np.array([6, 3])
    prefix = _tokens(5, (b, 6))
    parents = np.stack([random_parents(rng, t, kind) for _ in range(b)])
    nodes = _tokens(6, (b, t))
    _, _, cache = model.prefill(params, prefix, jnp.asarray(prefix_len), max_len=24)
    logits, _, pending = model.extend(params, cache, nodes, jnp.asarray(parents))
    for row in range(b):
        for i in range(t):
            path, j = [], i
            while j >= 0:
                path.insert(0, j)
                j = parents[row, j]
            seq = jnp.concatenate([prefix[row, :prefix_len[row]], nodes[row, jnp.array(path)]])
            chex.assert_trees_all_close(logits[row, i], _next_logits(model, params, seq),
                                        atol=1e-5)
    # Committing a root-to-leaf path then extending equals the forward of prefix + that path.
    leaf = t - 1
    path, j = [], leaf
    while j >= 0:
        path.insert(0, j)
        j = parents[0, j]
    paths = np.zeros((b, t), np.int32)
    paths[0, :len(path)] = path
    n_acc = jnp.array([len(path), 0])
    cache = model.commit(cache, pending, jnp.asarray(paths), n_acc)
    np.testing.assert_array_equal(cache.lengths, prefix_len + np.array([len(path), 0]))
    nxt = _tokens(7, (b, 1))
    step, _, _ = model.extend(params, cache, nxt, chain_parents(1))
    seq = jnp.concatenate([prefix[0, :6], nodes[0, jnp.array(path)], nxt[0]])
    chex.assert_trees_all_close(step[0, 0], _next_logits(model, params, seq), atol=1e-5)
    seq = jnp.concatenate([prefix[1, :3], nxt[1]])
    chex.assert_trees_all_close(step[1, 0], _next_logits(model, params, seq), atol=1e-5)


def test_extend_backends_agree(tiny_model_and_params):
    model, params = tiny_model_and_params
    ref_model = build_model(model.config, attention_backend="reference")
    _, _, cache = model.prefill(params, _tokens(8, (2, 5)), jnp.array([5, 2]), max_len=16)
    parents = jnp.asarray(np.stack([random_parents(np.random.default_rng(i), 6, "random")
                                    for i in range(2)]))
    a, _, _ = model.extend(params, cache, _tokens(9, (2, 6)), parents)
    b, _, _ = ref_model.extend(params, cache, _tokens(9, (2, 6)), parents)
    chex.assert_trees_all_close(a, b, atol=1e-5)


def test_attention_masks():
    causal = attention_mask("causal", 4)[0, 0]
    np.testing.assert_array_equal(causal, np.tril(np.ones((4, 4), bool)))
    assert attention_mask("bidirectional", 3).all()
    block = attention_mask("block_causal", 4, block_size=2)[0, 0]
    np.testing.assert_array_equal(block, [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    seg = attention_mask("causal", 3, segment_ids=jnp.array([[0, 0, 1]]))[0, 0]
    np.testing.assert_array_equal(seg, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="block_size"):
        attention_mask("block_causal", 4)
    with pytest.raises(ValueError, match="unknown attention mask kind 'sliding'"):
        attention_mask("sliding", 4)


def test_mask_kinds_change_what_the_forward_sees(tiny_model_and_params):
    model, params = tiny_model_and_params
    a = _tokens(10, (1, 8))
    b = a.at[0, 7].set((a[0, 7] + 1) % 256)  # change only the last token
    for mask, block, changed_prefix in [("causal", 0, 7), ("block_causal", 4, 4),
                                        ("bidirectional", 0, 0)]:
        la, _ = model.forward(params, a, mask=mask, block_size=block)
        lb, _ = model.forward(params, b, mask=mask, block_size=block)
        same = np.all(np.isclose(la[0], lb[0], atol=1e-6), axis=-1)
        assert same[:changed_prefix].all() and not same[changed_prefix:].any(), mask


def test_prefill_rejects_prompt_longer_than_cache(tiny_model_and_params):
    model, params = tiny_model_and_params
    with pytest.raises(ValueError, match="does not fit a KV cache of 4"):
        model.prefill(params, _tokens(0, (1, 6)), jnp.array([6]), max_len=4)
