"""Token trees for speculative decoding: validation, static (Medusa-style) and dynamic (EAGLE-2)
trees, root-to-leaf paths and position ids.

Conventions shared with the speculative engine: a verification tree has T nodes in topological
order (`parents[i] < i`). Node 0 is the root, the last emitted token (accepted, not yet in the KV
cache), with parent -1; nodes 1..T-1 are drafted tokens. Siblings are ordered by node index, and
that order is the order in which verification tries them. Node i sits at position
`cache_length + depth[i]`. Everything else (depth, ancestor mask, paths) is derived from
`parents`, never stored next to it.
"""

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo_kernels.trees import ancestor_mask, chain_parents, node_depths

__all__ = [
    "ancestor_mask", "node_depths", "chain_parents", "position_ids", "validate_parents",
    "valid_trees",
    "StaticTree", "static_tree", "chain_tree", "PRESETS", "leaves", "root_to_leaf_paths",
    "SelectedTree", "select_dynamic_tree", "Expansion", "expand_candidates",
]


def position_ids(parents: jnp.ndarray, cache_lengths: jnp.ndarray) -> jnp.ndarray:
    """int32[B, T] position of every node: its row's committed cache length plus its depth."""
    return jnp.asarray(cache_lengths, jnp.int32)[..., None] + node_depths(parents)


def validate_parents(parents) -> np.ndarray:
    """Check a [T] or [B, T] parents array on the host, before any work, and return it as int32.

    A bad tree does not fail loudly on device: attention would silently use a wrong mask and
    commit would copy the wrong KV slots. So this names the first bad row and node.
    """
    arr = np.asarray(parents)
    if arr.ndim not in (1, 2):
        raise ValueError(f"parents must be [T] or [B, T], got shape {arr.shape}")
    if arr.shape[-1] == 0:
        raise ValueError(f"parents has no nodes (shape {arr.shape}); a tree needs at least a root")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"parents must be integers, got dtype {arr.dtype}")
    rows = arr.reshape(-1, arr.shape[-1])
    nodes = np.arange(rows.shape[1])
    bad = (rows < 0) | (rows >= nodes)  # for i > 0: a parent in [0, i)
    bad[:, 0] = rows[:, 0] != -1
    if bad.any():
        b, i = (int(x) for x in np.argwhere(bad)[0])
        p = int(rows[b, i])
        where = f"node {i}" if arr.ndim == 1 else f"row {b}, node {i}"
        if i == 0:
            why = f"must be the root (parent -1), but has parent {p}"
        elif p == -1:
            why = "is a second root (parent -1); only node 0 may be a root"
        elif p < -1:
            why = f"has parent {p} < -1"
        else:
            why = f"has parent {p}, which is not before it (a tree is topological: parents[i] < i)"
        raise ValueError(f"parents {where} {why}")
    return arr.astype(np.int32)


def valid_trees(parents: jnp.ndarray, max_depth: int) -> jnp.ndarray:
    """bool[B]: which rows of an int32[B, T] parents array are trees `validate_parents` would
    accept, no deeper than `max_depth`; the jittable check for trees drafted on device."""
    nodes = jnp.arange(parents.shape[1])
    ok = jnp.where(nodes == 0, parents == -1, (parents >= 0) & (parents < nodes))
    # Depths are only meaningful on valid rows; a bad row is already false.
    depth_ok = node_depths(jnp.where(ok, parents, -1)) <= max_depth
    return jnp.all(ok & depth_ok, axis=1)


