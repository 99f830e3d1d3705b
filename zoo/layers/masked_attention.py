"""Softmax attention over whole sequences under a boolean mask (training, prefill), with a
hand-written backward.

`masked_attention` computes what `jax.nn.dot_product_attention(q, k, v, mask=mask)` does, same
signature. Its forward is the same maths; its backward is FlashAttention's, written out:

    dP = dO V^T,  dV = P^T dO,  dS = P * (dP - rowsum(dO * O)),  dQ = dS K / sqrt(D),
    dK = dS^T Q / sqrt(D)

with every product taking the inputs' dtype (bfloat16 x bfloat16 -> float32 accumulation) and the
softmax in float32. Autodiff of `jax.nn.dot_product_attention` instead upcasts P V and all four
backward products to float32. With SwiGLU's written-out backward (`zoo.layers.mlp`), this took
code_ref's train step from 0.50 to 0.39 s in bfloat16 and from 0.79 to 0.72 s in float32
(bench/train_step.py, timed in turns).

Grouped-query heads are folded into the rows: the G query heads that share a KV head form one
[G*T, D] matrix against that head's [S, D] keys, so each product is one batched GEMM per
(batch, KV head).
"""

import jax
import jax.numpy as jnp

from zoo.layers.params import materialized

_F32 = jnp.float32


def reference_masked_attention(q, k, v, mask):
    """The definition: `jax.nn.dot_product_attention` and its autodiff."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


def _bdot(a, b, contract):
    """Batched over the leading (batch, KV head) axes; float32 accumulation."""
    return jax.lax.dot_general(a, b, (contract, ((0, 1), (0, 1))), preferred_element_type=_F32)


def _group_queries(x, n_kv):
    """[B, T, H, D] -> [B, K, G*T, D]: the G query heads of each KV head stacked as rows."""
    b, t, h, d = x.shape
    g = h // n_kv
    return x.reshape(b, t, n_kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, n_kv, g * t, d)


def _ungroup_queries(x, t):
    """[B, K, G*T, D] -> [B, T, H, D], the inverse of `_group_queries`."""
    b, n_kv, gt, d = x.shape
    g = gt // t
    return x.reshape(b, n_kv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, n_kv * g, d)


def _forward(q, k, v, mask):
    t, n_kv, d = q.shape[1], k.shape[2], q.shape[3]
    qg = materialized(_group_queries(q, n_kv))  # [B, K, G*T, D]
    kt, vt = (materialized(x.transpose(0, 2, 1, 3)) for x in (k, v))  # [B, K, S, D]
    logits = _bdot(qg, kt, ((3,), (3,))) * d ** -0.5  # [B, K, G*T, S]
    logits = jnp.where(_grouped_mask(mask, q.shape[2] // n_kv), logits, jnp.finfo(_F32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    out = _bdot(probs, vt, ((3,), (2,))).astype(q.dtype)  # [B, K, G*T, D]
    return _ungroup_queries(out, t), (qg, kt, vt, probs, out, mask)


def _grouped_mask(mask, g):
    """[B|1, 1, T, S] -> [B|1, 1, G*T, S]: the mask of each of the G stacked query heads."""
    b, _, t, s = mask.shape
    return jnp.broadcast_to(mask[:, :, None], (b, 1, g, t, s)).reshape(b, 1, g * t, s)


def masked_attention(q, k, v, mask):
    """q [B, T, H, D], k and v [B, S, K, D] (H a multiple of K), mask bool[B or 1, 1, T, S]
    (True: query may attend to key) -> [B, T, H, D] in q's dtype, scaled by 1/sqrt(D). A row
    with no True attends uniformly, as jax.nn.dot_product_attention's does."""
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != (q.shape[1], k.shape[1]):
        raise ValueError(f"masked_attention takes a mask of shape [B or 1, 1, T, S] = "
                         f"[B or 1, 1, {q.shape[1]}, {k.shape[1]}], got {mask.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{q.shape[2]} query heads do not group over {k.shape[2]} KV heads")
    return _attention(q, k, v, mask)


@jax.custom_vjp
def _attention(q, k, v, mask):
    return _forward(q, k, v, mask)[0]


def _backward(residuals, d_out):
    qg, kt, vt, probs, out, mask = residuals
    t, scale = d_out.shape[1], qg.shape[-1] ** -0.5
    do = materialized(_group_queries(d_out.astype(qg.dtype), kt.shape[1]))
    dp = _bdot(do, vt, ((3,), (3,)))  # [B, K, G*T, S]
    delta = jnp.sum(do.astype(_F32) * out.astype(_F32), axis=-1, keepdims=True)
    # Masked logits are constants: no gradient (it matters in a row that sees nothing).
    ds = jnp.where(_grouped_mask(mask, qg.shape[2] // t), probs.astype(_F32) * (dp - delta),
                   0).astype(qg.dtype)
    dq = (_bdot(ds, kt, ((3,), (2,))) * scale).astype(qg.dtype)
    dk = (_bdot(materialized(jnp.swapaxes(ds, 2, 3)), qg, ((3,), (2,))) * scale).astype(kt.dtype)
    dv = _bdot(materialized(jnp.swapaxes(probs, 2, 3)), do, ((3,), (2,))).astype(vt.dtype)
    return (_ungroup_queries(dq, t), dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3), None)


_attention.defvjp(_forward, _backward)
