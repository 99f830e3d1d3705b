"""Verification of a drafted token tree against one target forward (ALGORITHMS.md §2, §3).

A tree has T nodes per row in topological order (`parents[i] < i`, `parents[0] = -1`). Node 0 is
the root: the last emitted token, already accepted but not yet in the KV cache. Nodes 1..T-1 are
drafted tokens; the children of a node are its candidates, tried in increasing node index.
`target_*[b, v]` describes the token after node v along its root path.

Both verifiers make ONE pass over the nodes in index order. That suffices because the walk only
descends: the children of the current node all come after it, and once a child is accepted the
remaining siblings are no longer children of the current node, so they are skipped. The cost is
O(T·V) per row whatever the tree's shape, with no per-depth or per-child loop.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp

RULES = ("iid", "without_replacement", "deterministic")


@flax.struct.dataclass
class Verdict:
    """What one verification step accepts, per row.

    path: int32[B, D+1]; `path[b, :n_accepted[b]]` are the accepted nodes, starting with the
        root 0 (so the engine commits them, root included, to the KV cache); later entries are 0.
    n_accepted: int32[B], >= 1; also the number of tokens the step emits.
    bonus: int32[B], the token emitted after the last accepted node (the next step's root).
    """

    path: jnp.ndarray
    n_accepted: jnp.ndarray
    bonus: jnp.ndarray

    def emitted(self, tokens: jnp.ndarray) -> jnp.ndarray:
        """The step's emitted tokens int32[B, D+1]: `tokens[path[1:n]]`, then the bonus; 0 after."""
        drafted = jnp.take_along_axis(tokens, self.path[:, 1:], axis=1)
        slot = jnp.arange(self.path.shape[1])
        n = self.n_accepted[:, None]
        out = jnp.where(slot < n - 1, jnp.pad(drafted, ((0, 0), (0, 1))), 0)
        return jnp.where(slot == n - 1, self.bonus[:, None], out).astype(jnp.int32)


def _start(batch: int, max_depth: int):
    """Walk state (current node, path length, path) with only the root accepted."""
    return (jnp.zeros((batch,), jnp.int32), jnp.ones((batch,), jnp.int32),
            jnp.zeros((batch, max_depth + 1), jnp.int32))


def _is_candidate(walk, parents, c, max_depth):
    """Node c is tried when it is a child of the current node and the path has room for it.

    Children beyond `max_depth` are treated as absent, which keeps both rules exact: the walk
    simply stops earlier and emits the bonus from the node it reached.
    """
    cur, n, _ = walk
    return (parents[:, c] == cur) & (n <= max_depth)


def _advance(walk, c, accept):
    cur, n, path = walk
    slot = jnp.arange(path.shape[1]) == n[:, None]
    path = jnp.where(accept[:, None] & slot, c, path)
    return jnp.where(accept, c, cur), n + accept.astype(jnp.int32), path


def _depth(tokens, max_depth):
    return tokens.shape[1] - 1 if max_depth is None else max_depth


@functools.partial(jax.jit, static_argnames="max_depth")
def verify_greedy(tokens, parents, target_logits, max_depth: int | None = None) -> Verdict:
    """Greedy verification (§2): accept the child equal to the target's argmax, lowest index first.

    tokens, parents: int32[B, T]; target_logits: [B, T, V]. `max_depth` (static, default T-1)
    caps the accepted depth and sets the path width D+1. The argmax is `jnp.argmax` on the logits
    as given, exactly like `Sampler.sample`, so ties break as in AR greedy decoding.
    """
    batch, t = tokens.shape
    max_depth = _depth(tokens, max_depth)
    best = jnp.argmax(target_logits, -1).astype(jnp.int32)  # [B, T]

    def step(c, walk):
        want = jnp.take_along_axis(best, walk[0][:, None], axis=1)[:, 0]
        accept = _is_candidate(walk, parents, c, max_depth) & (tokens[:, c] == want)
        return _advance(walk, c, accept)

    cur, n, path = jax.lax.fori_loop(1, t, step, _start(batch, max_depth))
    return Verdict(path, n, jnp.take_along_axis(best, cur[:, None], axis=1)[:, 0])


def _normalize(x, fallback):
    """x / sum(x) over the last axis; `fallback` where the sum is 0.

    A residual with zero mass arises only where rejection had probability 0 (p <= q everywhere
    means p == q, so the candidate was accepted with certainty); in float32 it can still be hit
    with probability ~1e-7. The fallback only has to keep the state finite there.
    """
    total = x.sum(-1, keepdims=True)
    return jnp.where(total > 0, x / jnp.where(total > 0, total, 1), fallback)


def _check_rule(rule):
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")


@functools.partial(jax.jit, static_argnames=("rule", "max_depth"))
def verify_stochastic(rng, tokens, parents, target_logprobs, draft_logprobs, rule: str,
                      max_depth: int | None = None) -> Verdict:
    """Lossless multi-candidate speculative sampling (§3): emits exactly AR samples from p.

    target_logprobs: float[B, T, V], log p(.|v) from `Sampler.logprobs` (-inf off the support).
    draft_logprobs: float[B, T, V], log q(.|v), the distribution v's children were drafted
        from; unused (may be None) for rule "deterministic".
    rule (static) must match how the children were drafted (see `sample_children`):
      "iid": i.i.d. from q; accept c w.p. min(1, p(c)/q(c)), else p <- norm(max(p - q, 0)).
      "without_replacement": as "iid", and after a rejection also q <- norm(q with c zeroed).
      "deterministic": fixed candidates (top-k, static trees), i.e. "iid" with q = one_hot(c):
        accept w.p. p(c), else p <- norm(p with c zeroed).
    When every child of the current node is rejected (or it has none), the bonus is sampled from
    the residual p; on acceptance the walk descends with the fresh p(.|c), q(.|c).

    Works in probabilities (float32): the test `u * q(c) < p(c)` needs no division, so q(c) = 0
    or p(c) = 0 cannot produce NaN, and mass below float32's range is negligible anyway.
    """
    _check_rule(rule)
    batch, t = tokens.shape
    max_depth = _depth(tokens, max_depth)
    rows = jnp.arange(batch)
    point = rule == "deterministic"  # candidates are point masses: q is one_hot(candidate)
    u_key, bonus_key = jax.random.split(rng)
    uniforms = jax.random.uniform(u_key, (batch, t))  # one per node: each is tried at most once
    probs = lambda logprobs, v: jnp.exp(logprobs[:, v].astype(jnp.float32))

    def step(c, state):
        walk, p, q = state
        x = tokens[:, c]
        q_try = jax.nn.one_hot(x, p.shape[-1], dtype=p.dtype) if point else q
        tried = _is_candidate(walk, parents, c, max_depth)
        accept = tried & (uniforms[:, c] * q_try[rows, x] < p[rows, x])
        reject = (tried & ~accept)[:, None]
        p = jnp.where(reject, _normalize(jnp.maximum(p - q_try, 0), p), p)
        if rule == "without_replacement":
            q = jnp.where(reject, _normalize(q.at[rows, x].set(0), q), q)
        p = jnp.where(accept[:, None], probs(target_logprobs, c), p)
        if not point:
            q = jnp.where(accept[:, None], probs(draft_logprobs, c), q)
        return _advance(walk, c, accept), p, q

    state = (_start(batch, max_depth), probs(target_logprobs, 0),
             None if point else probs(draft_logprobs, 0))
    (_, n, path), p, _ = jax.lax.fori_loop(1, t, step, state)
    bonus = jax.random.categorical(bonus_key, jnp.log(p)).astype(jnp.int32)
    return Verdict(path, n, bonus)


@functools.partial(jax.jit, static_argnames=("k", "rule"))
def sample_children(rng, draft_logprobs, k: int, rule: str) -> jnp.ndarray:
    """Draft k candidate tokens int32[..., k] from `draft_logprobs` [..., V], as `rule` expects.

    "iid": k independent samples. "without_replacement": k distinct samples in draw order, by
    Gumbel top-k (k must not exceed the support). "deterministic": the k most likely tokens
    (`rng` unused). Verify with the same rule: the rules are only lossless for their own drafts.
    """
    _check_rule(rule)
    if rule == "iid":
        shape = draft_logprobs.shape[:-1] + (k,)
        return jax.random.categorical(rng, draft_logprobs[..., None, :], shape=shape).astype(
            jnp.int32)
    if rule == "without_replacement":
        draft_logprobs = draft_logprobs + jax.random.gumbel(rng, draft_logprobs.shape)
    return jax.lax.top_k(draft_logprobs, k)[1].astype(jnp.int32)
