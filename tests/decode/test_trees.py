import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo_kernels.trees
from conftest import random_parents
from zoo.decode import trees
from zoo.decode.trees import (PRESETS, chain_tree, expand_candidates, leaves, position_ids,
                              root_to_leaf_paths, select_dynamic_tree, static_tree,
                              validate_parents)

# --- validate_parents -----------------------------------------------------------------------


def test_validate_accepts_trees_and_returns_int32():
    out = validate_parents(np.array([-1, 0, 0, 1], np.int64))
    assert out.dtype == np.int32 and out.tolist() == [-1, 0, 0, 1]
    batched = validate_parents([[-1, 0, 1], [-1, 0, 0]])
    assert batched.shape == (2, 3) and batched.dtype == np.int32
    validate_parents([-1])  # the root alone


@pytest.mark.parametrize("parents, match", [
    ([[[-1]]], r"\[T\] or \[B, T\]"),
    (np.zeros((2, 0), np.int32), "no nodes"),
    ([-1.0, 0.0], "integers"),
    ([0, 0, 1], "node 0 must be the root"),
    ([-1, 0, 2, 1], "node 2 has parent 2, which is not before it"),
    ([-1, 0, 1, 5], "node 3 has parent 5, which is not before it"),
    ([-1, 0, -2], "node 2 has parent -2 < -1"),
    ([-1, 0, 1, -1], "node 3 is a second root"),
    ([[-1, 0, 1], [-1, 0, 0], [-1, -1, 0]], "row 2, node 1 is a second root"),
    ([[-1, 0, 1], [-1, 0, 3]], "row 1, node 2 has parent 3"),
])
def test_validate_rejects_bad_trees_naming_the_node(parents, match):
    with pytest.raises(ValueError, match=match):
        validate_parents(parents)


def test_validate_reports_the_first_bad_node():
    with pytest.raises(ValueError, match="row 0, node 2"):
        validate_parents([[-1, 0, 7, -1], [5, 0, 0, 0]])


# --- static trees ---------------------------------------------------------------------------

HAND_CHOICES = [(1,), (0,), (0, 0), (1, 0), (0, 1), (0, 0, 0)]


