"""Speculative decoding is lossless: greedy output == AR greedy output, token for token."""

import jax
import numpy as np
import pytest

from zoo.data.tokenizer import PAD_ID
from zoo.decode import ar, speculative
from zoo.decode.drafters import DraftModelChain, PromptLookup
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


def _drafters(target, target_params, draft_pair):
    draft, draft_params = draft_pair
    return {
        "prompt_lookup": (PromptLookup(num_draft=5), None),
        "draft_model": (DraftModelChain(draft, num_draft=3), draft_params),
        "self_draft": (DraftModelChain(target, num_draft=4), target_params),  # all accepted
    }


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("name", ["prompt_lookup", "draft_model", "self_draft"])
def test_greedy_speculative_equals_ar(tiny_model_and_params, draft_pair, name, batch):
    model, params = tiny_model_and_params
    drafter, drafter_params = _drafters(model, params, draft_pair)[name]
    got = assert_speculative_equals_ar(model, params, _prompts(batch, batch), drafter,
                                       drafter_params,
                                       max_new_tokens=23)  # the limit falls inside a tree
    assert got.tau >= 1.0
    if name == "self_draft":
        assert got.tau > drafter.num_draft  # the target drafting for itself is always accepted


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


def test_cache_too_small_for_the_tree_is_rejected(tiny_model_and_params):
    model, params = tiny_model_and_params
    with pytest.raises(ValueError, match="6-node tree it needs a KV cache of 26"):
        speculative.generate(model, params, [[1] * 10], drafter=PromptLookup(num_draft=5),
                             max_new_tokens=10, eos_id=-1, pad_id=PAD_ID, max_len=24)
