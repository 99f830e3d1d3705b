"""Drafters: speculative decoding with each is exactly AR greedy decoding, and each proposes what
it should on hand-checked cases."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.data.tokenizer import PAD_ID
from zoo.decode import ar, speculative
from zoo.decode.drafters import (Draft, DraftModelChain, DraftModelStaticTree, DraftModelTree,
                                 PromptLookup, TokenRecycling)
from zoo.decode.trees import PRESETS, static_tree
from zoo.decode.verify import Verdict
from zoo.models import build_model

from conftest import tiny_model_config

MAX_NEW = 23  # the length limit falls inside a tree
EOS_AFTER = 7  # row 0 emits EOS as its 7th token


@pytest.fixture(scope="module")
def draft_pair():
    """A different (smaller) random draft model with the same tokenizer."""
    draft = build_model(tiny_model_config(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                          mlp_dim=64))
    return draft, draft.init(jax.random.key(1))


@pytest.fixture(scope="module")
def noisy_target(tiny_model_and_params):
    """The target with slightly perturbed weights as a draft model: it agrees with the target
    often but not always, so steps accept paths of every length (a random small draft model is
    rejected at once nearly always, the target itself is accepted nearly always)."""
    model, params = tiny_model_and_params
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    noisy = [x + 0.1 * jnp.std(x) * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return model, jax.tree.unflatten(treedef, noisy)


def _prompts(batch):
    """Repetitive prompts (something to recycle); row 0 is the same at every batch size."""
    rng = np.random.default_rng(batch)
    rows = [list(np.tile(rng.integers(0, 256, rng.integers(2, 5)), rng.integers(1, 4)))
            for _ in range(batch - 1)]
    return [[17, 4, 99, 17, 4, 99, 17]] + rows


@pytest.fixture(scope="module")
def reference(tiny_model_and_params):
    """batch -> (prompts, eos, AR greedy Generation), computed once per batch size.

    EOS is row 0's EOS_AFTER-th free-running token, so row 0 stops inside a tree, while the
    other rows run into the length limit (checked below, so the test cannot go vacuous).
    """
    model, params = tiny_model_and_params
    free = ar.generate(model, params, _prompts(1), max_new_tokens=MAX_NEW, eos_id=-1,
                       pad_id=PAD_ID)
    eos = int(free.tokens[0, EOS_AFTER - 1])
    memo = {}

    def get(batch):
        if batch not in memo:
            prompts = _prompts(batch)
            want = ar.generate(model, params, prompts, max_new_tokens=MAX_NEW, eos_id=eos,
                               pad_id=PAD_ID)
            assert want.num_tokens[0] <= EOS_AFTER
            assert batch == 1 or (want.num_tokens == MAX_NEW).any()
            memo[batch] = prompts, eos, want
        return memo[batch]

    return get


def _drafter(name, model, params, noisy_target):
    draft, draft_params = noisy_target
    if name == "chain":
        return DraftModelChain(draft, num_draft=3), draft_params
    if name == "tree":  # the target drafting for itself: most of each tree is accepted
        return DraftModelTree(model, depth=3, k=3, width=3, budget=10), params
    if name == "static_tree":
        return DraftModelStaticTree(draft, PRESETS["medusa_small"]), draft_params
    return TokenRecycling(model.vocab_size, PRESETS["medusa_small"]), None


# Every drafter at 3 (ragged) and 8 rows; one row for a chain and a static tree.
@pytest.mark.parametrize("name,batch", [(name, batch) for name in ("chain", "tree", "static_tree",
                                                                   "recycling")
                                        for batch in (1, 3, 8)
                                        if batch > 1 or name in ("chain", "recycling")])
def test_greedy_speculative_equals_ar(tiny_model_and_params, noisy_target, reference, name,
                                     batch):
    model, params = tiny_model_and_params
    drafter, drafter_params = _drafter(name, model, params, noisy_target)
    prompts, eos, want = reference(batch)
    got = speculative.generate(model, params, prompts, drafter=drafter,
                               drafter_params=drafter_params, max_new_tokens=MAX_NEW,
                               eos_id=eos, pad_id=PAD_ID)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.num_tokens, want.num_tokens)
    if name == "tree":
        assert got.tau > 2.0


# --- What the drafters propose ------------------------------------------------------------


def test_token_recycling_reads_the_adjacency_it_wrote():
    tree = static_tree([(0,), (1,), (0, 0)])  # nodes: root, best, 2nd best, best after best
    drafter = TokenRecycling(vocab_size=8, tree=tree)
    assert drafter.k == 2 and drafter.num_nodes == 4 and drafter.max_depth == 2
    init, propose, update = (jax.jit(drafter.init, static_argnums=3), jax.jit(drafter.propose),
                             jax.jit(drafter.update))
    prompts = jnp.array([[3, 5, 3, 6, 0], [1, 2, 0, 0, 0]])
    adj = init(None, prompts, jnp.array([4, 2]), 16)
    # Rank 0: the token after the latest occurrence in the prompt (3 -> 6, not 5); else 0.
    np.testing.assert_array_equal(adj[0, :, 0], [0, 0, 0, 6, 0, 3, 0, 0])
    np.testing.assert_array_equal(adj[1, :, 0], [0, 2, 0, 0, 0, 0, 0, 0])
    assert not adj[:, :, 1].any()
    draft, adj = propose(None, adj, jnp.array([3, 1]), None)
    np.testing.assert_array_equal(draft.tokens, [[3, 6, 0, 0], [1, 2, 0, 0]])
    np.testing.assert_array_equal(draft.parents, [[-1, 0, 0, 1]] * 2)

    # Verified tree (row 0): 3 -> {2 -> 0, 0}; the target's top-2 after each node below.
    draft = Draft(jnp.array([[3, 2, 0, 0], [1, 2, 4, 5]]), jnp.array([[-1, 0, 0, 1]] * 2))
    top2 = np.array([[[2, 7], [4, 1], [5, 3], [1, 6]], [[4, 4], [5, 6], [7, 7], [0, 3]]])
    logits = np.zeros((2, 4, 8), np.float32)
    for b, t in np.ndindex(2, 4):
        logits[b, t, top2[b, t, 0]] = 2.0
        logits[b, t, top2[b, t, 1]] += 1.0
    verdict = Verdict(jnp.zeros((2, 3), jnp.int32), jnp.ones((2,), jnp.int32),
                      jnp.zeros((2,), jnp.int32))
    adj = update(None, adj, draft, verdict, jnp.asarray(logits))
    np.testing.assert_array_equal(adj[0, 3], [2, 7])
    np.testing.assert_array_equal(adj[0, 2], [4, 1])
    np.testing.assert_array_equal(adj[0, 0], [1, 6])  # the later node with token 0 wins
    np.testing.assert_array_equal(adj[0, 5], [3, 0])  # untouched
    np.testing.assert_array_equal(adj[1, 4], [7, 0])  # row 1's own logits (a tie: lower id)
    draft, _ = propose(None, adj, jnp.array([3, 0]), None)
    np.testing.assert_array_equal(draft.tokens[0], [3, 2, 7, 4])  # 3 -> 2, 7; 2 -> 4
    np.testing.assert_array_equal(draft.tokens[1], [0, 0, 0, 0])  # row 1 never saw token 0


def _path(parents, node):
    """Nodes from the root to `node`, root first."""
    path = []
    while node >= 0:
        path.insert(0, int(node))
        node = parents[node]
    return path


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, tokens):
    return model.forward(params, tokens)[0]


def _rank_under_parent(model, params, contexts, draft):
    """rank[b, i]: where node i's token sits in the draft model's ranking (0 = most likely)
    after row b's committed tokens `contexts[b]` and the root-to-parent path of node i, by a
    plain full forward: the oracle for the cached extends the drafters run. Root: -1."""
    tokens, parents = np.asarray(draft.tokens), np.asarray(draft.parents)
    nodes = [(b, t) for b, t in np.ndindex(tokens.shape) if t > 0]
    seqs = [list(contexts[b]) + list(tokens[b, _path(parents[b], parents[b, t])])
            for b, t in nodes]
    padded = np.zeros((64, 16), np.int32)  # one shape for every call: one compile
    for row, seq in enumerate(seqs):
        padded[row, : len(seq)] = seq  # padding after the sequence: causal, so harmless
    logits = np.asarray(_forward(model, params, jnp.asarray(padded)))
    rank = np.full(tokens.shape, -1)
    for (b, t), seq, row in zip(nodes, seqs, logits):
        after = row[len(seq) - 1]
        rank[b, t] = int((after > after[tokens[b, t]]).sum())
    return rank


@pytest.mark.parametrize("name", ["chain", "static_tree", "dynamic_tree"])
def test_draft_model_proposes_its_top_k_before_and_after_an_update(draft_pair, name):
    """Each node is the right-ranked token of the draft model after its parent, both after the
    prefill and after `update` committed an accepted path: so the draft cache holds exactly the
    committed tokens, at the right positions, whatever each row accepted."""
    model, params = draft_pair
    drafter = {"chain": DraftModelChain(model, num_draft=3),
               "static_tree": DraftModelStaticTree(model, PRESETS["medusa_small"]),
               "dynamic_tree": DraftModelTree(model, depth=3, k=3, width=2, budget=9)}[name]
    contexts = [[5, 9, 2, 5, 9], [7, 7, 1]]
    prompts = np.zeros((2, 8), np.int32)
    for b, c in enumerate(contexts):
        prompts[b, : len(c)] = c
    init, propose, update = (jax.jit(drafter.init, static_argnums=3), jax.jit(drafter.propose),
                             jax.jit(drafter.update))
    cache = init(params, jnp.asarray(prompts), jnp.array([5, 3]), 32)
    roots = jnp.array([11, 12])
    for _ in range(2):
        draft, cache = propose(params, cache, roots, jax.random.key(0))
        tokens, parents = np.asarray(draft.tokens), np.asarray(draft.parents)
        assert tokens.shape == parents.shape == (2, drafter.num_nodes)
        np.testing.assert_array_equal(tokens[:, 0], roots)
        rank = _rank_under_parent(model, params, contexts, draft)[:, 1:]
        if name == "dynamic_tree":
            assert (rank < drafter.k).all() and parents.max() > 0  # top-k, deeper than 1
            for b, p in np.ndindex(2, drafter.num_nodes):  # siblings best first
                assert np.all(np.diff(rank[b][parents[b, 1:] == p]) > 0)
        else:
            want = drafter.tree.ranks[1:] if name == "static_tree" else 0
            np.testing.assert_array_equal(rank, np.broadcast_to(want, rank.shape))
        # Accept row 0's path to its last node and row 1's root only; the bonus is next root.
        accepted = [_path(parents[0], drafter.num_nodes - 1), [0]]
        path = np.zeros((2, drafter.max_depth + 1), np.int32)
        path[0, : len(accepted[0])] = accepted[0]
        verdict = Verdict(jnp.asarray(path), jnp.array([len(accepted[0]), 1]),
                          jnp.array([3, 4]))
        cache = update(params, cache, draft, verdict, None)
        contexts = [c + list(tokens[b, accepted[b]]) for b, c in enumerate(contexts)]
        roots = verdict.bonus


def test_bad_drafter_settings_are_rejected(draft_pair):
    model, _ = draft_pair
    with pytest.raises(ValueError, match="budget must be between 2 .* the 13 candidates"):
        DraftModelTree(model, depth=2, k=3, width=3, budget=14)
    with pytest.raises(ValueError, match="width must be >= 1"):
        DraftModelTree(model, width=0)
    with pytest.raises(ValueError, match="num_draft must be >= 1"):
        DraftModelChain(model, num_draft=0)
    with pytest.raises(ValueError, match="vocab_size 3 is smaller than the 4 candidates"):
        TokenRecycling(vocab_size=3)


@pytest.mark.parametrize("prompt, last, want", [
    ([5, 6, 7, 5, 6, 7, 5], 6, [7, 5, 6, 7, 5, 6]),  # a recent match repeats with its period
    ([1, 2, 3, 4, 9, 9, 1, 2], 3, [4, 9, 9, 1, 2, 3]),  # 3-gram "1 2 3" -> what followed it
    ([8, 8], 8, [8] * 6),  # a run of one token
    ([1, 2, 3], 4, [4] * 6),  # no match: the last token repeated
])
def test_prompt_lookup_proposes_the_continuation_of_the_latest_match(prompt, last, want):
    drafter = PromptLookup(num_draft=6, max_ngram=3)
    state = drafter.init(None, jnp.array([prompt]), jnp.array([len(prompt)]), 32)
    draft, _ = jax.jit(drafter.propose)(None, state, jnp.array([last]), None)
    np.testing.assert_array_equal(draft.tokens[0], [last] + want)