def test_static_tree_from_choices():
    tree = static_tree(HAND_CHOICES)
    # Node order: (), (0,), (1,), (0,0), (0,1), (1,0), (0,0,0).
    assert tree.paths == ((), (0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1, 2, 3]
    assert tree.ranks.tolist() == [0, 0, 1, 0, 1, 0, 0]
    assert tree.depth.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert (tree.num_nodes, tree.max_depth, tree.topk_per_depth) == (7, 3, (2, 2, 1))
    np.testing.assert_array_equal(tree.depth, zoo_kernels.trees.node_depths(jnp.asarray(tree.parents)))


def test_static_tree_is_canonical_hashable_and_a_static_jit_arg():
    shuffled = static_tree(list(reversed(HAND_CHOICES)))
    assert shuffled == static_tree(HAND_CHOICES)
    assert hash(shuffled) == hash(static_tree(HAND_CHOICES))
    f = jax.jit(lambda x, tree: x + tree.depth, static_argnums=1)
    np.testing.assert_array_equal(f(jnp.zeros(7, jnp.int32), shuffled), shuffled.depth)


def test_static_tree_root_only_and_chain():
    root = static_tree([])
    assert root.parents.tolist() == [-1] and root.max_depth == 0 and root.topk_per_depth == ()
    chain = chain_tree(3)
    assert chain.parents.tolist() == [-1, 0, 1, 2] and chain.topk_per_depth == (1, 1, 1)
    assert chain_tree(0) == root


@pytest.mark.parametrize("choices, match", [
    ([(0,), (0, 1, 2)], r"choice \(0, 1, 2\) needs its prefix \(0, 1\)"),
    ([(1, 0)], r"choice \(1, 0\) needs its prefix \(1,\)"),
    ([(0,), (1,), (0,)], r"choice \(0,\) is listed twice"),
    ([(0,), ()], "empty choice"),
    ([(0,), (0, -1)], "negative rank"),
])
def test_static_tree_rejects_bad_choices(choices, match):
    with pytest.raises(ValueError, match=match):
        static_tree(choices)


def test_static_tree_rejects_non_canonical_paths():
    with pytest.raises(ValueError, match="canonical"):
        trees.StaticTree(((), (1,), (0,)))


@pytest.mark.parametrize("name, nodes, depth", [
    ("chain4", 5, 4), ("medusa_small", 15, 4), ("medusa_63", 63, 5)])
def test_presets(name, nodes, depth):
    tree = PRESETS[name]
    validate_parents(tree.parents)
    assert (tree.num_nodes, tree.max_depth) == (nodes, depth)
    assert (np.diff(tree.depth) >= 0).all()  # sorted by depth, hence topological
    # Bushier near the root: the widest fan-out per depth does not grow with depth.
    assert list(tree.topk_per_depth) == sorted(tree.topk_per_depth, reverse=True)
    # Siblings are ranks 0..n-1 in node order.
    for parent in range(tree.num_nodes):
        kids = np.flatnonzero(tree.parents == parent)
        assert tree.ranks[kids].tolist() == list(range(len(kids)))


def test_gather_tokens_picks_candidates_by_depth_and_rank():
    tree = static_tree(HAND_CHOICES)
    cands = jnp.array([[[10, 11], [20, 21], [30, 31]]], jnp.int32)  # [B=1, depth, k]
    out = tree.gather_tokens(jnp.array([7]), cands)
    assert out.tolist() == [[7, 10, 11, 20, 21, 20, 30]]


# --- paths ----------------------------------------------------------------------------------


def _paths_brute_force(parents):
    anc = np.asarray(zoo_kernels.trees.ancestor_mask(jnp.asarray(parents)))
    ends = [i for i in range(len(parents)) if i not in set(parents.tolist())]
    rows = [np.flatnonzero(anc[i]).tolist() for i in ends]  # ancestors precede descendants
    width = max(len(r) for r in rows)
    return ends, [r + [-1] * (width - len(r)) for r in rows]


@pytest.mark.parametrize("t, kind", [(1, "chain"), (6, "chain"), (6, "star"),
                                     *[(t, "random") for t in (2, 5, 9, 17, 33)]])
def test_root_to_leaf_paths_vs_brute_force(t, kind):
    parents = random_parents(np.random.default_rng(t), t, kind)
    ends, rows = _paths_brute_force(parents)
    assert leaves(parents).tolist() == ends
    paths = root_to_leaf_paths(parents)
    assert paths.dtype == np.int32 and paths.tolist() == rows


def test_paths_of_a_preset_and_batched_input_rejected():
    paths = root_to_leaf_paths(PRESETS["chain4"].parents)
    assert paths.tolist() == [[0, 1, 2, 3, 4]]
    with pytest.raises(ValueError, match="one tree"):
        leaves([[-1, 0], [-1, 0]])


def test_position_ids_and_reexports():
    parents = jnp.array([[-1, 0, 0, 1], [-1, 0, 1, 2]], jnp.int32)
    pos = position_ids(parents, jnp.array([5, 9]))
    assert pos.dtype == jnp.int32 and pos.tolist() == [[5, 6, 6, 7], [9, 10, 11, 12]]
    assert trees.ancestor_mask is zoo_kernels.trees.ancestor_mask
    assert trees.node_depths is zoo_kernels.trees.node_depths
    assert trees.chain_parents is zoo_kernels.trees.chain_parents


# --- dynamic trees --------------------------------------------------------------------------


def _candidate_tree(rng, c, tie_every=4):
    """Random topological candidate tree with cumulative log-probs; some token log-probs are
    exactly 0 and some are copied from a sibling, so ties occur."""
    parents = random_parents(rng, c, "random")
    step = np.log(rng.uniform(0.05, 1.0, c)).astype(np.float32)
    step[::tie_every] = 0.0
    lp = np.zeros(c, np.float32)
    for i in range(1, c):
        lp[i] = lp[parents[i]] + step[i]
    tokens = rng.integers(0, 1000, c)
    return parents.astype(np.int32), tokens.astype(np.int32), lp


def _top_budget(lp, budget):
    score = lp.copy()
    score[0] = np.inf
    ranked = sorted(range(len(lp)), key=lambda i: (-score[i], i))
    return sorted(ranked[:budget])


def _check_selection(cand, out, budget):
    parents, tokens, lp = cand
    new_parents, new_tokens, new_lp, src = (np.asarray(x) for x in out)
    validate_parents(new_parents)
    assert src.tolist() == _top_budget(lp, budget)
    np.testing.assert_array_equal(new_tokens, tokens[src])
    np.testing.assert_array_equal(new_lp, lp[src])
    np.testing.assert_array_equal(src[new_parents[1:]], parents[src[1:]])  # parents remapped


@pytest.mark.parametrize("c, budget", [(1, 1), (8, 1), (8, 8), (20, 7), (40, 25)])
def test_select_dynamic_tree_keeps_top_budget_subtree(c, budget):
    cand = _candidate_tree(np.random.default_rng(c + budget), c)
    out = select_dynamic_tree(*(jnp.asarray(x)[None] for x in cand), budget)
    assert [x.shape for x in out] == [(1, budget)] * 4
    assert out.parents.dtype == jnp.int32 and out.source_index.dtype == jnp.int32
    _check_selection(cand, [x[0] for x in out], budget)


def test_select_dynamic_tree_ties_prefer_parent_then_lower_index():
    # Node 2 (child of 1) ties with its parent and with node 3; the lower index wins each tie.
    parents = jnp.array([[-1, 0, 1, 0, 2]], jnp.int32)
    lp = jnp.array([[0.0, -1.0, -1.0, -1.0, -1.0]])
    tokens = jnp.arange(5, dtype=jnp.int32)[None]
    for budget, kept in [(2, [0, 1]), (3, [0, 1, 2]), (4, [0, 1, 2, 3])]:
        out = select_dynamic_tree(parents, tokens, lp, budget)
        assert out.source_index[0].tolist() == kept
    assert out.parents[0].tolist() == [-1, 0, 1, 0]


def test_select_dynamic_tree_always_keeps_the_root():
    # A caller whose root log-prob is not 0 (here the lowest) still gets a rooted tree.
    parents = jnp.array([[-1, 0, 0, 1]], jnp.int32)
    lp = jnp.array([[-9.0, -1.0, -2.0, -1.5]])
    out = select_dynamic_tree(parents, parents, lp, 3)
    assert out.source_index[0].tolist() == [0, 1, 3]
    assert out.parents[0].tolist() == [-1, 0, 1]


@pytest.mark.parametrize("budget", [0, -1, 6])
def test_select_dynamic_tree_rejects_bad_budget(budget):
    z = jnp.zeros((1, 5), jnp.int32)
    with pytest.raises(ValueError, match=f"between 1 .* 5 candidates, got {budget}"):
        select_dynamic_tree(z, z, z.astype(jnp.float32), budget)


def test_select_dynamic_tree_jit_batched_rows_differ():
    rng = np.random.default_rng(0)
    cands = [_candidate_tree(rng, 24) for _ in range(3)]
    batched = [jnp.asarray(np.stack(x)) for x in zip(*cands)]
    out = jax.jit(select_dynamic_tree, static_argnums=3)(*batched, 10)
    for row, cand in enumerate(cands):
        _check_selection(cand, [x[row] for x in out], 10)
    assert len({tuple(r) for r in np.asarray(out.source_index).tolist()}) == 3


def test_expand_candidates_hand_example():
    frontier = jnp.array([[1, 2]], jnp.int32)
    frontier_lp = jnp.array([[-1.0, -0.5]])
    draft = jnp.log(jnp.array([[[0.1, 0.6, 0.3, 0.0], [0.05, 0.05, 0.1, 0.8]]]))
    e = expand_candidates(frontier, frontier_lp, draft, num_nodes=3, k=2, width=2)
    assert e.parents.tolist() == [[1, 1, 2, 2]]
    assert e.tokens.tolist() == [[1, 2, 3, 2]]
    expected = np.array([-1 + np.log(0.6), -1 + np.log(0.3), -0.5 + np.log(0.8),
                         -0.5 + np.log(0.1)])
    np.testing.assert_allclose(e.logprobs[0], expected, rtol=1e-6)
    # Best two over the layer: child 2 (-0.72) then child 0 (-1.51); in node order, 3 and 5.
    assert e.frontier.tolist() == [[3, 5]] and e.frontier_tokens.tolist() == [[1, 3]]
    np.testing.assert_allclose(e.frontier_logprobs[0], expected[[0, 2]], rtol=1e-6)


def test_expand_candidates_rejects_bad_sizes():
    args = jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2)), jnp.zeros((1, 2, 4))
    with pytest.raises(ValueError, match="k must be between 1 and the vocabulary size 4"):
        expand_candidates(*args, num_nodes=3, k=5, width=1)
    with pytest.raises(ValueError, match="width must be >= 1, got 0"):
        expand_candidates(*args, num_nodes=3, k=3, width=0)
    # Positive "log-probs" are clamped to 0, so no child outranks its parent.
    up = expand_candidates(jnp.array([[0]]), jnp.array([[-1.0]]), jnp.array([[[0.5, -1.0]]]),
                           num_nodes=1, k=2, width=2)
    assert up.logprobs.tolist() == [[-1.0, -2.0]]
    # A width beyond the F*k children keeps them all.
    e = expand_candidates(*args, num_nodes=3, k=3, width=7)
    assert e.frontier.tolist() == [[3, 4, 5, 6, 7, 8]]


