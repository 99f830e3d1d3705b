"""The recurrent cache of Mamba2 layers and its commit (the state at the accepted tree node).

A Mamba2 layer's whole past is two small tensors per row: the last w - 1 inputs of its causal
convolution and the SSM state [H, P, N]. `extend` over a tree does not produce a state per node
(T states of [H, P, N] would dwarf everything else); it keeps what the state of any one node is
made of, and `commit` builds the state of the accepted node alone (ALGORITHMS.md section 5).
"""

import flax.struct
import jax
import jax.numpy as jnp

from zoo_kernels.ssm_tree_scan import path_state


@flax.struct.dataclass
class SSMCache:
    """Per Mamba2 layer (tuples, one entry per layer, as `KVCache` for the same reason):
    conv [B, w - 1, C] the last w - 1 convolution inputs, oldest first; state [B, H, P, N]
    float32 SSM state."""

    conv: tuple
    state: tuple

    @classmethod
    def zeros(cls, n_layers, batch, conv_width, conv_dim, n_heads, head_dim, state_dim, dtype):
        return cls(tuple(jnp.zeros((batch, conv_width - 1, conv_dim), dtype)
                         for _ in range(n_layers)),
                   tuple(jnp.zeros((batch, n_heads, head_dim, state_dim), jnp.float32)
                         for _ in range(n_layers)))


@flax.struct.dataclass
class SSMPending:
    """What T extended-but-uncommitted tree nodes leave behind, one entry per Mamba2 layer:
    conv_inputs [B, T, C]; x [B, T, H, P]; dt, log_decay [B, T, H]; B [B, T, G, N]. The tree
    itself is not kept: a commit reads the accepted node's ancestors off the accepted path."""

    conv_inputs: tuple
    x: tuple
    dt: tuple
    B: tuple
    log_decay: tuple


def advance_window(window, inputs, n):
    """The last w - 1 entries of `window ++ inputs[:n]`, per row.

    window [B, w - 1, C] (oldest first); inputs [B, M, C]; n int32[B] in [0, M].
    """
    w1 = window.shape[1]
    joined = jnp.concatenate([window, inputs.astype(window.dtype)], axis=1)
    index = n[:, None] + jnp.arange(w1)[None, :]
    return jnp.take_along_axis(joined, index[:, :, None], axis=1)


def path_mask(path, n_accepted, n_nodes: int):
    """bool[B, n_nodes]: node j is one of `path[b, :n_accepted[b]]`. The accepted path is the
    last accepted node's root-to-node path, so this is that node's ancestor mask row, read off
    the verdict once for all layers instead of rebuilt from the tree in each."""
    accepted = jnp.arange(path.shape[1]) < n_accepted[:, None]  # [B, D + 1]
    hit = (path[:, :, None] == jnp.arange(n_nodes)) & accepted[:, :, None]
    return jnp.any(hit, axis=1)


def commit_ssm(cache: SSMCache, pending: SSMPending, path, n_accepted) -> SSMCache:
    """Move every Mamba2 layer to the last accepted node `path[b, n_accepted[b] - 1]`.

    The conv window slides over the accepted nodes' inputs (in path order); the SSM state is that
    node's state. Rows with n_accepted 0 keep their cache.
    """
    rows = jnp.arange(path.shape[0])
    last = jnp.where(n_accepted > 0, path[rows, jnp.maximum(n_accepted - 1, 0)], -1)
    on_path = path_mask(path, n_accepted, pending.x[0].shape[1])
    conv = tuple(advance_window(window, inputs[rows[:, None], path], n_accepted)
                 for window, inputs in zip(cache.conv, pending.conv_inputs))
    state = tuple(path_state(x, dt, B, log_decay, start, on_path, last)
                  for x, dt, B, log_decay, start in zip(pending.x, pending.dt, pending.B,
                                                        pending.log_decay, cache.state))
    return SSMCache(conv, state)
