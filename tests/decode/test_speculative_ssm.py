"""Speculative decoding runs unchanged on Mamba2 and hybrid models: the tree forward is the SSM
tree scan, commit moves each Mamba2 layer to the accepted node's state, and greedy output equals
AR greedy output token for token."""

import jax
import numpy as np
import pytest

from zoo.decode.drafters import DraftModelTree, PromptLookup, TokenRecycling
from zoo.decode.trees import PRESETS
from zoo.models import build_model

from conftest import assert_speculative_equals_ar, loud_ssm_params, tiny_ssm_config

MAX_NEW = 21  # the length limit falls inside a tree


@pytest.fixture(scope="module", params=["mamba2", "hybrid"])
def ssm_target(request):
    model = build_model(tiny_ssm_config(request.param))
    return model, loud_ssm_params(model.init(jax.random.key(0)))


def _prompts(batch):
    rng = np.random.default_rng(batch)
    # Repetitive prompts give prompt lookup something to find.
    return [list(np.tile(rng.integers(0, 256, rng.integers(2, 5)), rng.integers(2, 4)))
            for _ in range(batch)]


def _drafter(name, model, params):
    if name == "prompt_lookup":  # a chain
        return PromptLookup(num_draft=4), None
    if name == "recycling":  # a 15-node static tree
        return TokenRecycling(model.vocab_size, PRESETS["medusa_small"]), None
    # The target drafting for itself over a dynamic tree: its own SSM cache is extended and
    # committed by the drafter too, and most of each tree is accepted.
    return DraftModelTree(model, depth=3, k=2, width=2, budget=6), params


# One row and ragged rows for the chain; the trees with ragged rows only (a row of 3 runs
# everything a single row does).
@pytest.mark.parametrize("name,batch", [("prompt_lookup", 1), ("prompt_lookup", 3),
                                        ("recycling", 3), ("self_tree", 3)])
def test_greedy_speculative_equals_ar(ssm_target, name, batch):
    model, params = ssm_target
    drafter, drafter_params = _drafter(name, model, params)
    got = assert_speculative_equals_ar(model, params, _prompts(batch), drafter, drafter_params,
                                       max_new_tokens=MAX_NEW)
    if name == "self_tree":
        assert got.tau > 2.0


def test_greedy_speculative_on_the_pallas_tpu_kernels_equals_ar(ssm_target):
    """Both tree kernels (tree attention, SSM tree scan) as Mosaic kernels, interpreted."""
    model, params = ssm_target
    on_kernels = build_model(model.config, kernel_backend="pallas_tpu")
    assert_speculative_equals_ar(model, params, _prompts(2), PromptLookup(num_draft=3),
                                 max_new_tokens=8, verifier=on_kernels)
