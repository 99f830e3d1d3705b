"""Structure derived from a token tree's `parents` array, shared by the tree kernels.

A tree of T nodes is `parents: int32[..., T]` in topological order (`parents[i] < i`, roots have
-1). A chain is `[-1, 0, 1, ...]`. These helpers are jittable and batch over leading axes.

Blocks. `parents[i] == SAME_BLOCK` (-2) puts node i in the block of node i - 1: the nodes of a
block all see each other (bidirectional attention), as next-block prediction and block diffusion
need. A plain block of T tokens is `[-1, -2, -2, ...]` (`block_parents(T)`); a block's children
hang off its last node. Positions and causal structure treat a block as a chain (node i of a block
is one deeper than node i - 1), so `node_depths` and `ancestor_mask` (what an SSM follows) see a
chain, while `visible_mask` (what attention follows) adds the rest of each block. A parents array
without -2 is an ordinary tree and every mask is unchanged.
"""

import math

import jax
import jax.numpy as jnp

SAME_BLOCK = -2


def _transitive_closure(rel: jnp.ndarray) -> jnp.ndarray:
    """Close a reflexive "self or parent" relation [..., T, T] by pointer doubling: squaring it
    ceil(log2 T) times closes paths of any length up to T with a handful of small matmuls."""
    t = rel.shape[-1]
    for _ in range(math.ceil(math.log2(t)) if t > 1 else 0):
        f = jnp.where(rel, 1.0, 0.0).astype(jnp.float32)
        rel = rel | (jnp.matmul(f, f) > 0)
    return rel


def ancestor_mask(parents: jnp.ndarray) -> jnp.ndarray:
    """`anc[..., i, j]` is True when node j is node i or one of its ancestors.

    By pointer jumping, not by closing the [T, T] relation (T^3 log T work, and 2x slower than a
    1-node step for a 4-node Mamba2 extend when done with tiny CPU matmuls): with the 2^k-th
    ancestor tables, j is an ancestor of i exactly when climbing depth[i] - depth[j] >= 0 steps
    from i lands on j, which is log T gathers of [T, T] indices.
    """
    jumps, depth = _jump_tables(as_chains(parents))
    t = parents.shape[-1]
    steps = depth[..., :, None] - depth[..., None, :]  # [..., i, j]
    node = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[:, None], steps.shape)  # start at i
    for k, jump in enumerate(jumps):
        up = jnp.take_along_axis(jnp.broadcast_to(jump[..., None, :], steps.shape), node, axis=-1)
        node = jnp.where((jnp.maximum(steps, 0) >> k) & 1 == 1, up, node)
    return (steps >= 0) & (node == jnp.arange(t, dtype=jnp.int32))


def visible_mask(parents: jnp.ndarray) -> jnp.ndarray:
    """`vis[..., i, j]` is True when node i attends to node j: j is i, an ancestor of i, or in
    the block of i or of one of its ancestors. Equals `ancestor_mask` when there are no blocks.

    Node i sees all of j's block exactly when the block's first node is an ancestor of i in the
    chain view (a block read as a chain), so this is a column gather of `ancestor_mask`.
    """
    t = parents.shape[-1]
    nodes = jnp.arange(t, dtype=jnp.int32)
    start = jax.lax.cummax(jnp.where(parents == SAME_BLOCK, 0, nodes), axis=parents.ndim - 1)
    anc = ancestor_mask(parents)
    return jnp.take_along_axis(anc, jnp.broadcast_to(start[..., None, :], anc.shape), axis=-1)


def _jump_tables(parents: jnp.ndarray) -> tuple[list[jnp.ndarray], jnp.ndarray]:
    """([2^k-th ancestor of every node for k < ceil(log2 T)], depth): roots jump to themselves,
    so a climb of at most depth[i] steps never needs to know where the tree ends."""
    t = parents.shape[-1]
    jump = jnp.where(parents < 0, jnp.arange(t, dtype=jnp.int32), parents.astype(jnp.int32))
    depth = (parents >= 0).astype(jnp.int32)  # so far: steps to jump[i]
    jumps = []
    for _ in range(math.ceil(math.log2(t)) if t > 1 else 0):
        jumps.append(jump)
        depth = depth + jnp.take_along_axis(depth, jump, axis=-1)
        jump = jnp.take_along_axis(jump, jump, axis=-1)
    return jumps, depth


