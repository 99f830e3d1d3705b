"""SSM tree scan, the readable truth: the Mamba2 recurrence node by node in topological order.

Each node's state is its parent's state (h0 for a root) decayed and updated by the node's input,
exactly the sequential recurrence along every root-to-node path (ALGORITHMS.md section 5), with
all T per-node states kept. Slow (T sequential steps, [B, T, H, P, N] states) and obviously right.
"""

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _per_head(group_tensor, heads: int):
    """[B, T, G, N] shared by groups -> [B, T, H, N], head h reading group h // (H // G)."""
    return jnp.repeat(group_tensor.astype(jnp.float32), heads // group_tensor.shape[2], axis=2)


def _scan(x, dt, A, B, h0, parents):
    """(states [B, T, H, P, N], log_decay [B, T, H]), both float32, by the recurrence."""
    bt, t, h, p = x.shape
    n = B.shape[-1]
    dt = dt.astype(jnp.float32)
    step_log_decay = dt * A.astype(jnp.float32)  # [B, T, H]
    inputs = jnp.einsum("bthp,bthn->bthpn", dt[..., None] * x.astype(jnp.float32),
                        _per_head(B, h), precision=_HIGHEST)
    rows = jnp.arange(bt)

    def node(i, carry):
        states, log_decay = carry
        parent = parents[:, i]
        is_root = parent < 0
        parent_state = jnp.where(is_root[:, None, None, None], h0,
                                 states[rows, jnp.maximum(parent, 0)])
        parent_log_decay = jnp.where(is_root[:, None], 0.0,
                                     log_decay[rows, jnp.maximum(parent, 0)])
        state = jnp.exp(step_log_decay[:, i])[..., None, None] * parent_state + inputs[:, i]
        return (states.at[:, i].set(state),
                log_decay.at[:, i].set(parent_log_decay + step_log_decay[:, i]))

    init = (jnp.zeros((bt, t, h, p, n), jnp.float32), jnp.zeros((bt, t, h), jnp.float32))
    return jax.lax.fori_loop(0, t, node, init)


def node_states(x, dt, A, B, h0, parents):
    """The state after every node, float32 [B, T, H, P, N] (shapes as in `ssm_tree_scan`)."""
    return _scan(x, dt, A, B, h0.astype(jnp.float32), parents)[0]


def ssm_tree_scan(x, dt, A, B, C, D, h0, parents):
    """Mamba2 outputs of every tree node as if decoded along its own root-to-node path.

    Args:
      x: [B, T, H, P] inputs per head (float32 or bfloat16).
      dt: [B, T, H] positive step sizes.
      A: [H] negative decay rates.  D: [H] skip weights.
      B, C: [B, T, G, N], shared by the H // G heads of a group.
      h0: [B, H, P, N] float32 state before the tree.
      parents: int32[B, T] tree structure (see kernels/trees.py); a forest is allowed.
    Returns:
      (y [B, T, H, P] in x's dtype, log_decay [B, T, H] float32 = the path sum of dt * A).
    """
    states, log_decay = _scan(x, dt, A, B, h0.astype(jnp.float32), parents)
    y = jnp.einsum("bthpn,bthn->bthp", states, _per_head(C, x.shape[2]), precision=_HIGHEST)
    y = y + D.astype(jnp.float32)[:, None] * x.astype(jnp.float32)
    return y.astype(x.dtype), log_decay
