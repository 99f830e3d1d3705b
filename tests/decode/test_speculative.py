"""Speculative decoding is lossless: greedy output == AR greedy output, token for token."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.data.tokenizer import PAD_ID
from zoo.decode import ar, speculative
from zoo.decode.drafters import Draft, DraftModelChain, PromptLookup, TokenRecycling
from zoo.decode.trees import PRESETS
from zoo.models import build_model

from conftest import assert_speculative_equals_ar, tiny_model_config


@pytest.fixture(scope="module")
def draft_pair(tiny_model_and_params):
    """A different (smaller) random draft model with the same tokenizer."""
    draft = build_model(tiny_model_config(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                          mlp_dim=64))
    return draft, draft.init(jax.random.key(1))


def _prompts(seed, batch, vocab=256):
    rng = np.random.default_rng(seed)
    # Repetitive prompts give prompt lookup something to find.
    return [list(np.tile(rng.integers(0, vocab, rng.integers(2, 5)), rng.integers(1, 4)))
            for _ in range(batch)]


@dataclasses.dataclass(frozen=True)
class NeverAccepted(DraftModelChain):
    """The target's own greedy chain with every drafted token moved one id up: never the
    target's choice, so each forward emits its bonus token alone."""

    def propose(self, params, state, last, rng):
        draft, state = super().propose(params, state, last, rng)
        wrong = (draft.tokens[:, 1:] + 1) % self.model.vocab_size
        return Draft(draft.tokens.at[:, 1:].set(wrong), draft.parents, draft.logprobs), state


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: one jit cache entry each
class CountingTarget:
    """The target, counting on the host every tree forward (`extend`) the device runs: a count
    the engine's own bookkeeping plays no part in."""

    model: Any
    calls: list = dataclasses.field(default_factory=list)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def extend(self, params, cache, tokens, parents):
        jax.debug.callback(lambda: self.calls.append(1))
        return self.model.extend(params, cache, tokens, parents)


def _drafters(target, target_params, draft_pair):
    draft, draft_params = draft_pair
    return {
        "prompt_lookup": (PromptLookup(num_draft=5), None),
        "draft_model": (DraftModelChain(draft, num_draft=3), draft_params),
        "self_draft": (DraftModelChain(target, num_draft=4), target_params),  # all accepted
        "never_accepted": (NeverAccepted(target, num_draft=2), target_params),
    }


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("name", ["prompt_lookup", "draft_model", "self_draft", "never_accepted"])
def test_greedy_speculative_equals_ar(tiny_model_and_params, draft_pair, name, batch):
    model, params = tiny_model_and_params
    drafter, drafter_params = _drafters(model, params, draft_pair)[name]
    counting = CountingTarget(model)
    got = assert_speculative_equals_ar(model, params, _prompts(batch, batch), drafter,
                                       drafter_params, verifier=counting,
                                       max_new_tokens=23)  # the limit falls inside a tree
    # The loop runs while any row is active, so the longest row's forwards are all that ran.
    forwards = len(counting.calls)
    assert got.target_forwards.max() == forwards
    emitted = got.num_tokens - 1  # the first token comes from the prefill (equal to AR's)
    assert np.all(got.target_forwards >= -(-emitted // (drafter.max_depth + 1)))
    if batch == 1:
        assert got.tau == pytest.approx(emitted[0] / forwards)
    if name == "self_draft":  # the target drafting for itself is always accepted: 22 = 5+5+5+5+2
        np.testing.assert_array_equal(got.target_forwards, 5)
        assert got.tau == pytest.approx(22 / 5)
    if name == "never_accepted":  # one token per forward, whatever the batch
        np.testing.assert_array_equal(got.target_forwards, emitted)
        assert got.tau == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["prompt_lookup", "self_draft"])
def test_eos_inside_a_tree_stops_the_row_there(tiny_model_and_params, draft_pair, name):
    model, params = tiny_model_and_params
    drafter, drafter_params = _drafters(model, params, draft_pair)[name]
    prompts = _prompts(11, 3)
    free = ar.generate(model, params, prompts, max_new_tokens=20, eos_id=-1, pad_id=PAD_ID)
    eos = int(free.tokens[0, 6])  # pretend row 0's seventh token is EOS
    want = ar.generate(model, params, prompts, max_new_tokens=20, eos_id=eos, pad_id=PAD_ID)
    got = speculative.generate(model, params, prompts, drafter=drafter,
                               drafter_params=drafter_params, max_new_tokens=20, eos_id=eos,
                               pad_id=PAD_ID)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.num_tokens, want.num_tokens)
    assert want.num_tokens[0] <= 7


