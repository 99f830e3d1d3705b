"""Structure derived from a token tree's `parents` array, shared by the tree kernels.

A tree of T nodes is `parents: int32[..., T]` in topological order (`parents[i] < i`, roots have
-1). A chain is `[-1, 0, 1, ...]`. These helpers are jittable and batch over leading axes.
"""

import math

import jax.numpy as jnp


def ancestor_mask(parents: jnp.ndarray) -> jnp.ndarray:
    """`anc[..., i, j]` is True when node j is node i or one of its ancestors.

    Pointer doubling: start from "self or parent" and square the relation ceil(log2 T) times, so
    paths of any length up to T are closed with a handful of small matmuls.
    """
    t = parents.shape[-1]
    nodes = jnp.arange(t)
    rel = (nodes[:, None] == nodes[None, :]) | (parents[..., :, None] == nodes)
    for _ in range(math.ceil(math.log2(t)) if t > 1 else 0):
        f = rel.astype(jnp.float32)
        rel = rel | (jnp.matmul(f, f) > 0)
    return rel


def node_depths(parents: jnp.ndarray) -> jnp.ndarray:
    """Depth of every node (roots have depth 0), as int32."""
    return ancestor_mask(parents).sum(-1).astype(jnp.int32) - 1


def chain_parents(length: int) -> jnp.ndarray:
    """The parents array of a chain of `length` nodes: [-1, 0, 1, ...]."""
    return jnp.arange(length, dtype=jnp.int32) - 1
