import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.layers.attention import attention_mask
from zoo.models import build_model

from conftest import tiny_model_config


def _tokens(seed, shape, vocab=256):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


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