# --- Static trees ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StaticTree:
    """A fixed tree shape, built by `static_tree` from Medusa-style choices.

    `paths[i]` is node i's path of candidate ranks from the root (the root's is `()`). The
    dataclass holds only tuples, so it is hashable and can be a static `jax.jit` argument; the
    array views are derived from `paths` on demand.
    """

    paths: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if self.paths != _canonical(self.paths[1:]):
            raise ValueError("StaticTree paths must be in canonical order; build it with "
                             "static_tree(choices)")

    @property
    def num_nodes(self) -> int:
        return len(self.paths)

    @property
    def max_depth(self) -> int:
        return len(self.paths[-1])

    @property
    def parents(self) -> np.ndarray:
        index = {path: i for i, path in enumerate(self.paths)}
        return np.array([-1] + [index[p[:-1]] for p in self.paths[1:]], np.int32)

    @property
    def ranks(self) -> np.ndarray:
        """Each node's rank among the candidates proposed after its parent (root: 0)."""
        return np.array([p[-1] if p else 0 for p in self.paths], np.int32)

    @property
    def depth(self) -> np.ndarray:
        return np.array([len(p) for p in self.paths], np.int32)

    @property
    def topk_per_depth(self) -> tuple[int, ...]:
        """Entry d-1: how many top candidates depth d needs (max rank + 1), so a drafter computes
        one top-k per depth instead of one per node."""
        k = [0] * self.max_depth
        for path in self.paths[1:]:
            k[len(path) - 1] = max(k[len(path) - 1], path[-1] + 1)
        return tuple(k)

    def gather_tokens(self, root_tokens: jnp.ndarray, candidates: jnp.ndarray) -> jnp.ndarray:
        """Tokens int32[B, T] for drafters whose candidates do not depend on the parent (Medusa
        heads): node i gets `candidates[:, depth[i] - 1, rank[i]]`.

        `root_tokens` int32[B]; `candidates` int32[B, max_depth, k] with
        k >= max(topk_per_depth), best candidate first.
        """
        drafted = candidates[:, self.depth[1:] - 1, self.ranks[1:]]
        return jnp.concatenate([root_tokens[:, None], drafted], axis=1).astype(jnp.int32)


def _canonical(choices) -> tuple[tuple[int, ...], ...]:
    """Root plus choices in node order (depth, then path): topological, since every prefix is
    shallower than its extensions."""
    paths = [tuple(int(r) for r in c) for c in choices]
    seen = set()
    for path in paths:
        if not path:
            raise ValueError("empty choice (); the root is implicit, list only drafted nodes")
        if min(path) < 0:
            raise ValueError(f"choice {path} has a negative rank")
        if path in seen:
            raise ValueError(f"choice {path} is listed twice")
        seen.add(path)
    for path in paths:
        for d in range(1, len(path)):
            if path[:d] not in seen:
                raise ValueError(f"choice {path} needs its prefix {path[:d]}, "
                                 "which is not a choice")
    return ((),) + tuple(sorted(paths, key=lambda p: (len(p), p)))


def static_tree(choices: Sequence[Sequence[int]]) -> StaticTree:
    """A tree from Medusa-style choices: each choice is a path of candidate ranks, e.g.
    `(0, 1)` = the 2nd-best candidate after the best candidate at depth 1. Every prefix of a
    choice must be a choice too; order does not matter, duplicates are rejected."""
    return StaticTree(_canonical(choices))


def chain_tree(n_draft: int) -> StaticTree:
    """A chain: the root followed by `n_draft` greedy drafts (plain speculative decoding)."""
    if n_draft < 0:
        raise ValueError(f"n_draft must be >= 0, got {n_draft}")
    return static_tree([(0,) * d for d in range(1, n_draft + 1)])


