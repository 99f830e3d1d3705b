import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from zoo.decode.sampling import Sampler
from zoo.decode.verify import RULES, sample_children, verify_greedy, verify_stochastic

# ---------------------------------------------------------------------------------------------
# Greedy (§2)


def _logits_choosing(best, vocab=8):
    """Logits [B, T, V] whose argmax after each node is `best[b][v]`."""
    return jnp.asarray(np.eye(vocab, dtype=np.float32)[np.asarray(best)] * 3 - 1)


def _greedy(tokens, parents, best, **kw):
    tokens = jnp.asarray(tokens, jnp.int32)
    verdict = verify_greedy(tokens, jnp.asarray(parents, jnp.int32), _logits_choosing(best), **kw)
    return (np.asarray(verdict.path), np.asarray(verdict.n_accepted), np.asarray(verdict.bonus),
            np.asarray(verdict.emitted(tokens)))


def test_greedy_chain_stops_at_first_mismatch():
    # root 5 -> 1 -> 2 -> 3 -> 4; the target wants 1, 2, then 7 (not 3): accept nodes 1, 2.
    tokens, parents = [[5, 1, 2, 3, 4]], [[-1, 0, 1, 2, 3]]
    best = [[1, 2, 7, 4, 0]]  # after node 3 the target would agree again: must not matter
    path, n, bonus, emitted = _greedy(tokens, parents, best)
    np.testing.assert_array_equal(path, [[0, 1, 2, 0, 0]])
    assert n.tolist() == [3] and bonus.tolist() == [7]
    np.testing.assert_array_equal(emitted, [[1, 2, 7, 0, 0]])


def test_greedy_star_picks_the_matching_child_and_the_lowest_of_duplicates():
    tokens, parents = [[0, 4, 6, 6, 2]], [[-1, 0, 0, 0, 0]]
    path, n, bonus, _ = _greedy(tokens, parents, [[6, 0, 3, 0, 0]])
    assert path[0, :2].tolist() == [0, 2] and n.tolist() == [2] and bonus.tolist() == [3]


def test_greedy_bushy_tree_batch_rows_accept_different_lengths():
    #        0
    #      /   \
    #     1     2
    #    / \     \
    #   3   4     5
    #   |
    #   6
    parents = [[-1, 0, 0, 1, 1, 2, 3]] * 4
    tokens = [[0, 1, 2, 3, 4, 5, 6]] * 4
    best = [
        [7, 0, 0, 0, 0, 0, 0],  # no child matches: root only, bonus 7
        [2, 0, 5, 0, 0, 1, 0],  # 0 -> 2 -> 5 (a leaf): bonus after 5
        [1, 4, 0, 0, 3, 0, 0],  # 0 -> 1 -> 4 (not 3): bonus after 4
        [1, 3, 0, 6, 0, 0, 2],  # 0 -> 1 -> 3 -> 6: the full depth
    ]
    path, n, bonus, emitted = _greedy(tokens, parents, best)
    assert n.tolist() == [1, 3, 3, 4]
    np.testing.assert_array_equal(path[:, :4], [[0, 0, 0, 0], [0, 2, 5, 0], [0, 1, 4, 0],
                                                [0, 1, 3, 6]])
    assert bonus.tolist() == [7, 1, 3, 2]
    np.testing.assert_array_equal(emitted[:, :4], [[7, 0, 0, 0], [2, 5, 1, 0], [1, 4, 3, 0],
                                                   [1, 3, 6, 2]])
    assert (path[:, 4:] == 0).all() and (emitted[:, 4:] == 0).all()


def test_greedy_root_only_tree():
    path, n, bonus, emitted = _greedy([[3], [1]], [[-1], [-1]], [[5], [2]])
    assert path.shape == (2, 1) and (path == 0).all()
    assert n.tolist() == [1, 1] and bonus.tolist() == [5, 2] and emitted[:, 0].tolist() == [5, 2]


def test_greedy_max_depth_caps_the_path():
    path, n, bonus, _ = _greedy([[5, 1, 2, 3]], [[-1, 0, 1, 2]], [[1, 2, 3, 4]], max_depth=2)
    assert path.tolist() == [[0, 1, 2]] and n.tolist() == [3] and bonus.tolist() == [3]


