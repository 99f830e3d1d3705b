"""Drafters from draft heads (Medusa, Hydra, Falcon) on the target's own hidden states.

All follow the drafter protocol of `zoo.decode.drafters` and declare `needs_hidden = True`, so
the engine also hands them the target's hidden states. Their whole state is one vector per row:
the target's hidden state h_n at the last accepted node n. Why that node: verification emits the
bonus g[n] (the target's own next token after n), which becomes the next root, at position
pos(n) + 1; head k maps h_n to the token at pos(n) + k + 1, i.e. depth k under that root. So
the heads draft the next tree without running anything but themselves, and the state is
refreshed from the tree forward the engine runs anyway (after the prefill: the last prompt
token, whose successor is the first root).

All draft over a static tree template (`zoo.decode.trees.StaticTree`): node i is the
`ranks[i]`-th best candidate under its parent. For Medusa a candidate depends only on its depth,
so one call of all heads and one top-k per depth fill the whole tree (`gather_tokens`). For
Hydra it depends on the path, so depth d runs head d on every depth-(d-1) node that has
children, with that node's path (root included) as input. Falcon is between the two: one forward
per block of depths, run on every node at the block's boundary depth m that has descendants in
the block, with its path as context; inside the block a candidate depends on its depth and that
boundary node only (the block's tokens are drafted together), as Medusa's do on the root.

The candidates are fixed top-k picks, so the stochastic verification rule is "deterministic".
`params` of all is `{"heads": head params, "target": target params}` (the heads read the
target's frozen LM head and embedding).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo.decode.drafters import Draft, StaticTreeDrafter
from zoo.decode.trees import PRESETS, StaticTree


class _HeadDrafter(StaticTreeDrafter):
    heads: Any  # zoo.models.heads.DraftHeads
    kind: str  # the heads' kind this drafter runs
    needs_hidden = True

    def __post_init__(self):
        super().__post_init__()
        if self.heads.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs {self.kind} heads, got "
                             f"{self.heads.kind} heads")
        if self.tree.max_depth > self.heads.num_heads:
            raise ValueError(f"the tree is {self.tree.max_depth} deep but there are only "
                             f"{self.heads.num_heads} heads (one per depth)")

    def _parents(self, batch: int) -> jnp.ndarray:
        return jnp.broadcast_to(jnp.asarray(self.tree.parents), (batch, self.num_nodes))

    def init(self, params, tokens, lengths, max_len, *, target_hidden):
        """h at each row's last prompt token (its successor is the first root)."""
        rows = jnp.arange(tokens.shape[0])
        return {"hidden": target_hidden[rows, lengths - 1]}

    def update(self, params, state, draft, verdict, target_logits, *, target_hidden):
        """h at the last accepted node (its successor, the bonus, is the next root)."""
        last = jnp.take_along_axis(verdict.path, verdict.n_accepted[:, None] - 1, axis=1)
        return {"hidden": jnp.take_along_axis(target_hidden, last[:, :, None], axis=1)[:, 0]}


@dataclasses.dataclass(frozen=True)
class MedusaDrafter(_HeadDrafter):
    """Medusa: every head at once on h, top-k per depth, laid out by a static tree."""

    heads: Any
    tree: StaticTree = PRESETS["medusa_small"]
    kind = "medusa"

    def propose(self, params, state, last, rng):
        logits = self.heads.logits(params["heads"], params["target"], state["hidden"])
        candidates = jax.lax.top_k(logits[:, : self.max_depth], max(self.tree.topk_per_depth))[1]
        tokens = self.tree.gather_tokens(last, candidates)
        return Draft(tokens, self._parents(last.shape[0])), state


def _ancestors(parents: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """int32[T, D+1]: row i holds node i's path from the root (entry d = its depth-d ancestor)."""
    paths = np.zeros((len(parents), depth.max() + 1), np.int32)
    for i in range(1, len(parents)):
        paths[i] = paths[parents[i]]
        paths[i, depth[i]] = i
    return paths


@dataclasses.dataclass(frozen=True)
class HydraDrafter(_HeadDrafter):
    """Hydra: depth by depth, head d on each expanded node's path, top-k per parent."""

    heads: Any
    tree: StaticTree = PRESETS["medusa_small"]
    kind = "hydra"

    def propose(self, params, state, last, rng):
        tree, b = self.tree, last.shape[0]
        parents, depth, ranks = tree.parents, tree.depth, tree.ranks
        paths = _ancestors(parents, depth)
        tokens = jnp.zeros((b, tree.num_nodes), jnp.int32).at[:, 0].set(last)
        for d in range(1, tree.max_depth + 1):  # static: the template's shape is known
            kids = np.flatnonzero(depth == d)
            expanded = np.unique(parents[kids])  # depth d-1 nodes with children, in node order
            context = tokens[:, paths[expanded, :d]]  # [B, n, d]: root .. expanded node
            hidden = jnp.broadcast_to(state["hidden"][:, None], (b, len(expanded),
                                                                   state["hidden"].shape[-1]))
            logits = self.heads.head_logits(params["heads"], params["target"], hidden, context)
            top = jax.lax.top_k(logits, int(ranks[kids].max()) + 1)[1]  # [B, n, k]
            slot = np.searchsorted(expanded, parents[kids])
            tokens = tokens.at[:, kids].set(top[:, slot, ranks[kids]].astype(jnp.int32))
        return Draft(tokens, self._parents(b)), state


@dataclasses.dataclass(frozen=True)
class FalconDrafter(_HeadDrafter):
    """Falcon: a block of depths per forward, on each boundary node's path, top-k per depth."""

    heads: Any
    tree: StaticTree = PRESETS["medusa_small"]
    kind = "falcon"

    def propose(self, params, state, last, rng):
        tree, b, block = self.tree, last.shape[0], self.heads.block_size
        depth, ranks = tree.depth, tree.ranks
        paths = _ancestors(tree.parents, depth)
        tokens = jnp.zeros((b, tree.num_nodes), jnp.int32).at[:, 0].set(last)
        for m in range(0, tree.max_depth, block):  # static: the template's shape is known
            nodes = np.flatnonzero((depth > m) & (depth <= m + block))
            anchors = paths[nodes, m]  # each node's ancestor at the block boundary
            expanded = np.unique(anchors)
            context = tokens[:, paths[expanded, : m + 1]]  # [B, n, m+1]: root .. boundary node
            hidden = jnp.broadcast_to(state["hidden"][:, None], (b, len(expanded),
                                                                   state["hidden"].shape[-1]))
            logits = self.heads.block_logits(params["heads"], params["target"], hidden, context)
            top = jax.lax.top_k(logits, int(ranks[nodes].max()) + 1)[1]  # [B, n, depths, k]
            slot = np.searchsorted(expanded, anchors)
            tokens = tokens.at[:, nodes].set(
                top[:, slot, depth[nodes] - m - 1, ranks[nodes]].astype(jnp.int32))
        return Draft(tokens, self._parents(b)), state
