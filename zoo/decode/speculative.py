"""Lossless speculative decoding over token trees, written once against the decoding protocol.

Each step: the drafter proposes a tree under the last emitted token; the target runs ONE
`extend` over the whole tree; verification picks the accepted root-to-node path (greedy:
identical to AR greedy; sampling: identical in distribution to AR sampling); `commit` keeps only
that path in the target's cache; the drafter updates its own state. The loop is one jitted
`lax.while_loop` per shape: no host round trip per step.

Drafters that read the target's hidden states (draft heads: Medusa, Hydra) say so with a class
attribute `needs_hidden = True`; they then also get `target_hidden=` in `init` (the prefill's
hidden states [B, P, E]) and in `update` (the tree forward's [B, T, E]). Other drafters are
called exactly as before.
"""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo.decode.ar import Generation, prepare_request
from zoo.decode.sampling import Sampler
from zoo.decode.trees import valid_trees
from zoo.decode.verify import verify_greedy, verify_stochastic


@dataclasses.dataclass
class SpeculativeGeneration(Generation):
    target_forwards: np.ndarray  # int32[B]: target tree forwards while the row was active
    # Mean tokens emitted per target forward (tau), over all rows; the prefill is not counted.
    tau: float = 0.0
    # int32[D, T-1] each: how often an accepted node at depth d had a rank-r candidate after it
    # (offered) and how often that candidate was accepted: the drafter's positional acceptance,
    # which `zoo.decode.tree_search` sizes trees by.
    offered: np.ndarray | None = None
    accepted: np.ndarray | None = None

    @property
    def acceptance(self) -> np.ndarray:
        """float[D, T-1]: P(the rank-r candidate after an accepted depth-d node is accepted);
        0 where never offered."""
        return self.accepted / np.maximum(self.offered, 1)


def generate(target, target_params, prompts: Sequence[Sequence[int]], *, drafter,
             drafter_params=None, max_new_tokens: int, sampler: Sampler = Sampler(), rng=None,
             eos_id: int, pad_id: int, max_len: int | None = None) -> SpeculativeGeneration:
    """Like `zoo.decode.ar.generate`, with a drafter; the output is what AR decoding gives
    (greedy: token for token; sampling: in distribution)."""
    # The tree's nodes never enter the cache (extend keeps them pending; commit copies only the
    # accepted path), so the cache needs what AR decoding needs, whatever the tree's size.
    tokens, lengths, rng, max_len = prepare_request(
        prompts, vocab_size=target.vocab_size, pad_id=pad_id, max_new_tokens=max_new_tokens,
        sampler=sampler, rng=rng, max_len=max_len)
    state = _decode(target_params, drafter_params, jnp.asarray(tokens), jnp.asarray(lengths), rng,
                    target=target, drafter=drafter, sampler=sampler,
                    max_new_tokens=max_new_tokens, max_len=max_len, eos_id=eos_id, pad_id=pad_id)
    state = jax.device_get(state)
    if state["bad_step"]:
        raise ValueError(f"{type(drafter).__name__} proposed an invalid tree at step "
                         f"{state['bad_step']}: parents must be -1 at node 0 and in [0, i) at "
                         f"node i, no deeper than its max_depth {drafter.max_depth}")
    num, forwards = state["num"], state["forwards"]
    # The first token comes from the prefill, not from a tree forward.
    tau = float((num - 1).sum() / max(forwards.sum(), 1))
    return SpeculativeGeneration(state["out"][:, :max_new_tokens], num, forwards, tau,
                                 state["offered"], state["accepted"])


@functools.partial(jax.jit, static_argnames=("target", "drafter", "max_new_tokens",
                                             "max_len", "eos_id", "pad_id"))
