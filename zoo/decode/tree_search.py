"""The speculation tree that maximises tokens per second, from measured costs and acceptance.

A tree is worth its expected tokens per step over its cost per step. With positional acceptance
(Sequoia): `acceptance[d][r]` is the chance that the rank-r candidate after a node at depth d is
the one accepted, given that node was; a drafted node then contributes the product of the
acceptances along its path, and a step emits 1 + the sum of those products (the bonus token
always comes). A step costs the target's extend of T nodes (measured per T: flat on an
accelerator, steep on a CPU) plus the drafter's proposal (measured per depth: a draft LM pays a
forward per depth, heads one forward).

For a size and depth the best tree is the T - 1 drafted nodes of highest value: a node is worth
no more than its parent (acceptances are probabilities, at most 1), so those nodes form a tree,
and growing it one best frontier node at a time (the frontier: every child of a chosen node, of
any rank) visits the best tree of every size. No order of the ranks is assumed: a measured table
can say that the second-best candidate is accepted more often than the best, and the tree then
holds rank 1 without rank 0 (`static_tree` allows any ranks). The search scores each size and
depth cap, and "no speculation" (a plain AR step) competes with all of them: a drafter that does
not pay is not used.
"""

import dataclasses
import heapq
from typing import Sequence

import numpy as np

from zoo.decode.trees import StaticTree, static_tree


@dataclasses.dataclass(frozen=True)
class Costs:
    """Seconds per decode step, measured on the device and batch the tree is for.

    extend: {T: seconds of one target step verifying a T-node tree}; T = 1 is the plain AR step.
    draft: entry d = seconds for the drafter to propose (and update after) a tree of depth d;
        entry 0 is 0. A drafter whose cost does not grow with depth repeats one value.
    """

    extend: dict[int, float]
    draft: tuple[float, ...]

    def __post_init__(self):
        if 1 not in self.extend:
            raise ValueError("Costs.extend needs T = 1 (the plain AR step) to compare against")
        if any(t < 1 or s <= 0 for t, s in self.extend.items()):
            raise ValueError(f"Costs.extend must map node counts >= 1 to seconds > 0, got "
                             f"{self.extend}")
        if not self.draft or self.draft[0] != 0 or min(self.draft) < 0:
            raise ValueError(f"Costs.draft[d] are seconds >= 0 with entry 0 = 0, got {self.draft}")

    def target_step(self, nodes: int) -> float:
        """Seconds of the target's step over `nodes` nodes, the measured sizes interpolated
        linearly."""
        sizes = sorted(self.extend)
        return float(np.interp(nodes, sizes, [self.extend[t] for t in sizes]))

    def step(self, nodes: int, depth: int) -> float:
        """Seconds of one speculative step with a tree of `nodes` nodes and depth `depth`."""
        return self.target_step(nodes) + self.draft[depth]


@dataclasses.dataclass(frozen=True)
class Choice:
    tree: StaticTree | None  # None: decode without speculation
    tokens_per_step: float  # expected, from the acceptance table
    seconds_per_step: float
    ar_tokens_per_second: float  # the plain AR step it beat

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.seconds_per_step

    @property
    def speedup(self) -> float:
        return self.tokens_per_second / self.ar_tokens_per_second


def _acceptance_table(acceptance) -> np.ndarray:
    table = np.atleast_2d(np.asarray(acceptance, np.float64))
    if table.ndim != 2 or table.size == 0:
        raise ValueError(f"acceptance must be [ranks] or [depths, ranks], got shape "
                         f"{np.shape(acceptance)}")
    if (table < 0).any() or (table.sum(1) > 1 + 1e-6).any():
        raise ValueError("acceptance[d][r] are probabilities of disjoint events (which candidate "
                         f"is accepted): each row must be >= 0 and sum to <= 1, got {table}")
    return table


def grow(acceptance, max_nodes: int, max_depth: int):
    """Yield (paths, expected tokens per step) for the best tree of every size 2..max_nodes
    with depth <= max_depth (paths as `static_tree` choices, rank tuples from the root)."""
    table = _acceptance_table(acceptance)

    def value(path):  # product of acceptances along the path; depth d uses row min(d, last)
        return float(np.prod([table[min(d, len(table) - 1), r] for d, r in enumerate(path)]))

    def children(path):
        return [(*path, r) for r in range(table.shape[1])]

    # Ties pop the shorter path first, so a parent always precedes a child of the same value.
    frontier = [(-value(p), len(p), p) for p in children(())]
    heapq.heapify(frontier)
    paths, expected = [], 1.0
    while frontier and len(paths) + 1 < max_nodes:
        negative, _, path = heapq.heappop(frontier)
        if -negative <= 0:
            return  # the rest can never be accepted
        paths.append(path)
        expected -= negative
        yield list(paths), expected
        if len(path) < max_depth:
            for child in children(path):
                heapq.heappush(frontier, (-value(child), len(child), child))


def best_tree(acceptance: Sequence, costs: Costs, *, max_depth: int,
              max_nodes: int | None = None) -> Choice:
    """The tree (or none) with the most expected tokens per second.

    `acceptance` [ranks] or [depths, ranks] (see the module docstring; one rank gives chains);
    `max_depth`: the drafter's limit (e.g. its number of heads); `max_nodes`: the largest tree
    to consider (default: the largest measured extend).
    """
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    max_nodes = max_nodes or max(costs.extend)
    if max_nodes > max(costs.extend):
        raise ValueError(f"max_nodes={max_nodes} is beyond the largest measured extend "
                         f"({max(costs.extend)} nodes)")
    max_depth = min(max_depth, len(costs.draft) - 1)
    ar = 1.0 / costs.extend[1]
    best = Choice(None, 1.0, costs.extend[1], ar)
    # Trees of a smaller depth cap differ (wider for the same size), so each cap is searched.
    for depth_cap in range(1, max_depth + 1):
        for paths, expected in grow(acceptance, max_nodes, depth_cap):
            depth = max(len(p) for p in paths)
            seconds = costs.step(len(paths) + 1, depth)
            if expected / seconds > best.tokens_per_second:
                best = Choice(static_tree(paths), expected, seconds, ar)
    return best


__all__ = ["Costs", "Choice", "grow", "best_tree"]
