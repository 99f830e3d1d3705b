"""Structure derived from a token tree's `parents` array, shared by the tree kernels.

A tree of T nodes is `parents: int32[..., T]` in topological order (`parents[i] < i`, roots have
-1). A chain is `[-1, 0, 1, ...]`. These helpers are jittable and batch over leading axes.
"""

import math

import jax
import jax.numpy as jnp


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

    The same pointer doubling as `_transitive_closure`, squaring with a boolean and/any instead of
    a float matmul: outside a kernel XLA fuses it into one elementwise loop, where a CPU dot of a
    tiny [T, T] matrix costs a thread-pool round trip (measured: the matmul form made a 4-node
    tree extend of a Mamba2 model 2x slower than a 1-node step).
    """
    t = parents.shape[-1]
    nodes = jnp.arange(t)
    rel = (nodes[:, None] == nodes[None, :]) | (parents[..., :, None] == nodes)
    for _ in range(math.ceil(math.log2(t)) if t > 1 else 0):
        rel = rel | jnp.any(rel[..., :, :, None] & rel[..., None, :, :], axis=-2)
    return rel


def _ancestors_of_column(parent_col: jnp.ndarray) -> jnp.ndarray:
    """`ancestor_mask` of one tree given as an int32[T, 1] column, with 2-D iotas only."""
    t = parent_col.shape[0]
    row = jax.lax.broadcasted_iota(jnp.int32, (t, t), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (t, t), 1)
    return _transitive_closure((row == col) | (parent_col == col))


def stacked_ancestor_mask(parent_col: jnp.ndarray, n_rows: int) -> jnp.ndarray:
    """The tree mask as a kernel needs it, built inside the kernel from `parents`.

    parent_col: int32[T, 1] (one tree). Returns bool[n_rows, T]: row r is query node r % T, as
    when the query heads of one KV group are stacked head-major ([G * T] rows); True where key
    node j is that node or one of its ancestors. Only 2-D iotas, compares and matmuls, so it
    lowers to Mosaic (TPU) and Triton (GPU) alike; rows map to nodes by a one-hot matmul rather
    than a tile or gather, which Triton cannot lower.
    """
    t = parent_col.shape[0]
    anc = _ancestors_of_column(parent_col)
    node_of_row = jax.lax.broadcasted_iota(jnp.int32, (n_rows, t), 0) % t
    one_hot = jnp.where(node_of_row == jax.lax.broadcasted_iota(jnp.int32, (n_rows, t), 1), 1.0, 0.0)
    return jnp.matmul(one_hot, jnp.where(anc, 1.0, 0.0)) > 0


def node_depths(parents: jnp.ndarray) -> jnp.ndarray:
    """Depth of every node (roots have depth 0), as int32."""
    return ancestor_mask(parents).sum(-1).astype(jnp.int32) - 1


def chain_parents(length: int) -> jnp.ndarray:
    """The parents array of a chain of `length` nodes: [-1, 0, 1, ...]."""
    return jnp.arange(length, dtype=jnp.int32) - 1


def ancestor_masks_in_kernel(parent_col: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The tree mask and its transpose, built inside a kernel from `parents` (one tree).

    parent_col: int32[T, 1]. Returns (anc, anc_t), bool[T, T] each, anc[i, j] True when node j is
    node i or one of its ancestors and anc_t[j, i] = anc[i, j]. Same technique as
    `stacked_ancestor_mask`; the transpose is an "I @ ancᵀ" dot (exact for 0/1 entries in any
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
