import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo_kernels.trees import (SAME_BLOCK, ancestor_mask, block_parents, chain_parents,
                               node_depths, stacked_visible_mask, visible_mask)
from zoo_kernels.tree_attention import tree_attention

from conftest import random_parents


def brute_force_ancestors(parents: np.ndarray) -> np.ndarray:
    """Ancestors-or-self, a block read as a chain (SAME_BLOCK: the parent is the node before)."""
    t = len(parents)
    anc = np.zeros((t, t), bool)
    for i in range(t):
        j = i
        while j >= 0:
            anc[i, j] = True
            j = j - 1 if parents[j] == SAME_BLOCK else parents[j]
    return anc


def brute_force_visible(parents: np.ndarray) -> np.ndarray:
    """Node i sees node j when j's block is i's block or the block of one of its ancestors
    (a node outside any block is a block of one)."""
    block = np.cumsum(parents != SAME_BLOCK) - 1
    anc = brute_force_ancestors(parents)
    return np.array([[anc[i, block == block[j]].any() for j in range(len(parents))]
                     for i in range(len(parents))])


@pytest.mark.parametrize("t", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("kind", ["chain", "star", "random", "block", "block_tree"])
def test_ancestor_mask_and_depths(t, kind):
    parents = random_parents(np.random.default_rng(t), t, kind)
    anc = brute_force_ancestors(parents)
    np.testing.assert_array_equal(ancestor_mask(jnp.asarray(parents)), anc)
    np.testing.assert_array_equal(node_depths(jnp.asarray(parents)), anc.sum(1) - 1)
    vis = brute_force_visible(parents)
    np.testing.assert_array_equal(visible_mask(jnp.asarray(parents)), vis)
    # The in-kernel form (2-D iotas and dots), stacked for 3 query heads.
    stacked = stacked_visible_mask(jnp.asarray(parents, jnp.int32)[:, None], 3 * t)
    np.testing.assert_array_equal(stacked, np.tile(vis, (3, 1)))
    if kind in ("chain", "star", "random"):
        np.testing.assert_array_equal(vis, anc)  # no blocks: attention follows the tree


def test_block_semantics():
    """A block sees itself whole; a node hanging off a block sees all of it, a sibling block
    none of the other."""
    np.testing.assert_array_equal(block_parents(3), [-1, -2, -2])
    np.testing.assert_array_equal(node_depths(block_parents(4)), [0, 1, 2, 3])
    assert visible_mask(block_parents(5)).all()
    vis = np.asarray(visible_mask(jnp.array([-1, -2, 1, -2, 1, -2])))  # block {0,1}, then {2,3}, {4,5}
    np.testing.assert_array_equal(vis, [
        [1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1]])


def test_chain_parents():
    np.testing.assert_array_equal(chain_parents(4), [-1, 0, 1, 2])


def _case(seed, b, t, s, h, kv, d, kind, dtype):
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(keys[0], (b, t, h, d), dtype)
    k_cache = jax.random.normal(keys[1], (b, kv, s, d), dtype)
    v_cache = jax.random.normal(keys[2], (b, kv, s, d), dtype)
    k_new = jax.random.normal(keys[3], (b, t, kv, d), dtype)
    v_new = jax.random.normal(keys[4], (b, t, kv, d), dtype)
    # Ragged lengths: an empty row, a full row, the rest anywhere in [1, S] (not block multiples).
    lengths = [0, s] if b > 1 else []
    lengths += list(rng.integers(1, s + 1, size=b - len(lengths)))
    cache_len = jnp.asarray(lengths, jnp.int32)
    parents = jnp.asarray(np.stack([random_parents(rng, t, kind) for _ in range(b)]), jnp.int32)
    return q, k_cache, v_cache, cache_len, k_new, v_new, parents


@pytest.mark.parametrize("b, t, s, h, kv, d", [
    (1, 1, 16, 4, 4, 16), (3, 7, 37, 4, 2, 32), (2, 16, 64, 8, 2, 64), (4, 5, 9, 2, 1, 16)])
@pytest.mark.parametrize("kind", ["chain", "star", "random", "block", "block_tree"])
def test_xla_equals_reference(b, t, s, h, kv, d, kind):
    args = _case(b * 100 + t, b, t, s, h, kv, d, kind, jnp.float32)
    want = tree_attention(*args, backend="reference")
    got = tree_attention(*args, backend="xla")
    chex.assert_shape(got, (b, t, h, d))
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_close(tree_attention(*args), want, atol=2e-5, rtol=2e-5)  # auto


def test_xla_equals_reference_bfloat16():
    args = _case(7, 2, 7, 40, 4, 2, 32, "random", jnp.bfloat16)
    want = tree_attention(*args, backend="reference").astype(jnp.float32)
    got = tree_attention(*args, backend="xla")
    assert got.dtype == jnp.bfloat16
    chex.assert_trees_all_close(got.astype(jnp.float32), want, atol=2e-2, rtol=2e-2)


def test_xla_reads_a_bfloat16_cache_without_a_float32_copy():
    """The cache is the big operand of a decode step: it is read as stored, never converted to a
    float32 [B, K, S, D] copy."""
    args = _case(7, 2, 3, 40, 4, 2, 32, "random", jnp.bfloat16)
    program = jax.jit(lambda *a: tree_attention(*a, backend="xla")).lower(*args).as_text()
    assert "tensor<2x2x40x32xbf16>" in program and "tensor<2x2x40x32xf32>" not in program


@pytest.mark.parametrize("lengths", [[3, 100], [0, 128], [5, 129], [256, 1], [0, 512]])
def test_xla_reads_only_the_cache_prefix_the_longest_row_needs(lengths):
    """A 512-slot cache is read as its first 128, 256 or 512 slots, whichever holds the longest
    row: same result as the reference, and slots past that prefix are never read (NaN there
    would poison p * V = 0 * NaN if they were)."""
    from zoo_kernels.tree_attention.xla import read_lengths

    assert read_lengths(512) == [128, 256, 512] and read_lengths(100) == [100]
    q, k_cache, v_cache, _, k_new, v_new, parents = _case(3, 2, 3, 512, 4, 2, 16, "random",
                                                          jnp.float32)
    cache_len = jnp.asarray(lengths, jnp.int32)
    want = tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents,
                          backend="reference")
    read = next(n for n in read_lengths(512) if n >= max(lengths))
    k_cache, v_cache = k_cache.at[:, :, read:].set(jnp.nan), v_cache.at[:, :, read:].set(jnp.nan)
    got = tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents, backend="xla")
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)


