"""Batched autoregressive generation over the decoding protocol, one jitted loop per shape bucket.

Prompts of different lengths are left-aligned and padded to a bucket; `prefill` fills the KV
cache, then a `lax.while_loop` runs `extend` (a one-node chain) + sample + `commit` until every
row has emitted EOS or `max_new_tokens`. The host sees nothing until the loop ends.
"""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo.decode.sampling import Sampler

PROMPT_BUCKET = 32  # prompts are padded to a multiple of this: one compile per bucket
CACHE_BUCKET = 128


@dataclasses.dataclass
class Generation:
    tokens: np.ndarray  # int32[B, max_new_tokens], pad_id after a row's end
    num_tokens: np.ndarray  # int32[B]: generated tokens per row, EOS included


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_prompts(prompts: Sequence[Sequence[int]], vocab_size: int, pad_id: int,
                bucket: int = PROMPT_BUCKET):
    """Validate prompts and left-align them into (tokens int32[B, P], lengths int32[B])."""
    if not prompts:
        raise ValueError("no prompts given")
    for row, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {row} is empty; give at least one token (e.g. BOS)")
        ids = np.asarray(prompt)
        bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
        if bad.size:
            raise ValueError(f"prompt {row} has token id {int(ids[bad[0]])} at position "
                             f"{int(bad[0])}, outside the vocabulary [0, {vocab_size})")
    lengths = np.array([len(p) for p in prompts], np.int32)
    tokens = np.full((len(prompts), _round_up(int(lengths.max()), bucket)), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = prompt
    return tokens, lengths


def check_budget_and_key(max_new_tokens: int, sampler: Sampler, rng):
    """What every decoder checks first: a positive token budget, and a PRNG key when sampling
    (greedy decoding gets a fixed one). Returns the key."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if rng is None:
        if not sampler.greedy:
            raise ValueError("sampling with temperature > 0 needs an explicit PRNG key `rng`")
        rng = jax.random.key(0)
    return rng


def prepare_request(prompts, *, vocab_size: int, pad_id: int, max_new_tokens: int,
                    sampler: Sampler, rng, max_len: int | None):
    """Validate a generation request before any work and size its KV cache.

    The cache must hold the longest prompt and its new tokens; `max_len` defaults to that,
    rounded up to a bucket. Returns (tokens, lengths, rng, max_len).
    """
    rng = check_budget_and_key(max_new_tokens, sampler, rng)
    tokens, lengths = pad_prompts(prompts, vocab_size, pad_id)
    longest = int(lengths.max())
    need = longest + max_new_tokens
    if max_len is None:
        max_len = _round_up(max(need, tokens.shape[1]), CACHE_BUCKET)
    if need > max_len:
        raise ValueError(f"prompt {int(lengths.argmax())} has {longest} tokens; with "
                         f"max_new_tokens={max_new_tokens} it needs a KV cache of "
                         f"{need} but the cache holds {max_len}")
    if tokens.shape[1] > max_len:  # the bucket overshoots a tight cache: pad less
        tokens = tokens[:, :max_len]
    return tokens, lengths, rng, max_len


def generate(model, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             sampler: Sampler = Sampler(), rng=None, eos_id: int, pad_id: int,
             max_len: int | None = None) -> Generation:
    """Generate up to `max_new_tokens` per prompt; each row stops after its own EOS.

    `max_len` is the KV-cache length (default: prompt bucket + max_new_tokens, rounded up);
    a prompt that cannot fit with its new tokens raises before any work.
    """
    tokens, lengths, rng, max_len = prepare_request(
        prompts, vocab_size=model.vocab_size, pad_id=pad_id, max_new_tokens=max_new_tokens,
        sampler=sampler, rng=rng, max_len=max_len)
    out, num = _decode(params, jnp.asarray(tokens), jnp.asarray(lengths), rng, model=model,
                       sampler=sampler, max_new_tokens=max_new_tokens, max_len=max_len,
                       eos_id=eos_id, pad_id=pad_id)
    return Generation(np.asarray(out), np.asarray(num))


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "max_len",
                                             "eos_id", "pad_id"))
def _decode(params, tokens, lengths, rng, *, model, sampler, max_new_tokens, max_len, eos_id,
            pad_id):
    batch = tokens.shape[0]
    logits, _, cache = model.prefill(params, tokens, lengths, max_len,
                                     logits_at=(lengths - 1)[:, None])
    first = sampler.sample(jax.random.fold_in(rng, 0), logits[:, 0])
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = first == eos_id
    num = jnp.ones((batch,), jnp.int32)
    chain = jnp.full((batch, 1), -1, jnp.int32)  # a one-node tree: plain decoding
    first_node = jnp.zeros((batch, 1), jnp.int32)

    def cond(state):
        step, _, _, _, done, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, cache, last, out, done, num = state
        logits, _, pending = model.extend(params, cache, last[:, None], chain)
        cache = model.commit(cache, pending, first_node, (~done).astype(jnp.int32))
        token = sampler.sample(jax.random.fold_in(rng, step), logits[:, 0])
        token = jnp.where(done, pad_id, token)
        out = out.at[:, step].set(token)
        num = num + (~done).astype(jnp.int32)
        return step + 1, cache, token, out, done | (token == eos_id), num

    state = (jnp.int32(1), cache, first, out, done, num)
    _, _, _, out, _, num = jax.lax.while_loop(cond, body, state)
    return out, num
