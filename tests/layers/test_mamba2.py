"""The Mamba2 mixer's convolutions: over a tree each node reads its own ancestors; the commit's
window and path mask."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.layers.mamba2 import causal_conv, conv_taps, tree_conv
from zoo_kernels.trees import ancestor_mask
from zoo.layers.ssm_cache import advance_window, path_mask

from conftest import random_parents

W, C = 4, 6


def _path(parents, node):
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


@pytest.mark.parametrize("kind", ["chain", "star", "random"])
@pytest.mark.parametrize("t", [1, 5, 12])
def test_tree_conv_equals_the_sequence_conv_along_every_path(kind, t):
    rng = np.random.default_rng(t)
    k = jax.random.split(jax.random.key(t), 4)
    inputs = jax.random.normal(k[0], (2, t, C))
    weight, bias = jax.random.normal(k[1], (W, C)), jax.random.normal(k[2], (C,))
    window = jax.random.normal(k[3], (2, W - 1, C))
    parents = np.stack([random_parents(rng, t, kind) for _ in range(2)])
    got = tree_conv(inputs, weight, bias, window, conv_taps(jnp.asarray(parents, jnp.int32), W))
    for row in range(2):
        for node in range(t):
            path = _path(parents[row], node)
            seq = causal_conv(inputs[row:row + 1, path], weight, bias, window[row:row + 1])
            chex.assert_trees_all_close(got[row, node], seq[0, -1], atol=1e-5, rtol=1e-5)


def test_advance_window_keeps_the_last_inputs_per_row():
    window = jnp.arange(6.0).reshape(2, 3, 1)  # rows [0, 1, 2] and [3, 4, 5]
    inputs = 10 + jnp.arange(8.0).reshape(2, 4, 1)  # rows [10..13] and [14..17]
    out = advance_window(window, inputs, jnp.array([0, 2]))[..., 0]
    np.testing.assert_array_equal(out, [[0, 1, 2], [5, 14, 15]])
    out = advance_window(window, inputs, jnp.array([4, 1]))[..., 0]
    np.testing.assert_array_equal(out, [[11, 12, 13], [4, 5, 14]])



def test_path_mask_is_the_ancestor_mask_row_of_the_last_accepted_node():
    """A commit reads the accepted node's path off the verdict (root first, zero-padded), not
    off the tree; with nothing accepted, no node."""
    rng = np.random.default_rng(3)
    parents = np.stack([random_parents(rng, 9, "random") for _ in range(4)])
    last = [8, 0, 5, -1]
    path, n = np.zeros((4, 9), np.int32), np.zeros(4, np.int32)
    for row, node in enumerate(last):
        walk = _path(parents[row], node)
        path[row, :len(walk)], n[row] = walk, len(walk)
    got = np.asarray(path_mask(jnp.asarray(path), jnp.asarray(n), 9))
    anc = np.asarray(ancestor_mask(jnp.asarray(parents, jnp.int32)))
    want = np.stack([anc[row, node] if node >= 0 else np.zeros(9, bool)
                     for row, node in enumerate(last)])
    np.testing.assert_array_equal(got, want)