def _random_trees(rng, batch, size, follow, vocab):
    """Random topological trees; each token is `follow[parent token]` w.p. 0.7, else random."""
    parents = np.zeros((batch, size), np.int32)
    tokens = np.zeros((batch, size), np.int32)
    parents[:, 0] = -1
    tokens[:, 0] = rng.integers(0, vocab, batch)
    for i in range(1, size):
        parents[:, i] = rng.integers(0, i, batch)
        parent_tok = tokens[np.arange(batch), parents[:, i]]
        tokens[:, i] = np.where(rng.random(batch) < 0.7, follow[parent_tok],
                                rng.integers(0, vocab, batch))
    return tokens, parents


def _reference_walk(tokens, parents, follow):
    """§2 literally: descend to the lowest-index child equal to the argmax while there is one."""
    path = [0]
    while True:
        want = follow[tokens[path[-1]]]
        kids = [c for c in range(len(tokens)) if parents[c] == path[-1] and tokens[c] == want]
        if not kids:
            return path
        path.append(kids[0])


def test_greedy_emits_exactly_what_ar_greedy_emits():
    vocab, batch, size = 8, 256, 12
    rng = np.random.default_rng(0)
    # Small integer logits: many exact ties, which must break the same way as AR greedy.
    table = jnp.asarray(rng.integers(0, 4, (vocab, vocab)), jnp.float32)
    follow = np.asarray(Sampler().sample(None, table))  # AR greedy's next token after each token
    tokens, parents = _random_trees(rng, batch, size, follow, vocab)
    verdict = verify_greedy(jnp.asarray(tokens), jnp.asarray(parents), table[tokens])
    n = np.asarray(verdict.n_accepted)
    emitted = np.asarray(verdict.emitted(jnp.asarray(tokens)))
    assert n.max() >= 4  # the trees do get deep acceptances
    for b in range(batch):
        ar, tok = [], tokens[b, 0]
        for _ in range(n[b]):
            tok = follow[tok]
            ar.append(tok)
        assert emitted[b, :n[b]].tolist() == ar
        assert verdict.path[b, :n[b]].tolist() == _reference_walk(tokens[b], parents[b], follow)


@pytest.mark.parametrize("rule", RULES)
def test_stochastic_with_a_greedy_target_is_greedy_verification(rule):
    """A one-hot p (Sampler at temperature 0) makes every rule accept exactly the argmax child."""
    vocab, batch, size = 8, 128, 10
    rng = np.random.default_rng(1)
    table = jnp.asarray(rng.integers(0, 4, (vocab, vocab)), jnp.float32)
    follow = np.asarray(Sampler().sample(None, table))
    tokens, parents = _random_trees(rng, batch, size, follow, vocab)
    tokens, parents = jnp.asarray(tokens), jnp.asarray(parents)
    draft = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(vocab, vocab)), jnp.float32))
    # max_depth=3 truncates some rows' walks: the cap must act the same in both verifiers.
    want = verify_greedy(tokens, parents, table[tokens], max_depth=3)
    got = verify_stochastic(jax.random.key(0), tokens, parents, Sampler().logprobs(table)[tokens],
                            draft[tokens], rule, max_depth=3)
    assert (np.asarray(want.n_accepted) == 4).any()
    for field in ("path", "n_accepted", "bonus"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))


# ---------------------------------------------------------------------------------------------
# Stochastic losslessness (§3): emitted tokens must be distributed exactly as AR sampling.
#
# Target: a Markov chain over V = 5 tokens, p(.|t) = Sampler(T=1, top-k 4, top-p 0.9) of a fixed
# table, so every row has 1-2 zero-probability tokens (-inf logprobs). Draft: a different chain q
# with full support (TV(p(.|t), q(.|t)) between 0.3 and 0.57). Trees: root token ROOT, K = 3
# children per node, depth 2 (T = 13), drafted per node from q with `sample_children`.

V, K, ROOT, N = 5, 3, 0, 40_000
_r = np.random.default_rng(1)
LOG_P = Sampler(temperature=1.0, top_k=4, top_p=0.9).logprobs(
    jnp.asarray(_r.normal(size=(V, V)) * 1.5, jnp.float32))
LOG_Q = jax.nn.log_softmax(jnp.asarray(_r.normal(size=(V, V)), jnp.float32))
P = np.exp(np.asarray(LOG_P, np.float64))
P /= P.sum(-1, keepdims=True)
TREE_PARENTS = np.array([-1] + [0] * K + [1 + i for i in range(K) for _ in range(K)], np.int32)
FIRST_TWO = (P[ROOT][:, None] * P).ravel()  # AR probability of emitting (a, b) first
P_VALUE_OK, P_VALUE_REJECT = 1e-3, 1e-6


