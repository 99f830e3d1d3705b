"""SSM tree scan, fast pure-XLA path (the CPU default), and the state at one node for commit.

The SSD "masked attention" form with the ancestor mask in place of the causal one (ALGORITHMS.md
section 5): one pass of batched matmuls whose cost grows as T² per head, not with the sum of the
tree's path lengths, and no per-node states. Grouped heads are reshaped to [G, H // G] so B and C
are never repeated per head: C Bᵀ is computed once per group. S and the exponentials are float32;
the decay exp(S_i - S_j) is taken only on the mask (off it the exponent is -inf, so exp gives 0
and no inf appears), where it is <= 1. Matmuls ask for full float32 precision, which TPUs and
GPUs otherwise trade for speed.
"""

import jax
import jax.numpy as jnp

from ..trees import ancestor_mask

_HIGHEST = jax.lax.Precision.HIGHEST


def _log_decay(dt, A, anc):
    """S = anc @ (dt * A): [B, T, H] float32, summed over anc's T columns in place of the
    [T, T] @ [T, H] matmul, which XLA:CPU would run as a call of its own; the sum fuses into
    S's consumers."""
    step = dt.astype(jnp.float32) * A.astype(jnp.float32)
    return sum(jnp.where(anc[:, :, j, None], step[:, None, j], 0.0) for j in range(anc.shape[-1]))


def ssm_tree_scan(x, dt, A, B, C, D, h0, parents, ancestors=None):
    """Same contract as `zoo_kernels.ssm_tree_scan.reference.ssm_tree_scan`; `ancestors` is
    `ancestor_mask(parents)` when the caller already has it (built once for all layers)."""
    bt, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    f32 = jnp.float32
    anc = ancestor_mask(parents) if ancestors is None else ancestors  # [B, T, T]
    log_decay = _log_decay(dt, A, anc)
    s = log_decay.reshape(bt, t, g, h // g).transpose(0, 2, 3, 1)  # [B, G, H/G, T]
    exponent = jnp.where(anc[:, None, None], s[..., :, None] - s[..., None, :], -jnp.inf)
    cb = jnp.einsum("bign,bjgn->bgij", C.astype(f32), B.astype(f32), precision=_HIGHEST)
    scores = jnp.exp(exponent) * cb[:, :, None]  # [B, G, H/G, T, T]
    xg = x.astype(f32).reshape(bt, t, g, h // g, p)
    x_dt = xg * dt.astype(f32).reshape(bt, t, g, h // g)[..., None]
    from_tree = jnp.einsum("bgkij,bjgkp->bigkp", scores, x_dt, precision=_HIGHEST)
    from_h0 = jnp.einsum("bign,bgkpn->bigkp", C.astype(f32),
                         h0.astype(f32).reshape(bt, g, h // g, p, n), precision=_HIGHEST)
    y = (from_tree + jnp.exp(log_decay).reshape(bt, t, g, h // g)[..., None] * from_h0
         + D.astype(f32).reshape(g, h // g)[:, :, None] * xg)
    return y.reshape(bt, t, h, p).astype(x.dtype), log_decay


def path_state(x, dt, B, log_decay, h0, on_path, node):
    """The state after node `node[b]` of each row, float32 [B, H, P, N]; h0 where node is -1.
    on_path bool[B, T]: the nodes of its root-to-node path (none where node is -1).

    h_i = exp(S_i) h0 + sum over j in anc(i) of exp(S_i - S_j) dt_j x_j B_jᵀ, with S = log_decay
    from `ssm_tree_scan`: one weighted sum over the node's path, no scan.
    """
    bt, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    f32 = jnp.float32
    has_node = node >= 0
    index = jnp.maximum(node, 0)
    s_node = jnp.where(has_node[:, None],
                       jnp.take_along_axis(log_decay, index[:, None, None], axis=1)[:, 0], 0.0)
    exponent = jnp.where(on_path[..., None], s_node[:, None] - log_decay, -jnp.inf)  # [B, T, H]
    weight = (jnp.exp(exponent) * dt.astype(f32)).reshape(bt, t, g, h // g)
    from_path = jnp.einsum("bjgk,bjgkp,bjgn->bgkpn", weight,
                           x.astype(f32).reshape(bt, t, g, h // g, p), B.astype(f32),
                           precision=_HIGHEST).reshape(bt, h, p, n)
    return jnp.exp(s_node)[..., None, None] * h0.astype(f32) + from_path


def node_state(x, dt, B, log_decay, h0, parents, node):
    """`path_state` with the path read from the tree: the ancestor mask's row at `node`."""
    index = jnp.maximum(node, 0)
    on_path = jnp.take_along_axis(ancestor_mask(parents), index[:, None, None], axis=1)[:, 0]
    return path_state(x, dt, B, log_decay, h0, on_path & (node >= 0)[:, None], node)