def as_chains(parents: jnp.ndarray) -> jnp.ndarray:
    """`parents` with every block written as a chain (SAME_BLOCK -> i - 1): the causal view."""
    nodes = jnp.arange(parents.shape[-1], dtype=parents.dtype)
    return jnp.where(parents == SAME_BLOCK, nodes - 1, parents)


def block_parents(length: int) -> jnp.ndarray:
    """The parents array of one block of `length` nodes that all see each other: [-1, -2, ...]."""
    return jnp.full((length,), SAME_BLOCK, jnp.int32).at[0].set(-1)


def _ancestors_of_column(parent_col: jnp.ndarray, blocks_visible: bool = False) -> jnp.ndarray:
    """`ancestor_mask` (or with `blocks_visible`, `visible_mask`) of one tree given as an
    int32[T, 1] column, with 2-D iotas and dots only."""
    t = parent_col.shape[0]
    row = jax.lax.broadcasted_iota(jnp.int32, (t, t), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (t, t), 1)
    continues = parent_col == SAME_BLOCK  # [T, 1]
    rel = (row == col) | (jnp.where(continues, row - 1, parent_col) == col)
    if blocks_visible:
        # back[i, j]: i continues j's block (j = i - 1); its transpose lets j see i. The
        # transpose is an "I @ backᵀ" dot, as in `ancestor_masks_in_kernel`.
        back = jnp.where(continues & (col == row - 1), 1.0, 0.0)
        identity = jnp.where(row == col, 1.0, 0.0)
        rel = rel | (jax.lax.dot_general(identity, back, (((1,), (1,)), ((), ()))) > 0)
    return _transitive_closure(rel)


def stacked_visible_mask(parent_col: jnp.ndarray, n_rows: int) -> jnp.ndarray:
    """The tree mask as a kernel needs it, built inside the kernel from `parents`.

    parent_col: int32[T, 1] (one tree). Returns bool[n_rows, T]: row r is query node r % T, as
    when the query heads of one KV group are stacked head-major ([G * T] rows); True where key
    node j is that node or one of its ancestors. Only 2-D iotas, compares and matmuls, so it
    lowers to Mosaic (TPU) and Triton (GPU) alike; rows map to nodes by a one-hot matmul rather
    than a tile or gather, which Triton cannot lower.
    """
    t = parent_col.shape[0]
    anc = _ancestors_of_column(parent_col, blocks_visible=True)
    node_of_row = jax.lax.broadcasted_iota(jnp.int32, (n_rows, t), 0) % t
    one_hot = jnp.where(node_of_row == jax.lax.broadcasted_iota(jnp.int32, (n_rows, t), 1), 1.0, 0.0)
    return jnp.matmul(one_hot, jnp.where(anc, 1.0, 0.0)) > 0


def node_depths(parents: jnp.ndarray) -> jnp.ndarray:
    """Depth of every node (roots have depth 0; node k of a block is k deeper than its start),
    as int32, by pointer jumping (log T gathers)."""
    return _jump_tables(as_chains(parents))[1]


def chain_parents(length: int) -> jnp.ndarray:
    """The parents array of a chain of `length` nodes: [-1, 0, 1, ...]."""
    return jnp.arange(length, dtype=jnp.int32) - 1


def ancestor_masks_in_kernel(parent_col: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The tree mask and its transpose, built inside a kernel from `parents` (one tree).

    parent_col: int32[T, 1]. Returns (anc, anc_t), bool[T, T] each, anc[i, j] True when node j is
    node i or one of its ancestors and anc_t[j, i] = anc[i, j]. Same technique as
    `stacked_visible_mask`; the transpose is an "I @ ancᵀ" dot (exact for 0/1 entries in any
    matmul precision), which Mosaic and Triton both compile for any tile, rather than an in-kernel
    transpose, whose Mosaic support depends on shape and dtype (boolean masks off the (8, 128)
    tile being the risky case).
    """
    t = parent_col.shape[0]
    anc = _ancestors_of_column(parent_col)
    identity = jnp.where(jax.lax.broadcasted_iota(jnp.int32, (t, t), 0)
                         == jax.lax.broadcasted_iota(jnp.int32, (t, t), 1), 1.0, 0.0)
    anc_t = jax.lax.dot_general(identity, jnp.where(anc, 1.0, 0.0), (((1,), (1,)), ((), ()))) > 0
    return anc, anc_t
