"""Next-block (semi-autoregressive) generation: one forward emits a whole block of s tokens.

A next-block model (`objective.kind: next_block`) attends bidirectionally inside blocks of s
tokens and causally across them, and position k of block b predicts token k of block b + 1.
Decoding rides the shared protocol: `prefill` the prompt's whole blocks block-causally, then one
`lax.while_loop` whose every step samples all s positions of the next block at once, `extend`s
the cache by that block (one bidirectional block, `zoo_kernels.trees.block_parents`) and `commit`s
all of it. The KV cache advances one block per forward, so n new tokens cost ~n / s forwards.

Prompts that are not a whole number of blocks. A prompt of P tokens is q = P // s whole blocks
and r = P % s more tokens. The whole blocks are prefilled; the r tokens open block q, whose first
r positions the first step forces to the prompt's tokens instead of sampling them. This is exact
under the model's factorisation: the s tokens of a block are independent given the earlier
blocks (the model emits all of them from block q - 1 alone), so fixing r of them leaves the
distribution of the other s - r unchanged. A prompt shorter than one block has nothing to
condition on and is left-padded with PAD to one block (out of the training distribution for
text: give text prompts of at least a block; video prompts are whole frames).

Each row stops at the block holding its EOS (the tokens after EOS in that block are dropped) or
at `max_new_tokens` (the last block is cut).
"""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo_kernels.trees import block_parents
from zoo.decode.ar import (CACHE_BUCKET, PROMPT_BUCKET, _round_up, check_budget_and_key,
                           pad_prompts)
from zoo.decode.sampling import Sampler


@dataclasses.dataclass
class BlockGeneration:
    tokens: np.ndarray  # int32[B, max_new_tokens]: new tokens, pad_id after a row's end
    num_tokens: np.ndarray  # int32[B]: new tokens per row, EOS included
    forwards: int  # model forwards run: the prefill and one extend per later block
    logits: np.ndarray | None = None  # float32[B, blocks * s, V] of every decoded block (keep_logits)