def test_reference_semantics_on_a_hand_case():
    """A node sees exactly the cache prefix and its ancestors: with one-hot values the output is
    the uniform average over those positions when all scores are equal (q = 0)."""
    s, t = 4, 3
    parents = jnp.array([[-1, 0, 0]])  # a star: nodes 1 and 2 both see only node 0 and themselves
    v_cache = jnp.eye(s + t)[None, None, :s, :]
    v_new = jnp.eye(s + t)[None, s:, None, :]
    zeros = lambda n: jnp.zeros((1, n, 1, s + t))  # noqa: E731
    out = tree_attention(zeros(t), zeros(s).transpose(0, 2, 1, 3), v_cache, jnp.array([2]), zeros(t), v_new, parents,
                         backend="reference")[0, :, 0]
    expected = np.zeros((t, s + t))
    expected[0, [0, 1, 4]] = 1 / 3
    expected[1, [0, 1, 4, 5]] = 1 / 4
    expected[2, [0, 1, 4, 6]] = 1 / 4
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # The same three nodes as one block: each sees the cache prefix and all three nodes.
    out = tree_attention(zeros(t), zeros(s).transpose(0, 2, 1, 3), v_cache, jnp.array([2]),
                         zeros(t), v_new, block_parents(t)[None], backend="reference")[0, :, 0]
    expected = np.zeros((t, s + t))
    expected[:, [0, 1, 4, 5, 6]] = 1 / 5
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_api_rejects_bad_backend_and_shapes():
    args = _case(0, 1, 2, 8, 2, 1, 16, "chain", jnp.float32)
    with pytest.raises(ValueError, match="unknown tree_attention backend 'cuda'"):
        tree_attention(*args, backend="cuda")
    q, kc, vc, cl, kn, vn, p = args
    with pytest.raises(ValueError, match="k_new has shape"):
        tree_attention(q, kc, vc, cl, kn[:, :1], vn, p)
    with pytest.raises(ValueError, match="parents"):
        tree_attention(q, kc, vc, cl, kn, vn, p[:, :1])