def _fan(prefix: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    """The top-n candidates after `prefix`."""
    return [(*prefix, r) for r in range(n)]


# Presets put more siblings near the root: a shallow node is reached more often (its whole
# path must be accepted for a deeper one to matter), and deep ranks beyond the top few rarely hit.
PRESETS: dict[str, StaticTree] = {
    "chain4": chain_tree(4),  # 5 nodes
    "medusa_small": static_tree([  # 15 nodes, depth 4
        *_fan((), 4), *_fan((0,), 3), *_fan((1,), 2), (2, 0),
        *_fan((0, 0), 2), (0, 1, 0), (0, 0, 0, 0)]),
    "medusa_63": static_tree([  # 63 nodes, depth 5
        *_fan((), 10),
        *_fan((0,), 8), *_fan((1,), 6), *_fan((2,), 4), *_fan((3,), 3), *_fan((4,), 2), (5, 0),
        *_fan((0, 0), 6), *_fan((0, 1), 3), *_fan((1, 0), 3),
        (0, 2, 0), (0, 3, 0), (1, 1, 0), (2, 0, 0), (3, 0, 0),
        *_fan((0, 0, 0), 3), (0, 0, 1, 0), (0, 0, 2, 0), (0, 1, 0, 0), (1, 0, 0, 0), (2, 0, 0, 0),
        *_fan((0, 0, 0, 0), 2), (0, 0, 0, 1, 0)]),
}


# --- Paths ----------------------------------------------------------------------------------


def _single_tree(parents) -> np.ndarray:
    p = validate_parents(parents)
    if p.ndim != 1:
        raise ValueError(f"expected one tree's parents [T], got shape {p.shape}")
    return p


def leaves(parents) -> np.ndarray:
    """int32 indices of the nodes without children, in increasing order."""
    p = _single_tree(parents)
    has_child = np.zeros(p.shape, bool)
    has_child[p[1:]] = True
    return np.flatnonzero(~has_child).astype(np.int32)


def root_to_leaf_paths(parents) -> np.ndarray:
    """int32[n_leaves, max_depth + 1]: row r holds the nodes from the root to the r-th leaf (in
    `leaves` order), padded with -1."""
    p = _single_tree(parents)
    depth = np.zeros(p.shape, np.int32)
    for i in range(1, len(p)):
        depth[i] = depth[p[i]] + 1
    ends = leaves(p)
    paths = np.full((len(ends), depth.max() + 1), -1, np.int32)
    for row, node in enumerate(ends):
        while node >= 0:
            paths[row, depth[node]] = node
            node = p[node]
    return paths


# --- Dynamic trees (EAGLE-2) ----------------------------------------------------------------


class SelectedTree(NamedTuple):
    parents: jnp.ndarray  # int32[B, budget], topological, root at 0
    tokens: jnp.ndarray  # int32[B, budget]
    logprobs: jnp.ndarray  # float32[B, budget], cumulative draft log-prob
    source_index: jnp.ndarray  # int32[B, budget], node index in the candidate tree


def select_dynamic_tree(cand_parents: jnp.ndarray, cand_tokens: jnp.ndarray,
                        cand_logprobs: jnp.ndarray, budget: int) -> SelectedTree:
    """Keep the `budget` candidate nodes with the highest cumulative draft log-prob (EAGLE-2's
    rerank), re-indexed as a verification tree.

    The kept set is always a subtree, so no node loses its parent: a child's cumulative log-prob
    is its parent's plus a token log-prob <= 0, hence <= its parent's (also in floating point,
    since rounding is monotone). On ties the lower index wins, and a parent's index is lower than
    its child's, so a parent always ranks at or above its children. The root is forced in.
    Kept nodes stay in their original relative order, which is topological and keeps each node's
    children in the candidate order they were drafted in.

    `cand_parents` int32[B, C] topological with root 0; `cand_tokens` int32[B, C];
    `cand_logprobs` float32[B, C] with the root at 0.0. `budget` is static, 1 <= budget <= C.
    """
    cand_parents, cand_tokens, cand_logprobs = (
        jnp.asarray(cand_parents), jnp.asarray(cand_tokens), jnp.asarray(cand_logprobs))
    c = cand_parents.shape[-1]
    if not 1 <= budget <= c:
        raise ValueError(f"budget must be between 1 (the root alone) and the {c} candidates, "
                         f"got {budget}")
    score = cand_logprobs.at[..., 0].set(jnp.inf)
    order = jnp.argsort(-score, axis=-1, stable=True)  # stable: lower index first on ties
    keep = jnp.sort(order[..., :budget], axis=-1).astype(jnp.int32)
    old_parent = jnp.take_along_axis(cand_parents, keep, axis=-1)
    # keep is sorted, so a kept parent's new index is the number of kept nodes before it.
    new_parent = (keep[..., None, :] < old_parent[..., :, None]).sum(-1)
    parents = jnp.where(old_parent < 0, -1, new_parent).astype(jnp.int32)
    return SelectedTree(parents, jnp.take_along_axis(cand_tokens, keep, axis=-1),
                        jnp.take_along_axis(cand_logprobs, keep, axis=-1), keep)


class Expansion(NamedTuple):
    parents: jnp.ndarray  # int32[B, F*k]: candidate-tree index of each new child's parent
    tokens: jnp.ndarray  # int32[B, F*k]
    logprobs: jnp.ndarray  # float32[B, F*k], cumulative
    frontier: jnp.ndarray  # int32[B, W], W = min(width, F*k): candidate-tree indices to expand
    frontier_tokens: jnp.ndarray  # int32[B, W]: their tokens (the drafter's next input)
    frontier_logprobs: jnp.ndarray  # float32[B, W]


def expand_candidates(frontier: jnp.ndarray, frontier_logprobs: jnp.ndarray,
                      draft_logprobs: jnp.ndarray, *, num_nodes: int, k: int,
                      width: int) -> Expansion:
    """Grow the candidate tree by one depth (EAGLE-2's expansion).

    Each of the F frontier nodes gets its drafter's top-k tokens as children, with cumulative
    log-prob = parent's + token log-prob. All F*k children are appended to the candidate tree
    (as new nodes `num_nodes .. num_nodes + F*k - 1`, frontier-major, best token first, so
    siblings stay in candidate order), so the final rerank can pick any of them; only the best
    `width` over the whole layer (ties: lower index; all of them if there are fewer, as at the
    root) become the next frontier, in node order. Token log-probs
    are clamped to <= 0 so cumulative log-probs never grow along a path, which is what makes
    `select_dynamic_tree` return a subtree.

    `frontier` int32[B, F] and `frontier_logprobs` float32[B, F]: the nodes to expand;
    `draft_logprobs` float32[B, F, V]: the drafter's log-probs after each frontier node;
    `num_nodes` (static): the candidate tree's current size.

    The drafter's loop; all sizes are static (with width <= k, the candidate tree ends with
    C = 1 + k + (depth - 1) * width * k nodes):

        parents = jnp.full((b, 1), -1, jnp.int32)
        tokens, logprobs = root_tokens[:, None], jnp.zeros((b, 1), jnp.float32)
        frontier, frontier_tokens, frontier_lp = jnp.zeros((b, 1), jnp.int32), tokens, logprobs
        for _ in range(depth):
            draft_lp = drafter(frontier, frontier_tokens)  # float32[b, F, V]
            e = expand_candidates(frontier, frontier_lp, draft_lp, num_nodes=parents.shape[1],
                                  k=k, width=width)
            parents = jnp.concatenate([parents, e.parents], axis=1)
            tokens = jnp.concatenate([tokens, e.tokens], axis=1)
            logprobs = jnp.concatenate([logprobs, e.logprobs], axis=1)
            frontier, frontier_tokens, frontier_lp = (e.frontier, e.frontier_tokens,
                                                      e.frontier_logprobs)
        tree = select_dynamic_tree(parents, tokens, logprobs, budget)
    """
    b, f, v = draft_logprobs.shape
    if not 1 <= k <= v:
        raise ValueError(f"k must be between 1 and the vocabulary size {v}, got {k}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    width = min(width, f * k)
    token_lp, tokens = jax.lax.top_k(draft_logprobs, k)  # [B, F, k], best first
    cum = frontier_logprobs[..., None] + jnp.minimum(token_lp, 0.0)
    parents = jnp.broadcast_to(frontier[..., None], (b, f, k)).reshape(b, f * k)
    tokens = tokens.reshape(b, f * k).astype(jnp.int32)
    cum = cum.reshape(b, f * k)
    best = jnp.sort(jnp.argsort(-cum, axis=-1, stable=True)[:, :width], axis=-1)
    return Expansion(parents.astype(jnp.int32), tokens, cum, (num_nodes + best).astype(jnp.int32),
                     jnp.take_along_axis(tokens, best, axis=-1),
                     jnp.take_along_axis(cum, best, axis=-1))
