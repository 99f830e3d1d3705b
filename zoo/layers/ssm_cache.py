"""The recurrent cache of Mamba2 layers and its commit (the state at the accepted tree node).

A Mamba2 layer's whole past is two small tensors per row: the last w - 1 inputs of its causal
convolution and the SSM state [H, P, N]. `extend` over a tree does not produce a state per node
(T states of [H, P, N] would dwarf everything else); it keeps what the state of any one node is
made of, and `commit` builds the state of the accepted node alone (ALGORITHMS.md section 5).
"""

import flax.struct
import jax
import jax.numpy as jnp

from kernels.ssm_tree_scan import node_state


@flax.struct.dataclass
class SSMCache:
    """conv: [Lm, B, w - 1, C] the last w - 1 convolution inputs, oldest first;
    state: [Lm, B, H, P, N] float32 SSM states (Lm Mamba2 layers)."""

    conv: jnp.ndarray
    state: jnp.ndarray

    @classmethod
    def zeros(cls, n_layers, batch, conv_width, conv_dim, n_heads, head_dim, state_dim, dtype):
        return cls(jnp.zeros((n_layers, batch, conv_width - 1, conv_dim), dtype),
                   jnp.zeros((n_layers, batch, n_heads, head_dim, state_dim), jnp.float32))


@flax.struct.dataclass
class SSMPending:
    """What T extended-but-uncommitted tree nodes leave behind, per Mamba2 layer:
    conv_inputs [Lm, B, T, C]; x [Lm, B, T, H, P]; dt, log_decay [Lm, B, T, H];
    B [Lm, B, T, G, N]; and the tree's parents [B, T]."""

    conv_inputs: jnp.ndarray
    x: jnp.ndarray
    dt: jnp.ndarray
    B: jnp.ndarray
    log_decay: jnp.ndarray
    parents: jnp.ndarray


def advance_window(window, inputs, n):
    """The last w - 1 entries of `window ++ inputs[:n]`, per row.

    window [B, w - 1, C] (oldest first); inputs [B, M, C]; n int32[B] in [0, M].
    """
    w1 = window.shape[1]
    joined = jnp.concatenate([window, inputs.astype(window.dtype)], axis=1)
    index = n[:, None] + jnp.arange(w1)[None, :]
    return jnp.take_along_axis(joined, index[:, :, None], axis=1)


def commit_ssm(cache: SSMCache, pending: SSMPending, path, n_accepted) -> SSMCache:
    """Move every Mamba2 layer to the last accepted node `path[b, n_accepted[b] - 1]`.

    The conv window slides over the accepted nodes' inputs (in path order); the SSM state is that
    node's state. Rows with n_accepted 0 keep their cache.
    """
    b = path.shape[0]
    rows = jnp.arange(b)
    accepted_inputs = pending.conv_inputs[:, rows[:, None], path]  # [Lm, B, M, C]
    conv = jax.vmap(advance_window, in_axes=(0, 0, None))(cache.conv, accepted_inputs, n_accepted)
    last = jnp.where(n_accepted > 0, path[rows, jnp.maximum(n_accepted - 1, 0)], -1)
    state = jax.vmap(node_state, in_axes=(0, 0, 0, 0, 0, None, None))(
        pending.x, pending.dt, pending.B, pending.log_decay, cache.state, pending.parents, last)
    return SSMCache(conv, state)