def prepare_blocks(prompts: Sequence[Sequence[int]], block_size: int, *, vocab_size: int,
                   pad_id: int):
    """Host-side layout of a request: prompts left-padded to at least one block, then split into
    the whole blocks to prefill and the remainder to force into the first decoded block.

    Returns (tokens int32[B, P'] left-aligned whole blocks, whole int32[B] their lengths, forced
    int32[B, s] each row's remainder in its first positions, n_forced int32[B], padded prompts).
    """
    s = block_size
    if s < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    pad_prompts(prompts, vocab_size, pad_id)  # validates: non-empty, ids in the vocabulary
    padded = [[pad_id] * (s - len(p)) + list(p) if len(p) < s else list(p) for p in prompts]
    whole = np.array([len(p) // s * s for p in padded], np.int32)
    bucket = s * max(1, PROMPT_BUCKET // s)
    tokens = np.full((len(padded), _round_up(int(whole.max()), bucket)), pad_id, np.int32)
    forced = np.full((len(padded), s), pad_id, np.int32)
    n_forced = np.zeros(len(padded), np.int32)
    for row, (p, w) in enumerate(zip(padded, whole)):
        tokens[row, :w] = p[:w]
        n_forced[row] = len(p) - w
        forced[row, : n_forced[row]] = p[w:]
    return tokens, whole, forced, n_forced, padded


def generate(model, params, prompts: Sequence[Sequence[int]], *, block_size: int,
             max_new_tokens: int, sampler: Sampler = Sampler(), rng=None, eos_id: int,
             pad_id: int, max_len: int | None = None, keep_logits: bool = False
             ) -> BlockGeneration:
    """Generate up to `max_new_tokens` per prompt, one block of `block_size` per forward.

    `sampler` (greedy, temperature, top-k, top-p) applies to every position of a block
    independently. `max_len` is the KV-cache length (default: what the longest request needs,
    rounded up); a request that cannot fit raises before any work. `keep_logits` also returns
    the logits of every decoded block (for tests).
    """
    rng = check_budget_and_key(max_new_tokens, sampler, rng)
    s = block_size
    tokens, whole, forced, n_forced, _ = prepare_blocks(prompts, s, vocab_size=model.vocab_size,
                                                        pad_id=pad_id)
    n_blocks = -(-(max_new_tokens + int(n_forced.max())) // s)
    need = int(whole.max()) + (n_blocks - 1) * s  # the last sampled block is never extended
    if max_len is None:
        max_len = _round_up(max(need, tokens.shape[1]), CACHE_BUCKET)
    if need > max_len:
        raise ValueError(f"prompt {int(whole.argmax())} has {int(whole.max())} tokens in whole "
                         f"blocks; {n_blocks} blocks of {s} for max_new_tokens={max_new_tokens} "
                         f"need a KV cache of {need} but the cache holds {max_len}")
    out, num, steps, logits = _decode(
        params, jnp.asarray(tokens), jnp.asarray(whole), jnp.asarray(forced),
        jnp.asarray(n_forced), rng, model=model, sampler=sampler, block_size=s,
        n_blocks=n_blocks, max_new_tokens=max_new_tokens, max_len=max_len, eos_id=eos_id,
        pad_id=pad_id, keep_logits=keep_logits)
    return BlockGeneration(np.asarray(out), np.asarray(num), int(steps),
                           np.asarray(logits) if keep_logits else None)


@functools.partial(jax.jit, static_argnames=("model", "block_size", "n_blocks",
                                             "max_new_tokens", "max_len", "eos_id", "pad_id",
                                             "keep_logits"))
def _decode(params, tokens, whole, forced, n_forced, rng, *, model, sampler, block_size,
            n_blocks, max_new_tokens, max_len, eos_id, pad_id, keep_logits):
    s, batch = block_size, tokens.shape[0]
    rows = jnp.arange(batch)[:, None]
    k = jnp.arange(s)[None, :]
    mask = dict(mask="block_causal", block_size=s) if s > 1 else {}
    # The last whole block predicts block q: its logits are all the decoder reads.
    first_logits, _, cache = model.prefill(params, tokens, whole, max_len, **mask,
                                           logits_at=whole[:, None] - s + k)

    def emit(step, block_logits, out, num, done):
        """Sample a block; write its new tokens (up to EOS, within the budget) after `num`."""
        block = sampler.sample(jax.random.fold_in(rng, step), block_logits)
        first_new = jnp.where(step == 0, n_forced, 0)[:, None]  # forced positions are the prompt's
        block = jnp.where(k < first_new, forced, block)
        is_new = (k >= first_new) & ~done[:, None]
        is_eos = is_new & (block == eos_id)
        eos_at = jnp.where(is_eos.any(-1), jnp.argmax(is_eos, -1), s)[:, None]
        slot = num[:, None] + k - first_new
        keep = is_new & (k <= eos_at) & (slot < max_new_tokens)
        out = out.at[rows, jnp.where(keep, slot, max_new_tokens)].set(block, mode="drop")
        num = num + keep.sum(-1, dtype=jnp.int32)
        return block, out, num, done | (eos_at[:, 0] < s) | (num >= max_new_tokens)

    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    num = jnp.zeros((batch,), jnp.int32)
    block, out, num, done = emit(0, first_logits, out, num, jnp.zeros((batch,), bool))
    vocab = first_logits.shape[-1]
    kept = (jnp.zeros((batch, n_blocks * s, vocab), jnp.float32).at[:, :s].set(first_logits)
            if keep_logits else jnp.zeros((0,), jnp.float32))
    structure = jnp.broadcast_to(block_parents(s), (batch, s))
    whole_block = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (batch, s))

    def cond(state):
        step, _, _, _, _, done, _ = state
        return (step < n_blocks) & ~jnp.all(done)

    def body(state):
        step, cache, block, out, num, done, kept = state
        logits, _, pending = model.extend(params, cache, block, structure)
        cache = model.commit(cache, pending, whole_block, jnp.where(done, 0, s))
        block, out, num, new_done = emit(step, logits, out, num, done)
        if keep_logits:
            kept = jax.lax.dynamic_update_slice(kept, logits.astype(jnp.float32), (0, step * s, 0))
        return step + 1, cache, block, out, num, new_done, kept

    state = (jnp.int32(1), cache, block, out, num, done, kept)
    steps, _, _, out, num, _, kept = jax.lax.while_loop(cond, body, state)
    return out, num, steps, kept