def test_a_big_tree_needs_no_cache_slots_beyond_ar(tiny_model_and_params):
    """Tree nodes stay pending and only the accepted path is committed, so a 63-node tree
    decodes in the cache AR needs (prompt + new tokens), and a smaller cache is refused."""
    model, params = tiny_model_and_params
    prompts = _prompts(5, 2)
    drafter = TokenRecycling(vocab_size=model.vocab_size, tree=PRESETS["medusa_63"])
    tight = max(map(len, prompts)) + 20
    assert_speculative_equals_ar(model, params, prompts, drafter, max_new_tokens=20,
                                 max_len=tight)
    with pytest.raises(ValueError, match=f"needs a KV cache of {tight} but the cache holds"):
        speculative.generate(model, params, prompts, drafter=drafter, max_new_tokens=20,
                             eos_id=-1, pad_id=PAD_ID, max_len=tight - 1)


@dataclasses.dataclass(frozen=True)
class BadTreeLookup(PromptLookup):
    """Prompt lookup whose third step drafts node 2 under itself (no longer a tree)."""

    def propose(self, params, state, last, rng):
        draft, state = super().propose(params, state, last, rng)
        broken = draft.parents.at[:, 2].set(2)
        return Draft(draft.tokens, jnp.where(state["length"][:, None] > 12, broken,
                                             draft.parents)), state


def test_a_drafter_proposing_a_bad_tree_is_named(tiny_model_and_params):
    model, params = tiny_model_and_params
    with pytest.raises(ValueError, match=r"BadTreeLookup proposed an invalid tree at step \d"):
        speculative.generate(model, params, [[1, 2, 3] * 3], drafter=BadTreeLookup(num_draft=3),
                             max_new_tokens=30, eos_id=-1, pad_id=PAD_ID)


@dataclasses.dataclass(frozen=True)
class ShortDraftLookup(PromptLookup):
    """Declares num_draft nodes but drafts one fewer."""

    def propose(self, params, state, last, rng):
        draft, state = super().propose(params, state, last, rng)
        return Draft(draft.tokens[:, :-1], draft.parents[:, :-1]), state


def test_a_draft_of_the_wrong_shape_is_named_before_work(tiny_model_and_params):
    model, params = tiny_model_and_params
    with pytest.raises(ValueError, match=r"ShortDraftLookup drafted tokens of shape \(1, 3\); "
                                         r"its num_nodes=4 at batch 1 needs \(1, 4\)"):
        speculative.generate(model, params, [[1, 2, 3]], drafter=ShortDraftLookup(num_draft=3),
                             max_new_tokens=8, eos_id=-1, pad_id=PAD_ID)


def test_positional_acceptance_is_counted(tiny_model_and_params):
    """The target drafting its own top-k in the medusa_small template: its best guess is always
    accepted, every other rank never; each step offers the template's fan-out along the
    rank-0 chain (4, 3, 2, 1 candidates at depths 0-3)."""
    from zoo.decode.drafters import DraftModelStaticTree
    model, params = tiny_model_and_params
    drafter = DraftModelStaticTree(model, PRESETS["medusa_small"])
    got = assert_speculative_equals_ar(model, params, _prompts(7, 3), drafter, params,
                                       max_new_tokens=16)
    steps = got.target_forwards.sum()
    fan_out = np.zeros_like(got.offered)
    for depth, children in enumerate([4, 3, 2, 1]):
        fan_out[depth, :children] = 1
    np.testing.assert_array_equal(got.offered, steps * fan_out)
    np.testing.assert_array_equal(got.accepted[:, 0], steps)
    np.testing.assert_array_equal(got.accepted[:, 1:], 0)
    np.testing.assert_allclose(got.acceptance[:, 0], 1.0)
