"""Drafters: cheap proposals of a token tree under the last emitted token, for speculative decoding.

Every drafter implements the same small protocol, so the engine (`zoo.decode.speculative`) knows
none of their internals:

    state = drafter.init(params, prompt_tokens, prompt_lengths, max_len)
    draft, state = drafter.propose(params, state, last, rng)     # a Draft of `num_nodes` nodes
    state = drafter.update(params, state, draft, verdict, target_logits)  # after verification

A Draft's node 0 is the last emitted token (the root, accepted by construction); the other nodes
are proposals. `update` sees the accepted path and the target's logits at every node, so a drafter
can keep its own state (a KV cache, a token history, recycled candidates) in step with the
target. `rule` says how siblings were drafted, which decides the lossless stochastic acceptance
rule (shared ALGORITHMS.md §3). Every drafter is a hashable frozen dataclass (a static jit
argument) with `num_nodes`, `max_depth` and `rule`.

Here: prompt lookup and token recycling (train-free), and a small draft LM run as a chain, a
static tree or an EAGLE-2 dynamic tree. Drafters on the target's hidden states (Medusa, Hydra)
live in `zoo.decode.head_drafters`.
"""

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from zoo.decode.sampling import Sampler
from zoo.decode.trees import PRESETS, StaticTree, expand_candidates, select_dynamic_tree


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
    speed on completions that copy identifiers or lines. A match close to the end continues
    periodically (after "ab ab a" comes "b ab ab"), so a repeating run drafts a full chain."""

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
        # Past the end of the sequence the copy continues with the tokens it just proposed:
        # a match ending `period` tokens before the end repeats with that period.
        period = jnp.maximum(n - 1 - best, 1)[:, None]
        idx = jnp.clip(best[:, None] + 1 + jnp.arange(self.num_draft) % period, 0, size - 1)
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


class StaticTreeDrafter:
    """Drafters filling a fixed tree template (`StaticTree`): node i is candidate `ranks[i]` of
    its parent."""

    tree: StaticTree
    rule = "deterministic"  # candidates are fixed top-k picks: point masses

    def __post_init__(self):
        if self.tree.max_depth < 1:
            raise ValueError("the tree has no drafted nodes")

    @property
    def num_nodes(self) -> int:
        return self.tree.num_nodes

    @property
    def max_depth(self) -> int:
        return self.tree.max_depth

    def _fill(self, root: jnp.ndarray, candidates) -> Draft:
        """The template's Draft under `root` int32[B], filled depth by depth.

        `candidates(tokens, k)` gives int32[B, n, k], the k best next tokens (best first) after
        each of the n nodes filled so far. Canonical node order is by depth, so those are
        exactly the nodes shallower than the depth being filled, and each depth is one call.
        """
        parents, ranks, depth = self.tree.parents, self.tree.ranks, self.tree.depth
        tokens = root[:, None].astype(jnp.int32)
        for d, k in enumerate(self.tree.topk_per_depth, start=1):
            nodes = np.flatnonzero(depth == d)
            picked = candidates(tokens, k)[:, parents[nodes], ranks[nodes]]
            tokens = jnp.concatenate([tokens, picked.astype(jnp.int32)], axis=1)
        return Draft(tokens, jnp.broadcast_to(jnp.asarray(parents), tokens.shape))


@dataclasses.dataclass(frozen=True)
class TokenRecycling(StaticTreeDrafter):
    """Token Recycling (Luo et al. 2024), train-free: reuse the candidates the target already
    computed. The state is an adjacency matrix int32[B, V, k]: for each token, the k best next
    tokens the target's logits last gave after it. `update` writes that row for every node of
    the verified tree (rejected nodes too: their logits are just as real), and `propose` reads
    the tree template breadth-first: the rank-r child of a node with token x is `adj[x, r]`.

    Initial rows: rank 0 is the token that followed the latest occurrence of the token in the
    prompt (a bigram lookup, free and useful on repetitive text); everything else is token 0.
    Unknown rows just give poor drafts; verification stays exact.
    """

    vocab_size: int
    tree: StaticTree = PRESETS["medusa_small"]

    def __post_init__(self):
        super().__post_init__()
        if self.vocab_size < self.k:
            raise ValueError(f"vocab_size {self.vocab_size} is smaller than the {self.k} "
                             "candidates per token the tree needs")

    @property
    def k(self) -> int:
        """Candidates kept per token: as many as the widest fan-out of the template."""
        return max(self.tree.topk_per_depth)

    def _latest(self, tokens: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
        """int32[B, V]: per token, the highest index j with tokens[:, j] == token and valid, or
        -1. Lets the scatters below write each row once, so the latest occurrence wins
        deterministically (a scatter with duplicate indices has no defined winner)."""
        b, n = tokens.shape
        index = jnp.where(valid, jnp.arange(n, dtype=jnp.int32), -1)
        return jnp.full((b, self.vocab_size), -1, jnp.int32).at[
            jnp.arange(b)[:, None], tokens].max(index)

    def init(self, params, tokens, lengths, max_len):
        b = tokens.shape[0]
        rows = jnp.arange(b)[:, None]
        j = jnp.arange(tokens.shape[1] - 1)[None, :]
        latest = self._latest(tokens[:, :-1], j < lengths[:, None] - 1)
        follower = jnp.where(latest >= 0, tokens[rows, latest + 1], 0)
        return jnp.zeros((b, self.vocab_size, self.k), jnp.int32).at[:, :, 0].set(follower)

    def propose(self, params, adj, last, rng):
        rows = jnp.arange(last.shape[0])[:, None]
        return self._fill(last, lambda tokens, k: adj[rows, tokens, :k]), adj

    def update(self, params, adj, draft, verdict, target_logits):
        rows = jnp.arange(draft.tokens.shape[0])[:, None]
        node = jnp.arange(draft.tokens.shape[1])
        latest = self._latest(draft.tokens, jnp.ones(draft.tokens.shape, bool))
        # An earlier node with the same token as a later one writes nowhere (index V: dropped).
        dst = jnp.where(latest[rows, draft.tokens] == node, draft.tokens, self.vocab_size)
        top = jax.lax.top_k(target_logits, self.k)[1].astype(jnp.int32)
        return adj.at[rows, dst].set(top, mode="drop")


class _DraftModel:
    """A small independent draft LM (same tokenizer) known only through the decoding protocol.

    Its state is its KV cache, which always holds exactly the target's committed tokens (so the
    root, the last emitted token, sits at the same position in both). Drafting extends trees of
    draft tokens on top of it and never commits them, so there is nothing to roll back; `update`
    runs one extend over the step's committed tokens (root + accepted drafts, padded to a chain
    of max_depth + 1) and commits exactly `n_accepted` of them. That needs nothing but
    extend/commit, so it works for an SSM draft model as well as an attention one.
    """

    model: Any  # a DecodingModel

    def init(self, params, tokens, lengths, max_len):
        return self.model.prefill(params, tokens, lengths, max_len)[2]

    def _logits(self, params, cache, tokens, parents) -> jnp.ndarray:
        """Draft logits after each node of a tree extending the committed cache (not committed)."""
        parents = jnp.broadcast_to(jnp.asarray(parents, jnp.int32), tokens.shape)
        return self.model.extend(params, cache, tokens, parents)[0]

    def update(self, params, cache, draft, verdict, target_logits):
        committed, n = _committed_tokens(draft, verdict)
        chain = _chain(*committed.shape)
        _, _, pending = self.model.extend(params, cache, committed, chain)
        return self.model.commit(cache, pending, chain + 1, n)


@dataclasses.dataclass(frozen=True)
class DraftModelChain(_DraftModel, _ChainDrafter):
    """The draft LM proposing `num_draft` tokens as a chain: greedy (rule "deterministic") when
    `sampler` is greedy, else sampled from its own sampling distribution (rule "iid", one
    candidate per node: standard speculative sampling).

    Draft token d + 1 comes from an extend of the chain so far (root + d drafts) over the
    committed cache: recomputing the chain instead of committing it costs a few more tokens per
    (latency-bound) draft forward, but no commit and no rollback.
    """

    model: Any
    num_draft: int = 4
    sampler: Sampler = Sampler()

    def __post_init__(self):
        if self.num_draft < 1:
            raise ValueError(f"num_draft must be >= 1, got {self.num_draft}")

    @property
    def rule(self) -> str:
        return "deterministic" if self.sampler.greedy else "iid"

    def propose(self, params, cache, last, rng):
        b = last.shape[0]
        tokens, qs = last[:, None].astype(jnp.int32), []
        for d in range(self.num_draft):
            logits = self._logits(params, cache, tokens, _chain(b, d + 1))[:, d]
            token = self.sampler.sample(jax.random.fold_in(rng, d), logits)
            tokens = jnp.concatenate([tokens, token[:, None]], axis=1)
            qs.append(self.sampler.logprobs(logits))
        qs.append(jnp.zeros_like(qs[0]))  # the last node has no drafted children
        return Draft(tokens, _chain(b, self.num_nodes), jnp.stack(qs, 1)), cache


@dataclasses.dataclass(frozen=True)
class DraftModelStaticTree(_DraftModel, StaticTreeDrafter):
    """The draft LM's top-k laid out by a static template: the rank-r child of a node is the
    r-th most likely token of the draft model after it. One draft extend per depth, over the
    template filled so far."""

    model: Any
    tree: StaticTree = PRESETS["medusa_small"]

    def propose(self, params, cache, last, rng):
        def candidates(tokens, k):
            parents = self.tree.parents[: tokens.shape[1]]
            return jax.lax.top_k(self._logits(params, cache, tokens, parents), k)[1]

        return self._fill(last, candidates), cache


@dataclasses.dataclass(frozen=True)
class DraftModelTree(_DraftModel):
    """The draft LM grown into a dynamic tree (EAGLE-2): `depth` rounds of expansion, each
    giving the best `width` nodes of the newest layer (by cumulative draft log-prob) their `k`
    most likely children, then the `budget` best candidates overall (root included) are kept.
    The tree adapts to the draft model's confidence: sure paths grow deep, unsure ones wide.

    Each round is one draft extend over the whole candidate tree so far on top of the committed
    cache (no commit, so nothing to undo). The candidates are top-k picks, so the rule is
    "deterministic".
    """

    model: Any
    depth: int = 4
    k: int = 4
    width: int = 4
    budget: int = 16
    rule = "deterministic"

    def __post_init__(self):
        for name in ("depth", "k", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 2 <= self.budget <= self.num_candidates:
            raise ValueError(f"budget must be between 2 (the root and one draft) and the "
                             f"{self.num_candidates} candidates the expansion grows, got "
                             f"{self.budget}")

    @property
    def num_candidates(self) -> int:
        """Nodes of the candidate tree before selection, root included."""
        total, frontier = 1, 1
        for _ in range(self.depth):
            total += frontier * self.k
            frontier = min(self.width, frontier * self.k)
        return total

    @property
    def num_nodes(self) -> int:
        return self.budget

    @property
    def max_depth(self) -> int:
        return self.depth

    def propose(self, params, cache, last, rng):
        b = last.shape[0]
        parents = jnp.full((b, 1), -1, jnp.int32)
        tokens = last[:, None].astype(jnp.int32)
        logprobs = jnp.zeros((b, 1), jnp.float32)
        frontier, frontier_lp = jnp.zeros((b, 1), jnp.int32), logprobs
        for _ in range(self.depth):
            logits = self._logits(params, cache, tokens, parents)
            logits = jnp.take_along_axis(logits, frontier[:, :, None], axis=1)
            e = expand_candidates(frontier, frontier_lp, jax.nn.log_softmax(logits),
                                  num_nodes=tokens.shape[1], k=self.k, width=self.width)
            parents = jnp.concatenate([parents, e.parents], axis=1)
            tokens = jnp.concatenate([tokens, e.tokens], axis=1)
            logprobs = jnp.concatenate([logprobs, e.logprobs], axis=1)
            frontier, frontier_lp = e.frontier, e.frontier_logprobs
        tree = select_dynamic_tree(parents, tokens, logprobs, self.budget)
        return Draft(tree.tokens, tree.parents), cache
