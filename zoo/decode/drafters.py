"""Drafters: cheap proposals of a token tree under the last emitted token, for speculative decoding.

Every drafter implements the same small protocol, so the engine (`zoo.decode.speculative`) knows
none of their internals:

    state = drafter.init(params, prompt_tokens, prompt_lengths, max_len)
    draft, state = drafter.propose(params, state, last, rng)     # a Draft of `num_nodes` nodes
    state = drafter.update(params, state, draft, verdict, target_logits)  # after verification

A Draft's node 0 is the last emitted token (the root, accepted by construction); the other nodes
are proposals. `update` sees the accepted path and the target's logits at every node, so a drafter
can keep its own state (a KV cache, a token history, recycled candidates) in step with the target. `rule` says how siblings were drafted, which
decides the lossless stochastic acceptance rule (shared ALGORITHMS.md §3).
"""

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from zoo.decode.sampling import Sampler


@flax.struct.dataclass
class Draft:
    tokens: jnp.ndarray  # int32[B, T]; node 0 = last emitted token
    parents: jnp.ndarray  # int32[B, T]
    logprobs: Any = None  # float32[B, T, V]: q(.|node) the node's children were drafted from


def _committed_tokens(draft: Draft, verdict) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The tokens the target committed this step (root + accepted drafts), [B, D+1], and count."""
    return jnp.take_along_axis(draft.tokens, verdict.path, axis=1), verdict.n_accepted


def _chain(batch: int, length: int) -> jnp.ndarray:
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32) - 1, (batch, length))


class _ChainDrafter:
    """Drafters proposing a chain of `num_draft` tokens under the root."""

    num_draft: int

    @property
    def num_nodes(self) -> int:
        return self.num_draft + 1

    @property
    def max_depth(self) -> int:
        return self.num_draft


@dataclasses.dataclass(frozen=True)
class PromptLookup(_ChainDrafter):
    """Train-free drafting by n-gram lookup (prompt lookup decoding): find the latest earlier
    occurrence of the last `max_ngram` (then fewer) tokens in prompt + output and propose the
    `num_draft` tokens that followed it, as a chain. Code repeats itself a lot, so this is free
    speed on completions that copy identifiers or lines."""

    num_draft: int = 6
    max_ngram: int = 3
    rule = "deterministic"  # proposals are point masses

    def init(self, params, tokens, lengths, max_len):
        history = jnp.zeros((tokens.shape[0], max_len), jnp.int32)
        history = history.at[:, : tokens.shape[1]].set(tokens[:, :max_len])
        return {"history": history, "length": lengths.astype(jnp.int32)}

    def propose(self, params, state, last, rng):
        history, length = state["history"], state["length"]
        b, size = history.shape
        rows = jnp.arange(b)[:, None]
        seq = history.at[jnp.arange(b), jnp.minimum(length, size - 1)].set(last)
        n = length + 1  # tokens in seq
        ends = jnp.arange(size)[None, :]  # candidate end index j of an earlier match
        best = jnp.full((b,), -1)
        for ngram in range(self.max_ngram, 0, -1):
            match = (ends >= ngram - 1) & (ends <= n[:, None] - 2)
            for i in range(ngram):  # seq[j - i] == seq[n - 1 - i]
                key = seq[jnp.arange(b), jnp.maximum(n - 1 - i, 0)][:, None]
                match &= jnp.take_along_axis(seq, jnp.maximum(ends - i, 0), axis=1) == key
            latest = jnp.max(jnp.where(match, ends, -1), axis=1)
            best = jnp.where((best < 0) & (latest >= 0), latest, best)
        idx = jnp.clip(best[:, None] + 1 + jnp.arange(self.num_draft), 0, size - 1)
        proposal = jnp.where(best[:, None] >= 0, seq[rows, idx], last[:, None])
        tokens = jnp.concatenate([last[:, None], proposal], axis=1).astype(jnp.int32)
        return Draft(tokens, _chain(b, self.num_nodes)), state

    def update(self, params, state, draft, verdict, target_logits):
        committed, n = _committed_tokens(draft, verdict)
        history, length = state["history"], state["length"]
        j = jnp.arange(committed.shape[1])[None, :]
        slots = jnp.where(j < n[:, None], length[:, None] + j, history.shape[1])
        history = history.at[jnp.arange(history.shape[0])[:, None], slots].set(committed,
                                                                                mode="drop")
        return {"history": history, "length": length + n}


@dataclasses.dataclass(frozen=True)
class DraftModelChain(_ChainDrafter):
    """A small independent draft LM (same tokenizer) proposing `num_draft` tokens as a chain:
    greedy (rule "deterministic") when `sampler` is greedy, else sampled from its own sampling
    distribution (rule "iid", one candidate per node: standard speculative sampling).

    Its KV cache tracks the target's committed tokens: proposing commits the drafted chain into
    it, and `update` rolls the length back to the accepted prefix (slots past the length are
    ignored, so rollback is free). When every draft is accepted the last draft token was never
    fed to the draft model; it is carried into the next proposal's first extend.
    """

    model: Any  # a DecodingModel
    num_draft: int = 4
    sampler: Sampler = Sampler()

    @property
    def rule(self) -> str:
        return "deterministic" if self.sampler.greedy else "iid"

    def init(self, params, tokens, lengths, max_len):
        _, _, cache = self.model.prefill(params, tokens, lengths, max_len)
        b = tokens.shape[0]
        return {"cache": cache, "carry": jnp.zeros((b,), jnp.int32),
                "has_carry": jnp.zeros((b,), bool), "base": cache.lengths}

    def _pick(self, rng, logits):
        return self.sampler.sample(rng, logits), self.sampler.logprobs(logits)

    def propose(self, params, state, last, rng):
        model, cache, has_carry = self.model, state["cache"], state["has_carry"]
        b = last.shape[0]
        rows = jnp.arange(b)
        # First extend: [carry, last] when a token is owed, else [last, (unused)].
        pair = jnp.where(has_carry[:, None], jnp.stack([state["carry"], last], 1),
                         jnp.stack([last, last], 1))
        logits, _, pending = model.extend(params, cache, pair, _chain(b, 2))
        fed = has_carry.astype(jnp.int32) + 1
        cache = model.commit(cache, pending, _chain(b, 2) + 1, fed)
        base = cache.lengths  # committed tokens + last
        keys = jax.random.split(rng, self.num_draft)
        token, logprobs = self._pick(keys[0], logits[rows, fed - 1])
        tokens, qs = [last, token], [logprobs]
        for k in range(1, self.num_draft):
            logits, _, pending = model.extend(params, cache, token[:, None], _chain(b, 1))
            cache = model.commit(cache, pending, jnp.zeros((b, 1), jnp.int32),
                                 jnp.ones((b,), jnp.int32))
            token, logprobs = self._pick(keys[k], logits[:, 0])
            tokens.append(token)
            qs.append(logprobs)
        qs.append(jnp.zeros_like(qs[0]))  # the last node has no drafted children
        draft = Draft(jnp.stack(tokens, 1).astype(jnp.int32), _chain(b, self.num_nodes),
                      jnp.stack(qs, 1))
        return draft, {**state, "cache": cache, "base": base}

    def update(self, params, state, draft, verdict, target_logits):
        accepted = verdict.n_accepted - 1  # drafted tokens accepted
        cache = state["cache"]
        fed = jnp.minimum(accepted, self.num_draft - 1)
        cache = cache.replace(lengths=(state["base"] + fed).astype(jnp.int32))
        return {"cache": cache, "carry": draft.tokens[:, -1],
                "has_carry": accepted == self.num_draft, "base": state["base"]}
