"""Mamba2's state-space duality (SSD) over whole sequences: the chunked algorithm and the plain
recurrence it must equal.

Per head h, with scalar A_h < 0 and step dt_t > 0 (see ALGORITHMS.md section 5):

    h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t B_t^T      (state [P, N])
    y_t = h_t C_t + D_h x_t

`ssd_recurrent` runs that loop token by token (the definition, O(L) sequential steps).
`ssd_chunked` is what training and prefill use: inside a chunk of Q tokens the recurrence is the
masked quadratic form Y = (L o C B^T)(dt X) with L[i, j] = exp(sum of dt A over (j, i]); across
chunks only the [P, N] state is carried, by a loop unrolled over the (few) chunks: XLA:CPU runs
it faster than a lax.scan, which copies the carried state every step.
Both work in float32 and return the final state, so a prefill hands the decoder exactly the
state the recurrence would have reached.

Shapes: x [Bt, L, H, P]; dt [Bt, L, H]; A, D [H]; B, C [Bt, L, G, N] shared by the H / G heads of
a group; h0 [Bt, H, P, N] (default zeros).
"""

import jax
import jax.numpy as jnp


def _per_head(b_or_c, n_heads):
    """[..., G, N] group tensors -> [..., H, N], head h reading group h // (H / G)."""
    return jnp.repeat(b_or_c.astype(jnp.float32), n_heads // b_or_c.shape[-2], axis=-2)


def _zero_state(x, n):
    bt, _, h, p = x.shape
    return jnp.zeros((bt, h, p, n), jnp.float32)


def ssd_recurrent(x, dt, A, B, C, D, h0=None):
    """The recurrence, one token at a time. Returns (y [Bt, L, H, P] in x.dtype, final state)."""
    h = x.shape[2]
    h0 = _zero_state(x, B.shape[-1]) if h0 is None else h0
    a = jnp.exp(dt.astype(jnp.float32) * A)

    def step(state, inputs):
        x_t, dt_t, a_t, b_t, c_t = inputs
        state = a_t[..., None, None] * state + (dt_t[..., None, None] * x_t[..., None]
                                                * b_t[:, :, None, :])
        return state, jnp.einsum("bhpn,bhn->bhp", state, c_t) + D[:, None] * x_t

    xs = (x.astype(jnp.float32), dt.astype(jnp.float32), a, _per_head(B, h), _per_head(C, h))
    final, y = jax.lax.scan(step, h0, jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), xs))
    return jnp.swapaxes(y, 0, 1).astype(x.dtype), final


def ssd_chunked(x, dt, A, B, C, D, h0=None, chunk_size: int = 64):
    """The chunked SSD algorithm. Returns (y [Bt, L, H, P] in x.dtype, final state).

    The sequence is padded to whole chunks with dt = 0, which leaves the state untouched
    (exp(0 * A) = 1, no input), so the final state is the state after the last real token.
    Heads are split as [G, H / G] so B and C are read once per group, never copied per head:
    C_i . B_j is computed G times, not H times.
    """
    bt, length, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g  # heads per group
    q = min(chunk_size, length)
    pad = (-length) % q
    f32 = lambda v: jnp.pad(v.astype(jnp.float32),  # noqa: E731
                            [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
    chunks = lambda v: v.reshape(bt, -1, q, *v.shape[2:])  # noqa: E731
    # [Bt, nc, Q, G, R, ...]: head h is (group h // R, member h % R), as in _per_head.
    xc = chunks(f32(x)).reshape(bt, -1, q, g, r, p)
    dtc = chunks(f32(dt)).reshape(bt, -1, q, g, r)
    bc, cc = chunks(f32(B)), chunks(f32(C))  # [Bt, nc, Q, G, N]
    cum = jnp.cumsum(dtc * A.reshape(g, r), axis=2)  # log-decay from the chunk start

    # Inside each chunk: y_i = sum_{j <= i} exp(cum_i - cum_j) (C_i . B_j) dt_j x_j.
    causal = jnp.tril(jnp.ones((q, q), bool))[None, None, :, :, None, None]
    gap = jnp.where(causal, cum[:, :, :, None] - cum[:, :, None, :], -jnp.inf)  # [.., i, j, G, R]
    weights = jnp.exp(gap) * jnp.einsum("bcign,bcjgn->bcijg", cc, bc)[..., None]
    y = jnp.einsum("bcijgr,bcjgr,bcjgrp->bcigrp", weights, dtc, xc)

    # Each chunk's own contribution to the state at its end, then the states entering chunks.
    to_end = jnp.exp(cum[:, :, -1:] - cum)
    chunk_states = jnp.einsum("bcjgr,bcjgr,bcjgrp,bcjgn->bcgrpn", to_end, dtc, xc, bc)
    chunk_decay = jnp.exp(cum[:, :, -1])  # [Bt, nc, G, R]

    # A scan over chunks, not a Python loop: the program (and its compile time) stays one step
    # long whatever the sequence length (a 32k prefill is 512 chunks of 64).
    def carry(state, chunk):
        decay, contribution = chunk
        return decay[..., None, None] * state + contribution, state  # emits the entering state

    state = (_zero_state(x, n) if h0 is None else h0).reshape(bt, g, r, p, n)
    final, entering = jax.lax.scan(carry, state, (jnp.moveaxis(chunk_decay, 1, 0),
                                                  jnp.moveaxis(chunk_states, 1, 0)))
    entering = jnp.moveaxis(entering, 0, 1)  # [Bt, nc, G, R, P, N]
    y = y + jnp.einsum("bcign,bcgrpn,bcigr->bcigrp", cc, entering, jnp.exp(cum))
    y = y.reshape(bt, -1, h, p)[:, :length] + D[:, None] * x.astype(jnp.float32)
    return y.astype(x.dtype), final.reshape(bt, h, p, n)