def test_expand_then_select_loop_under_jit():
    """The documented drafter loop: the selected tree's log-probs add up along its paths."""
    b, v, k, width, depth, budget = 2, 16, 3, 4, 3, 12
    table = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (b, 64, v)) * 2.0)

    @jax.jit
    def draft(root_tokens):
        parents = jnp.full((b, 1), -1, jnp.int32)
        tokens, logprobs = root_tokens[:, None], jnp.zeros((b, 1), jnp.float32)
        frontier, frontier_lp = jnp.zeros((b, 1), jnp.int32), logprobs
        for _ in range(depth):
            draft_lp = jnp.take_along_axis(table, frontier[..., None], axis=1)  # per node
            e = expand_candidates(frontier, frontier_lp, draft_lp, num_nodes=parents.shape[1],
                                  k=k, width=width)
            parents = jnp.concatenate([parents, e.parents], axis=1)
            tokens = jnp.concatenate([tokens, e.tokens], axis=1)
            logprobs = jnp.concatenate([logprobs, e.logprobs], axis=1)
            frontier, frontier_lp = e.frontier, e.frontier_logprobs
        return (parents, tokens, logprobs), select_dynamic_tree(parents, tokens, logprobs, budget)

    (cp, ct, clp), out = draft(jnp.array([3, 5], jnp.int32))
    assert cp.shape == (b, 1 + 3 + 3 * 3 + 4 * 3)  # frontiers of 1, 3 (< width), 4 nodes
    table = np.asarray(table)
    for row in range(b):
        validate_parents(np.asarray(cp[row]))
        _check_selection([np.asarray(x[row]) for x in (cp, ct, clp)], [x[row] for x in out],
                         budget)
        p, t, lp, src = (np.asarray(x[row]) for x in out)
        for j in range(1, budget):
            step = table[row, src[p[j]], t[j]]
            np.testing.assert_allclose(lp[j], lp[p[j]] + step, rtol=1e-5, atol=1e-6)
        # Siblings keep candidate order: best token first.
        for node in range(budget):
            kids = np.flatnonzero(p == node)
            assert (np.diff(lp[kids]) <= 0).all()