def _draft_tree(rng, rule):
    """Depth-2 trees [N, 1 + K + K*K], every node's K children drafted from q at that node."""
    k1, k2 = jax.random.split(rng)
    level1 = sample_children(k1, jnp.broadcast_to(LOG_Q[ROOT], (N, V)), K, rule)
    level2 = sample_children(k2, LOG_Q[level1], K, rule).reshape(N, K * K)
    return jnp.concatenate([jnp.full((N, 1), ROOT, jnp.int32), level1, level2], axis=1)


@functools.partial(jax.jit, static_argnames=("draft_rule", "verify_rule"))
def _first_two_emitted(rng, draft_rule, verify_rule):
    """Draft N trees, verify them in one batched call; the first two emitted tokens per row.

    Rows that emit a single token (the bonus) get their second token from p(.|bonus): exactly
    what the next decoding step would do, so the pair is AR-distributed iff verification is.
    """
    k_draft, k_verify, k_next = jax.random.split(rng, 3)
    tokens = _draft_tree(k_draft, draft_rule)
    parents = jnp.broadcast_to(jnp.asarray(TREE_PARENTS), tokens.shape)
    verdict = verify_stochastic(k_verify, tokens, parents, LOG_P[tokens], LOG_Q[tokens],
                                verify_rule)
    emitted = verdict.emitted(tokens)
    next_ar = jax.random.categorical(k_next, LOG_P[emitted[:, 0]])
    second = jnp.where(verdict.n_accepted >= 2, emitted[:, 1], next_ar)
    return emitted[:, 0], second, verdict


def _chi2_p_value(samples, probs):
    """Pearson chi-square p-value of samples against `probs`; 0 if any sample is impossible."""
    counts = np.bincount(np.asarray(samples), minlength=len(probs))
    support = probs > 0
    if counts[~support].any():
        return 0.0
    return stats.chisquare(counts[support], probs[support] * counts.sum()).pvalue


def _p_values(first, second):
    return _chi2_p_value(first, P[ROOT]), _chi2_p_value(np.asarray(first) * V + second, FIRST_TWO)


def _detectable_tv(n, df, alpha=P_VALUE_OK, power=0.9):
    """Smallest TV distance the chi-square test detects with probability >= `power` at level alpha.

    Under a deviation d from p0 the statistic is ~ noncentral chi2(df, lam) with
    lam = n * sum(d^2 / p0), and Cauchy-Schwarz gives sum(d^2 / p0) >= (sum |d|)^2 = 4 TV^2
    (equality for the hardest direction, |d| proportional to p0). So TV = sqrt(lam / 4n).
    """
    critical = stats.chi2.ppf(1 - alpha, df)
    lo, hi = 0.0, 1e4
    for _ in range(60):
        lam = (lo + hi) / 2
        lo, hi = (lo, lam) if stats.ncx2.sf(critical, df, lam) >= power else (lam, hi)
    return np.sqrt(hi / (4 * n))


def test_power_of_the_distribution_tests():
    # At N = 40,000, level 1e-3 and power 0.9, the tests detect any deviation of total variation
    # >= 0.0127 in the first token (df = 3) and >= 0.0156 in the first two tokens (df = 14).
    # (Any emission of a zero-probability token or pair fails outright.)
    assert (P[ROOT] > 0).sum() - 1 == 3 and (FIRST_TWO > 0).sum() - 1 == 14
    assert _detectable_tv(N, 3) == pytest.approx(0.0127, abs=2e-4)
    assert _detectable_tv(N, 14) == pytest.approx(0.0156, abs=2e-4)


@pytest.mark.parametrize("rule", RULES)
def test_stochastic_verification_is_lossless(rule):
    first, second, verdict = _first_two_emitted(jax.random.key(0), rule, rule)
    p_first, p_pair = _p_values(first, second)
    assert p_first > P_VALUE_OK and p_pair > P_VALUE_OK, (p_first, p_pair)
    # The step really speculates: some rows accept 1 and 2 drafted tokens.
    n = np.asarray(verdict.n_accepted)
    assert set(np.unique(n).tolist()) == {1, 2, 3}
    path = np.asarray(verdict.path)
    tree = np.broadcast_to(TREE_PARENTS, (N, len(TREE_PARENTS)))
    deep = n == 3  # accepted nodes form a root path
    assert (tree[deep, path[deep, 2]] == path[deep, 1]).all()


@pytest.mark.parametrize("draft_rule, verify_rule", [
    ("deterministic", "iid"),  # top-k candidates judged by the ratio test min(1, p/q)
    ("without_replacement", "iid"),  # distinct samples judged as if i.i.d. (q never updated)
])
def test_mismatched_rules_are_caught(draft_rule, verify_rule):
    p_first, p_pair = _p_values(*_first_two_emitted(jax.random.key(0), draft_rule, verify_rule)[:2])
    assert min(p_first, p_pair) < P_VALUE_REJECT, (p_first, p_pair)


