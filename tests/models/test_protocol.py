"""Every backbone honours the decoding protocol: prefill + extend (chains and trees) + commit give
the logits of plain forwards over the same tokens. Parametrised over the transformer, Mamba2 and
the hybrid (attention + Mamba2) model."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo_kernels.trees import block_parents, chain_parents
from zoo.models import build_model

from conftest import loud_ssm_params, random_parents, tiny_model_config, tiny_ssm_config

FAMILIES = ["transformer", "mamba2", "hybrid"]
# The transformer runs with every attention feature on: q/k/v biases, q/k norms and dynamic RoPE,
# stretched past position 8, whose frequencies depend on the position (a key cached with another
# length's frequencies would show). The hybrid's attention is plain.
FEATURES = dict(qkv_bias=True, qk_norm=True, rope_scaling="dynamic", rope_factor=4.0,
                max_positions=8)


def loud_attention_params(params):
    """Biases and q/k norm scales drawn at random (init gives zeros and ones)."""
    def loud(path, leaf):
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        if name.endswith("/bias") or name.endswith(("q_norm/scale", "k_norm/scale")):
            noise = jax.random.normal(jax.random.key(len(name)), leaf.shape, leaf.dtype)
            return leaf + 0.3 * noise
        return leaf
    return jax.tree_util.tree_map_with_path(loud, params)


@pytest.fixture(scope="module", params=FAMILIES)
def any_model(request):
    config = (tiny_model_config(**FEATURES) if request.param == "transformer"
              else tiny_ssm_config(request.param))
    model = build_model(config)
    return model, loud_attention_params(loud_ssm_params(model.init(jax.random.key(0))))


def _atol(model):
    return 1e-5 if model.config.family == "transformer" else 1e-4


@functools.cache
def _jitted(model):
    """(prefill, extend, commit, forward) jitted once per model (models are hashable): a fresh
    `jax.jit(model.forward)` per call would recompile every time."""
    return (jax.jit(model.prefill, static_argnames="max_len"), jax.jit(model.extend),
            jax.jit(model.commit), jax.jit(model.forward))


def _tokens(seed, shape, vocab=256):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


def _next_logits(model, params, seq, pad_to=32):
    """Logits after the last token of `seq` from one causal forward (padding after it is unseen),
    padded to a fixed length so every call reuses one compilation."""
    padded = np.zeros((1, pad_to), np.int32)
    padded[0, :len(seq)] = seq
    return np.asarray(_jitted(model)[3](params, padded)[0])[0, len(seq) - 1]


def test_prefill_then_chain_extends_equal_full_forward(any_model):
    model, params = any_model
    tokens = _tokens(1, (2, 12))
    full, _ = model.forward(params, tokens)
    logits, _, cache = _jitted(model)[0](params, tokens[:, :5], jnp.array([5, 5]), max_len=32)
    chex.assert_trees_all_close(logits, full[:, :5], atol=_atol(model))
    # A 4-token chain in one extend, then commit it and extend the remaining 3 one by one.
    chain_logits, _, pending = _jitted(model)[1](params, cache, tokens[:, 5:9], chain_parents(4))
    chex.assert_trees_all_close(chain_logits, full[:, 5:9], atol=_atol(model))
    cache = _jitted(model)[2](cache, pending, jnp.tile(jnp.arange(4), (2, 1)), jnp.array([4, 4]))
    np.testing.assert_array_equal(cache.lengths, [9, 9])
    for i in range(9, 12):
        step_logits, _, pending = _jitted(model)[1](params, cache, tokens[:, i:i + 1], chain_parents(1))
        chex.assert_trees_all_close(step_logits[:, 0], full[:, i], atol=_atol(model))
        cache = _jitted(model)[2](cache, pending, jnp.zeros((2, 1), jnp.int32), jnp.array([1, 1]))


def test_prefill_logits_at_computes_only_those_positions(any_model):
    """What decoders ask for: the last prompt token's logits per row, equal to the full
    prefill's there, and no [B, T, V] logits anywhere in the program."""
    model, params = any_model
    tokens, lengths = _tokens(2, (2, 12)), jnp.array([12, 7])
    full, _, _ = _jitted(model)[0](params, tokens, lengths, max_len=32)
    prefill_last = jax.jit(lambda p, t, n: model.prefill(p, t, n, 32, logits_at=(n - 1)[:, None]))
    last, _, _ = prefill_last(params, tokens, lengths)
    chex.assert_trees_all_close(last[:, 0], full[jnp.arange(2), lengths - 1], atol=_atol(model))
    program = prefill_last.lower(params, jnp.zeros((2, 24), jnp.int32), lengths).as_text()
    assert f"2x24x{model.vocab_size}x" not in program and f"2x1x{model.vocab_size}xf32" in program


def test_ragged_prefill_rows_equal_their_own_forwards(any_model):
    model, params = any_model
    tokens = _tokens(2, (2, 10))
    lengths = jnp.array([10, 4])
    logits, _, cache = _jitted(model)[0](params, tokens, lengths, max_len=16)
    short, _ = model.forward(params, tokens[1:, :4])
    chex.assert_trees_all_close(logits[1, :4], short[0], atol=_atol(model))
    nxt = _tokens(3, (2, 1))
    step, _, _ = _jitted(model)[1](params, cache, nxt, chain_parents(1))
    want, _ = model.forward(params, jnp.concatenate([tokens[1:, :4], nxt[1:]], 1))
    chex.assert_trees_all_close(step[1, 0], want[0, -1], atol=_atol(model))