def _decode(target_params, drafter_params, tokens, lengths, rng, *, target, drafter, sampler,
            max_new_tokens, max_len, eos_id, pad_id):
    batch = tokens.shape[0]
    rows = jnp.arange(batch)[:, None]
    logits, hidden, cache = target.prefill(target_params, tokens, lengths, max_len,
                                           logits_at=(lengths - 1)[:, None])
    first = sampler.sample(jax.random.fold_in(rng, 0), logits[:, 0])
    needs_hidden = getattr(drafter, "needs_hidden", False)
    drafter_state = drafter.init(drafter_params, tokens, lengths, max_len,
                                 **({"target_hidden": hidden} if needs_hidden else {}))
    width = drafter.max_depth + 1  # most tokens one step can emit
    ranks = (drafter.max_depth, drafter.num_nodes - 1)  # [depth, rank] acceptance counts

    def cond(s):
        return ~jnp.all(s["done"]) & (s["bad_step"] == 0)

    def body(s):
        step, cache, done, num = s["step"], s["cache"], s["done"], s["num"]
        draft_rng, verify_rng = jax.random.split(jax.random.fold_in(rng, step))
        draft, drafter_state = drafter.propose(drafter_params, s["drafter"], s["last"], draft_rng)
        _check_shapes(drafter, draft, batch)
        # A bad tree would not fail on device, only mask and commit the wrong nodes: stop there.
        bad_step = jnp.where(jnp.all(valid_trees(draft.parents, drafter.max_depth)), 0, step)
        logits, hidden, pending = target.extend(target_params, cache, draft.tokens, draft.parents)
        if sampler.greedy:
            verdict = verify_greedy(draft.tokens, draft.parents, logits, drafter.max_depth)
        else:
            verdict = verify_stochastic(verify_rng, draft.tokens, draft.parents,
                                        sampler.logprobs(logits), draft.logprobs, drafter.rule,
                                        drafter.max_depth)
        new = verdict.emitted(draft.tokens)
        j = jnp.arange(width)[None, :]
        valid = j < verdict.n_accepted[:, None]
        eos_at = jnp.min(jnp.where(valid & (new == eos_id), j, width), axis=1)
        count = jnp.minimum(jnp.minimum(verdict.n_accepted, eos_at + 1), max_new_tokens - num)
        count = jnp.where(done, 0, count)
        slots = jnp.where(j < count[:, None], num[:, None] + j, s["out"].shape[1])
        offered, accepted = _count_acceptance(draft.parents, verdict, ~done, ranks)
        cache = target.commit(cache, pending, verdict.path, jnp.where(done, 0, verdict.n_accepted))
        drafter_state = drafter.update(drafter_params, drafter_state, draft, verdict, logits,
                                       **({"target_hidden": hidden} if needs_hidden else {}))
        num_after = num + count
        return dict(step=step + 1, cache=cache, drafter=drafter_state, last=verdict.bonus,
                    out=s["out"].at[rows, slots].set(new, mode="drop"),
                    done=done | (eos_at < count) | (num_after >= max_new_tokens), num=num_after,
                    forwards=s["forwards"] + (~done).astype(jnp.int32), bad_step=bad_step,
                    offered=s["offered"] + offered, accepted=s["accepted"] + accepted)

    state = dict(step=jnp.int32(1), cache=cache, drafter=drafter_state, last=first,
                 out=jnp.full((batch, max_new_tokens + width), pad_id, jnp.int32).at[:, 0].set(
                     first),
                 done=(first == eos_id) | (max_new_tokens == 1), num=jnp.ones((batch,), jnp.int32),
                 forwards=jnp.zeros((batch,), jnp.int32), bad_step=jnp.int32(0),
                 offered=jnp.zeros(ranks, jnp.int32), accepted=jnp.zeros(ranks, jnp.int32))
    state = jax.lax.while_loop(cond, body, state)
    return {k: state[k] for k in ("out", "num", "forwards", "bad_step", "offered", "accepted")}


def _count_acceptance(parents, verdict, active, shape):
    """int32[D, R] (offered, accepted) for one step: for every active row and accepted node at
    depth d < D, which candidate ranks r it had, and which one (if any) was accepted next."""
    b, t = parents.shape
    depth_cap, max_rank = shape
    node = jnp.arange(t)
    earlier_sibling = (parents[:, None, :] == parents[:, :, None]) & (node[None, :] < node[:, None])
    rank = earlier_sibling.sum(-1)  # [B, T]: index among its parent's children
    rows = jnp.arange(b)[:, None]
    # has_rank[b, v, r]: node v has a child of rank r (the root's parent -1 writes nowhere).
    has_rank = jnp.zeros((b, t + 1, max_rank), bool).at[rows, jnp.where(parents < 0, t, parents),
                                                         jnp.minimum(rank, max_rank - 1)].set(
        node > 0)[:, :t]
    d = jnp.arange(depth_cap)
    path = verdict.path[:, :depth_cap]  # [B, D]: the accepted node at depth d (if d < n)
    at = active[:, None] & (d[None, :] < verdict.n_accepted[:, None])  # [B, D]
    offered = (at[..., None] & has_rank[rows, path]).sum(0)
    nxt = verdict.path[:, 1:depth_cap + 1]
    hit = active[:, None] & (d[None, :] + 1 < verdict.n_accepted[:, None])
    accepted = (hit[..., None] & (rank[rows, nxt][..., None] == jnp.arange(max_rank))).sum(0)
    return offered.astype(jnp.int32), accepted.astype(jnp.int32)


def _check_shapes(drafter, draft, batch: int) -> None:
    """At trace time, before any work: the draft has the shape the drafter declares."""
    want = (batch, drafter.num_nodes)
    for name in ("tokens", "parents"):
        got = getattr(draft, name).shape
        if got != want:
            raise ValueError(f"{type(drafter).__name__} drafted {name} of shape {got}; its "
                             f"num_nodes={drafter.num_nodes} at batch {batch} needs {want}")
