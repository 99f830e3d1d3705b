"""The cost-model tree search picks what the costs and acceptance say (synthetic tables)."""

import itertools

import numpy as np
import pytest

from zoo.decode.tree_search import Costs, best_tree, grow

GOOD = [0.6, 0.2, 0.1]  # a drafter whose best guess is accepted 60% of the time


def _flat(n=64, draft=0.0, depth=8):
    return Costs({1: 1.0, n: 1.0}, (0.0,) + (draft,) * depth)


def test_a_flat_cost_picks_the_biggest_bushy_tree():
    choice = best_tree(GOOD, _flat(), max_depth=8)
    assert choice.tree.num_nodes == 64
    assert max(choice.tree.topk_per_depth) == 3  # siblings pay when extra nodes are free
    assert choice.speedup == pytest.approx(choice.tokens_per_step)


def test_a_steep_cost_picks_a_chain():
    costs = Costs({1: 1.0, 64: 1.0 + 0.3 * 63}, (0.0,) * 9)
    choice = best_tree([0.8, 0.1], costs, max_depth=8)
    assert choice.tree is not None and choice.tree.topk_per_depth == (1,) * choice.tree.max_depth
    assert choice.tree.max_depth > 1
    assert choice.speedup > 1


def test_a_hopeless_drafter_is_not_used():
    choice = best_tree([0.02, 0.01], _flat(draft=0.05), max_depth=4)
    assert choice.tree is None and choice.speedup == 1.0


def test_drafting_cost_per_depth_makes_the_tree_shallower():
    free = best_tree(GOOD, _flat(), max_depth=8).tree
    per_depth = Costs({1: 1.0, 64: 1.0}, tuple(0.25 * d for d in range(9)))
    assert best_tree(GOOD, per_depth, max_depth=8).tree.max_depth < free.max_depth


def test_expected_tokens_of_a_chain_by_hand():
    costs = Costs({1: 1.0, 3: 1.0}, (0.0, 0.0, 0.0))
    choice = best_tree([0.5], costs, max_depth=2)
    assert choice.tree.num_nodes == 3
    assert choice.tokens_per_step == pytest.approx(1 + 0.5 + 0.25)
    assert choice.seconds_per_step == pytest.approx(1.0)


def test_per_depth_acceptance_rows_are_used():
    """A drafter whose depth-2 guesses are never accepted gets a depth-1 tree."""
    choice = best_tree([[0.7, 0.2], [0.0, 0.0]], _flat(n=8), max_depth=4)
    assert choice.tree.max_depth == 1 and choice.tree.num_nodes == 3


def _brute_force_best(table, size, ranks, depth):
    """The best sum of path values over all trees of `size` drafted nodes (any shape)."""
    paths = [p for d in range(1, depth + 1) for p in itertools.product(range(ranks), repeat=d)]
    value = {p: np.prod([table[min(i, len(table) - 1)][r] for i, r in enumerate(p)])
             for p in paths}
    best = 0.0
    for subset in itertools.combinations(paths, size):
        chosen = set(subset)
        if all(p[:-1] in chosen for p in subset if len(p) > 1):
            best = max(best, sum(value[p] for p in subset))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_growing_gives_the_best_tree_of_every_size(seed):
    """Measured tables come in any rank order (rank 1 can beat rank 0): random, unsorted rows."""
    rng = np.random.default_rng(seed)
    table = rng.dirichlet(np.ones(4), size=2)[:, :3]
    sizes = []
    for paths, expected in grow(table, max_nodes=6, max_depth=3):
        assert len(set(paths)) == len(paths) and all(p[:-1] in paths for p in paths if p[1:])
        assert expected - 1 == pytest.approx(_brute_force_best(table, len(paths), 3, 3))
        sizes.append(len(paths))
    assert sizes == [1, 2, 3, 4, 5]


def test_a_better_second_rank_is_drafted_without_the_first():
    """When the drafter's second guess is the one the target takes, the tree holds rank 1 alone;
    a search that assumed ranks sorted best first would start from rank 0."""
    choice = best_tree([0.1, 0.8], Costs({1: 1.0, 3: 1.0}, (0.0,) * 3), max_depth=2,
                       max_nodes=3)
    assert choice.tree.paths[1:] == ((1,), (1, 1))
    assert choice.tokens_per_step == pytest.approx(1 + 0.8 + 0.64)


@pytest.mark.parametrize("kwargs, message", [
    (dict(extend={2: 1.0}, draft=(0.0,)), "needs T = 1"),
    (dict(extend={1: 1.0, 4: 0.0}, draft=(0.0,)), "seconds > 0"),
    (dict(extend={1: 1.0}, draft=(0.1, 0.2)), "entry 0 = 0"),
])
def test_bad_costs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Costs(**kwargs)


def test_bad_acceptance_is_named():
    with pytest.raises(ValueError, match="sum to <= 1"):
        best_tree([0.7, 0.5], _flat(), max_depth=2)
    with pytest.raises(ValueError, match="beyond the largest measured extend"):
        best_tree(GOOD, _flat(n=8), max_depth=2, max_nodes=16)