@pytest.mark.parametrize("kind", ["random", "star", "chain"])
def test_tree_extend_equals_forward_along_each_path(any_model, kind):
    """Node i's logits from one tree extend == a plain forward over prefix + path(root..i)."""
    model, params = any_model
    rng = np.random.default_rng(4)
    b, t, prefix_len = 2, 9, np.array([6, 3])
    prefix = np.asarray(_tokens(5, (b, 6)))
    parents = np.stack([random_parents(rng, t, kind) for _ in range(b)])
    nodes = np.asarray(_tokens(6, (b, t)))
    _, _, cache = _jitted(model)[0](params, prefix, jnp.asarray(prefix_len), max_len=24)
    logits, _, pending = _jitted(model)[1](params, cache, nodes, jnp.asarray(parents))
    logits = np.asarray(logits)
    for row in range(b):
        for i in range(t):
            path, j = [], i
            while j >= 0:
                path.insert(0, j)
                j = parents[row, j]
            seq = np.concatenate([prefix[row, :prefix_len[row]], nodes[row, path]])
            np.testing.assert_allclose(logits[row, i], _next_logits(model, params, seq),
                                       atol=_atol(model), rtol=1e-6)
    # Committing a root-to-leaf path then extending equals the forward of prefix + that path.
    leaf = t - 1
    path, j = [], leaf
    while j >= 0:
        path.insert(0, j)
        j = parents[0, j]
    paths = np.zeros((b, t), np.int32)
    paths[0, :len(path)] = path
    n_acc = jnp.array([len(path), 0])
    cache = _jitted(model)[2](cache, pending, jnp.asarray(paths), n_acc)
    np.testing.assert_array_equal(cache.lengths, prefix_len + np.array([len(path), 0]))
    nxt = np.asarray(_tokens(7, (b, 1)))
    step, _, _ = _jitted(model)[1](params, cache, nxt, chain_parents(1))
    seq = np.concatenate([prefix[0, :6], nodes[0, path], nxt[0]])
    chex.assert_trees_all_close(step[0, 0], _next_logits(model, params, seq), atol=_atol(model))
    seq = np.concatenate([prefix[1, :3], nxt[1]])
    chex.assert_trees_all_close(step[1, 0], _next_logits(model, params, seq), atol=_atol(model))


def test_extend_backends_agree(any_model):
    model, params = any_model
    ref_model = build_model(model.config, kernel_backend="reference")
    _, _, cache = _jitted(model)[0](params, _tokens(8, (2, 5)), jnp.array([5, 2]), max_len=16)
    parents = jnp.asarray(np.stack([random_parents(np.random.default_rng(i), 6, "random")
                                    for i in range(2)]))
    a, _, _ = _jitted(model)[1](params, cache, _tokens(9, (2, 6)), parents)
    b, _, _ = _jitted(ref_model)[1](params, cache, _tokens(9, (2, 6)), parents)
    chex.assert_trees_all_close(a, b, atol=_atol(model))




def test_block_causal_prefill_and_block_extends_equal_block_causal_forward(tiny_model_and_params):
    """Next-block decoding's path: a block-causal prefill of whole blocks, then one extend per
    block (all nodes seeing each other) and a commit of all of it, per row at its own length,
    give the logits of one block-causal forward over the whole sequence."""
    model, params = tiny_model_and_params
    s, tokens = 4, _tokens(10, (2, 20))
    lengths = jnp.array([8, 4])  # whole blocks; row 1 is one block behind
    logits, _, cache = jax.jit(lambda t, n: model.prefill(
        params, t, n, max_len=24, mask="block_causal", block_size=s))(tokens[:, :8], lengths)
    full, _ = model.forward(params, tokens, mask="block_causal", block_size=s)
    _, extend, commit, _ = _jitted(model)
    chex.assert_trees_all_close(logits[0], full[0, :8], atol=1e-5)
    chex.assert_trees_all_close(logits[1, :4], full[1, :4], atol=1e-5)
    for step in range(2):
        start = lengths + s * step
        block = tokens[jnp.arange(2)[:, None], start[:, None] + jnp.arange(s)]
        got, _, pending = extend(params, cache, block, block_parents(s))
        for row in range(2):
            at = int(start[row])
            chex.assert_trees_all_close(got[row], full[row, at:at + s], atol=1e-5)
        cache = commit(cache, pending, jnp.tile(jnp.arange(s), (2, 1)), jnp.array([s, s]))
    np.testing.assert_array_equal(cache.lengths, lengths + 2 * s)


@pytest.mark.parametrize("family", ["mamba2", "hybrid"])
def test_causal_only_models_reject_other_prefill_masks(family):
    model = build_model(tiny_ssm_config(family))
    with pytest.raises(ValueError, match="Mamba2 layers are causal; mask 'block_causal'"):
        model.prefill(None, jnp.zeros((1, 4), jnp.int32), jnp.array([4]), 8,
                      mask="block_causal", block_size=2)
