"""Batched autoregressive generation over the decoding protocol, one jitted loop per shape bucket.

Prompts of different lengths are left-aligned and padded to a bucket; `prefill` fills the KV
cache, then a `lax.while_loop` runs `extend` (a one-node chain) + sample + `commit` until every
row has emitted EOS or `max_new_tokens`. The host sees nothing until the loop ends.

On CPU the KV cache grows as the rows do (`capacities`): the loop starts on the smallest
power-of-two fraction of `max_len` that holds the prompt bucket, and when the longest row fills it,
the cache is copied once into the next size and a loop over that size resumes. A step's attention
then reads a whole cache that is at most twice the longest row, where a full-size cache would have
it either read every slot or copy the prefix it needs out of each layer's cache on every step
(XLA:CPU materialises a slice before a matmul). On TPU and GPU the tree-attention kernels skip the
cache blocks past each row's length, so a program compiled for them keeps one full-size cache and
copies nothing (`zoo.platform.on_cpu` picks the loop when the program is lowered).
"""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo_kernels.tree_attention.xla import read_lengths
from zoo.decode.sampling import Sampler
from zoo.layers.kv_cache import grow_kv, has_kv
from zoo.platform import on_cpu

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


def capacities(prompt_len: int, max_new_tokens: int, max_len: int) -> list[int]:
    """The KV-cache sizes a decode loop grows through, smallest first: the sizes the XLA
    attention reads (`read_lengths(max_len)`: max_len, max_len / 2, ... >= 128) that are
    multiples of CACHE_BUCKET, from the smallest holding the prompt bucket to the smallest holding
    the bucket and every new token (max_len at most). One size when max_len has no such halves."""
    sizes = [n for n in read_lengths(max_len) if n % CACHE_BUCKET == 0 and n >= prompt_len]
    sizes = [n for n in sizes if n < prompt_len + max_new_tokens] + [
        next((n for n in sizes if n >= prompt_len + max_new_tokens), max_len)]
    return sorted(set(sizes))


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
    loop = functools.partial(_loop, params, tokens, lengths, rng, model=model, sampler=sampler,
                             max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)
    growing = capacities(tokens.shape[1], max_new_tokens, max_len)
    if len(growing) == 1:
        return loop(growing)
    return on_cpu(lambda: loop(growing), lambda: loop([max_len]))


def _loop(params, tokens, lengths, rng, sizes, *, model, sampler, max_new_tokens, eos_id,
          pad_id):
    """The decode loop over a cache of `sizes[0]` slots, grown to each next size in turn."""
    batch = tokens.shape[0]
    logits, _, cache = model.prefill(params, tokens, lengths, sizes[0],
                                     logits_at=(lengths - 1)[:, None])
    if not has_kv(cache):  # nothing to grow (a pure SSM model): one loop
        cache, sizes = grow_kv(cache, sizes[-1]), sizes[-1:]
    first = sampler.sample(jax.random.fold_in(rng, 0), logits[:, 0])
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = first == eos_id
    num = jnp.ones((batch,), jnp.int32)
    chain = jnp.full((batch, 1), -1, jnp.int32)  # a one-node tree: plain decoding
    first_node = jnp.zeros((batch, 1), jnp.int32)

    def cond(state, size):
        step, cache, _, _, done, _ = state
        go = (step < max_new_tokens) & ~jnp.all(done)
        if size == sizes[-1]:  # holds every row to its end
            return go
        return go & (jnp.max(cache.lengths) < size)  # the next token fits

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
    for i, size in enumerate(sizes):
        if i:  # the longest row filled the size before (or all are done): one copy, go on
            state = (state[0], grow_kv(state[1], size), *state[2:])
        state = jax.lax.while_loop(functools.partial(cond, size=size), body, state)
    _, _, _, out, _, num = state
    return out, num