@functools.partial(jax.jit, static_argnames="renormalize")
def _star_verify_iid(rng, renormalize):
    """A test-only SpecInfer verifier for one level of K i.i.d. candidates from q(.|ROOT).

    With renormalize=False it keeps the residual max(p - q, 0) unnormalised, so the later
    candidates are accepted too rarely; sampling the bonus from it still normalises implicitly.
    """
    k_draft, k_u, k_bonus = jax.random.split(rng, 3)
    children = sample_children(k_draft, jnp.broadcast_to(LOG_Q[ROOT], (N, V)), K, "iid")
    u = jax.random.uniform(k_u, (N, K))
    p, q = jnp.exp(LOG_P[ROOT]), jnp.exp(LOG_Q[ROOT])
    p = jnp.broadcast_to(p, (N, V))
    done, out = jnp.zeros(N, bool), jnp.zeros(N, jnp.int32)
    for j in range(K):
        x = children[:, j]
        accept = ~done & (u[:, j] * q[x] < jnp.take_along_axis(p, x[:, None], 1)[:, 0])
        out, done = jnp.where(accept, x, out), done | accept
        p = jnp.maximum(p - q, 0)
        if renormalize:
            p = p / p.sum(-1, keepdims=True)
    return jnp.where(done, out, jax.random.categorical(k_bonus, jnp.log(p)))


@pytest.mark.parametrize("renormalize", [True, False])
def test_unnormalised_residual_is_caught(renormalize):
    p_value = _chi2_p_value(_star_verify_iid(jax.random.key(0), renormalize), P[ROOT])
    if renormalize:  # control: the same test-side verifier, correct, passes
        assert p_value > P_VALUE_OK
    else:
        assert p_value < P_VALUE_REJECT


# ---------------------------------------------------------------------------------------------
# Drafting helper, rule validation, compilation


def test_sample_children():
    logprobs = jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3, 0.0]] * 2000))
    top = sample_children(None, logprobs, 3, "deterministic")
    assert (np.asarray(top) == [1, 3, 2]).all()
    distinct = np.asarray(sample_children(jax.random.key(0), logprobs, 4, "without_replacement"))
    assert (np.sort(distinct, axis=1) == [0, 1, 2, 3]).all()  # each row: the whole support
    # The first draw without replacement, and every i.i.d. draw, is distributed as q.
    probs = np.array([0.1, 0.4, 0.2, 0.3, 0.0])
    assert _chi2_p_value(distinct[:, 0], probs) > P_VALUE_OK
    iid = np.asarray(sample_children(jax.random.key(1), logprobs, 3, "iid"))
    assert iid.shape == (2000, 3) and _chi2_p_value(iid.ravel(), probs) > P_VALUE_OK
    assert (iid[:, 0] == iid[:, 1]).mean() > 0.2  # repeats happen: not without replacement


def test_unknown_rule_is_rejected():
    tokens = jnp.zeros((1, 2), jnp.int32)
    parents = jnp.array([[-1, 0]], jnp.int32)
    logprobs = jnp.zeros((1, 2, 4))
    with pytest.raises(ValueError, match="iid, without_replacement, deterministic"):
        verify_stochastic(jax.random.key(0), tokens, parents, logprobs, logprobs, "topk")
    with pytest.raises(ValueError, match="unknown rule 'greedy'"):
        sample_children(jax.random.key(0), logprobs[:, 0], 2, "greedy")


def test_one_compile_per_shape():
    parents = jnp.array([[-1, 0, 0, 1, 1, 3, 5]] * 3, jnp.int32)
    before = verify_stochastic._cache_size(), verify_greedy._cache_size()
    for seed in range(3):
        r = np.random.default_rng(seed)
        tokens = jnp.asarray(r.integers(0, 7, (3, 7)), jnp.int32)
        logits = jnp.asarray(r.normal(size=(3, 7, 7)), jnp.float32)
        verdict = verify_stochastic(jax.random.key(seed), tokens, parents,
                                    jax.nn.log_softmax(logits), jax.nn.log_softmax(-logits), "iid")
        assert verify_greedy(tokens, parents, logits).path.shape == verdict.path.shape == (3, 7)
    after = verify_stochastic._cache_size(), verify_greedy._cache_size()
    assert after == (before[0] + 1, before[1] + 1)
