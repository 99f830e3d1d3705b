"""The decoding protocol every backbone implements (see shared DESIGN.md, "The decoding protocol").

Decoding code (AR, speculative, next-block, diffusion) is written once against this protocol.
All methods are pure functions of arrays, so they can be jitted, sharded and donated; the model
object itself is a hashable frozen dataclass that can be a static jit argument.
"""

from typing import Any, Protocol

import jax
import jax.numpy as jnp

Params = Any
Cache = Any
Pending = Any


class DecodingModel(Protocol):
    vocab_size: int

    def init(self, rng) -> Params:
        """Fresh parameters (plain arrays)."""

    def forward(self, params: Params, tokens: jnp.ndarray, **mask) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Training forward over whole sequences: (logits [B, T, V] float32, hidden [B, T, E])."""

    def prefill(self, params: Params, tokens: jnp.ndarray, lengths: jnp.ndarray, max_len: int,
                mask: str = "causal", block_size: int = 0, block_ids=None, logits_at=None
                ) -> tuple[jnp.ndarray, jnp.ndarray, Cache]:
        """Left-aligned prompts with per-row lengths -> (logits, hidden, cache of `max_len`);
        `mask`, `block_size`, `block_ids` as in `forward` (causal-only layers reject others).
        Logits [B, T, V], or with `logits_at` int32[B, K] only those positions' [B, K, V]: what
        a decoder reads (the last prompt token), never the whole prompt's."""

    def extend(self, params: Params, cache: Cache, tokens: jnp.ndarray, parents: jnp.ndarray
               ) -> tuple[jnp.ndarray, jnp.ndarray, Pending]:
        """T new tokens per row, structured by `parents` [B, T], on top of the committed cache:
        a chain, a token tree, or blocks whose nodes all see each other (`zoo_kernels.trees`)."""

    def commit(self, cache: Cache, pending: Pending, path: jnp.ndarray, n_accepted: jnp.ndarray
               ) -> Cache:
        """Keep the accepted nodes `path[b, :n_accepted[b]]` of the last extend."""


def after_forward(pending: Pending, logits: jnp.ndarray) -> Pending:
    """`pending` made to depend on the forward's `logits` [B, T, V] row by row (unchanged, unless
    a row's forward produced NaN: that row's pending is zeroed), so no commit of it can run
    before the whole forward has.

    Why: a commit writes each layer's cache in place. Without this dependency XLA may schedule
    layer i's write before layer i's attention (or SSM step) has read that cache, and then keeps
    both by copying every layer's cache on every step (at batch 16 as costly as the attention).
    `lax.optimization_barrier` does not order the two on XLA:CPU; a data dependency does. Per
    row, so a batch-sharded step stays local to its shard.
    """
    broken = jnp.isnan(logits[:, 0, 0])

    def tie(x):
        flag = broken.reshape(broken.shape + (1,) * (x.ndim - 1))
        return jnp.where(flag, jnp.zeros_like(x), x)

    return jax.tree.map(tie, pending)
