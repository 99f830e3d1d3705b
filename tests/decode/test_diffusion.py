"""Masked-diffusion sampling: threshold 1.0 is vanilla one-per-step, one block is the non-block
sampler, a block-diffusion model's KV cache is exact, parallel steps, EOS, bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo_kernels.trees import SAME_BLOCK, block_parents
from zoo.data.tokenizer import MASK_ID, PAD_ID
from zoo.decode import diffusion
from zoo.decode.diffusion import DiffusionSampler
from zoo.decode.sampling import Sampler

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], list(range(30, 41))]  # ragged on purpose
KW = dict(max_new_tokens=8, eos_id=-1, pad_id=PAD_ID, mask_id=MASK_ID)


def _run(model, params, how, model_block, prompts=PROMPTS, **kw):
    return diffusion.generate(model, params, prompts, how=how, model_block_size=model_block,
                              **{**KW, **kw})


def test_threshold_one_is_vanilla_one_token_per_step(tiny_model_and_params):
    model, params = tiny_model_and_params
    vanilla = _run(model, params, DiffusionSampler(steps=8), 0)
    parallel = _run(model, params, DiffusionSampler(threshold=1.0), 0)
    np.testing.assert_array_equal(parallel.tokens, vanilla.tokens)
    assert vanilla.forwards == parallel.forwards == 8
    # Fewer vanilla steps unmask several tokens each: a different, valid decode.
    assert _run(model, params, DiffusionSampler(steps=2), 0).forwards == 2


@pytest.mark.parametrize("rule", [dict(steps=8), dict(threshold=1.0)])
def test_one_block_is_the_non_block_sampler(tiny_model_and_params, rule):
    """A block-diffusion model: the blocked sampler with one block (prompt in the cache) ==
    the whole-span sampler (one forward of prompt + answer per step)."""
    model, params = tiny_model_and_params
    whole = _run(model, params, DiffusionSampler(**rule), 4)
    one_block = _run(model, params, DiffusionSampler(block_size=8, **rule), 4)
    np.testing.assert_array_equal(one_block.tokens, whole.tokens)
    assert one_block.forwards == whole.forwards + 1  # + the prompt's prefill


@pytest.mark.parametrize("rule", [dict(steps=4), dict(threshold=1.0),
                                  dict(steps=8, sampler=Sampler(1.0))])
def test_block_diffusion_cache_gives_the_tokens_of_full_forwards(tiny_model_and_params, rule):
    model, params = tiny_model_and_params
    kw = dict(rng=jax.random.key(5))
    cached = _run(model, params, DiffusionSampler(block_size=4, **rule), 4, **kw)
    full = _run(model, params, DiffusionSampler(block_size=4, cache=False, **rule), 4, **kw)
    np.testing.assert_array_equal(cached.tokens, full.tokens)


def test_block_cache_logits_equal_a_full_forward(tiny_model_and_params):
    """The sampler's cache path, step by step: the prompt prefilled in blocks counted back from
    the answer, block 0 committed through the first extend of block 1 (a two-block tree), then
    block 1 alone: its logits == one block-causal forward over prompt + block 0 + block 1."""
    model, params = tiny_model_and_params
    s, b = 4, len(PROMPTS)
    lengths = jnp.array([len(p) for p in PROMPTS])
    prompt = np.full((b, 16), PAD_ID)
    for row, p in enumerate(PROMPTS):
        prompt[row, :len(p)] = p
    pos = jnp.broadcast_to(jnp.arange(16), (b, 16))
    ids = diffusion.block_ids(pos, lengths, s, s, pos < lengths[:, None])
    prefill = jax.jit(lambda t, n, i: model.prefill(params, t, n, 32, mask="block_causal",
                                                    block_ids=i)[2])
    extend = jax.jit(lambda c, t, p: model.extend(params, c, t, p)[::2])  # (logits, pending)
    cache = prefill(jnp.asarray(prompt), lengths, ids)
    block0 = jax.random.randint(jax.random.key(1), (b, s), 0, 256)
    block1 = jnp.full((b, s), MASK_ID).at[:, 1].set(42)
    two = jnp.concatenate([block_parents(s), jnp.full((s,), SAME_BLOCK).at[0].set(s - 1)])
    first, pending = extend(cache, jnp.concatenate([block0, block1], 1),
                            jnp.broadcast_to(two, (b, 2 * s)))
    cache = jax.jit(model.commit)(cache, pending, jnp.tile(jnp.arange(s), (b, 1)),
                                  jnp.full((b,), s))
    again, _ = extend(cache, block1, jnp.broadcast_to(block_parents(s), (b, s)))
    # One forward over every row's prompt + block 0 + block 1, padding after it (block id FAR).
    width = 16 + 2 * s
    seq = np.full((b, width), PAD_ID)
    for row, p in enumerate(PROMPTS):
        seq[row, :len(p) + 2 * s] = np.concatenate([p, block0[row], block1[row]])
    pos = jnp.broadcast_to(jnp.arange(width), (b, width))
    ids = diffusion.block_ids(pos, lengths, s, s, pos < (lengths + 2 * s)[:, None])
    full, _ = model.forward(params, jnp.asarray(seq), mask="block_causal", block_ids=ids)
    for row, n in enumerate(lengths.tolist()):
        np.testing.assert_allclose(first[row, :s], full[row, n:n + s], atol=2e-5)
        np.testing.assert_allclose(first[row, s:], full[row, n + s:n + 2 * s], atol=2e-5)
        np.testing.assert_allclose(again[row], full[row, n + s:n + 2 * s], atol=2e-5)


def test_low_threshold_unmasks_a_block_per_forward(tiny_model_and_params):
    model, params = tiny_model_and_params
    got = _run(model, params, DiffusionSampler(block_size=4, threshold=1e-6), 4)
    assert got.forwards == 1 + 2  # the prefill, then every position of a block at once
    assert (got.tokens != MASK_ID).all()


def test_random_order_ignores_confidence_and_keeps_the_quota():
    """MDLM's order: which positions a step unmasks depends on the key, not on the logits;
    exactly `count` of the masked ones."""
    masked = jnp.array([[True, True, False, True, True, True]] * 2)
    count = jnp.array([2, 3])
    how = DiffusionSampler(order="random")
    picks = [diffusion._choose(how, Sampler(), jax.random.key(0),
                               jax.random.normal(jax.random.key(seed), (2, 6, 11)), masked, count)[1]
             for seed in (1, 2)]
    np.testing.assert_array_equal(picks[0], picks[1])
    np.testing.assert_array_equal(picks[0].sum(1), count)
    assert not (picks[0] & ~masked).any()
    other_key = diffusion._choose(how, Sampler(), jax.random.key(3),
                                  jax.random.normal(jax.random.key(1), (2, 6, 11)), masked, count)[1]
    confident = diffusion._choose(DiffusionSampler(), Sampler(), jax.random.key(0),
                                  jnp.zeros((2, 6, 11)).at[:, :2, 0].set(9.0), masked, count)[1]
    assert (np.asarray(other_key) != np.asarray(picks[0])).any()
    np.testing.assert_array_equal(confident[0], [True, True, False, False, False, False])


def test_random_order_vanilla_unmasks_steps_at_a_time(tiny_model_and_params):
    model, params = tiny_model_and_params
    got = _run(model, params, DiffusionSampler(steps=2, order="random",
                                               sampler=Sampler(temperature=1.0)), 0,
               rng=jax.random.key(0))
    assert got.forwards == 2 and (got.tokens != MASK_ID).all()


def test_positions_after_an_eos_are_padding(tiny_model_and_params):
    model, params = tiny_model_and_params
    free = _run(model, params, DiffusionSampler(block_size=4), 4)
    eos = int(free.tokens[0, 5])
    got = _run(model, params, DiffusionSampler(block_size=4), 4, eos_id=eos)
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(got.tokens[row] == eos)
        if hits.size:
            assert got.num_tokens[row] == hits[0] + 1
            assert (got.tokens[row, hits[0] + 1:] == PAD_ID).all()
        else:
            assert got.num_tokens[row] == 8
    assert (got.tokens == eos).any() and (got.tokens != MASK_ID).all()


def test_unmasking_order_counts_the_steps_that_decided_each_position(tiny_model_and_params):
    model, params = tiny_model_and_params
    one_by_one = _run(model, params, DiffusionSampler(steps=8), 0)
    for row in one_by_one.unmasked_at:
        assert sorted(row) == list(range(1, 9))
    two_steps = _run(model, params, DiffusionSampler(steps=2), 0)
    for row in two_steps.unmasked_at:
        assert sorted(row) == [1] * 4 + [2] * 4
    blocks = _run(model, params, DiffusionSampler(block_size=4, threshold=1e-6), 4)
    np.testing.assert_array_equal(blocks.unmasked_at, [[1] * 4 + [2] * 4] * len(PROMPTS))


def test_the_first_unmasked_position_is_the_most_confident_one(tiny_model_and_params):
    """Vanilla greedy: step 1 unmasks the position whose argmax is most probable in one
    bidirectional forward over the prompt and an all-MASK answer."""
    model, params = tiny_model_and_params
    prompt = PROMPTS[2]
    got = _run(model, params, DiffusionSampler(steps=8), 0, prompts=[prompt])
    logits, _ = model.forward(params, jnp.array([prompt + [MASK_ID] * 8]), mask="bidirectional")
    confidence = jax.nn.softmax(logits[0, len(prompt):], axis=-1).max(-1)
    first = int(np.flatnonzero(got.unmasked_at[0] == 1)[0])
    assert first == int(jnp.argmax(confidence))
    assert got.tokens[0, first] == int(jnp.argmax(logits[0, len(prompt) + first]))


def test_positions_made_padding_by_an_eos_are_decided_with_it(tiny_model_and_params):
    model, params = tiny_model_and_params
    free = _run(model, params, DiffusionSampler(steps=8), 0)
    eos = int(free.tokens[0, 2])
    got = _run(model, params, DiffusionSampler(steps=8), 0, eos_id=eos)
    row = int(np.flatnonzero((got.tokens == eos).any(1))[0])
    at = int(np.flatnonzero(got.tokens[row] == eos)[0])
    after = got.unmasked_at[row, at + 1:]  # unmasked before the EOS was, or made PAD with it
    assert after.size and (after > 0).all() and (after <= got.unmasked_at[row, at]).all()


@pytest.mark.parametrize("how, span, message", [
    (dict(threshold=1.5), 8, r"threshold must be in \(0, 1\]"),
    (dict(steps=-1), 8, "steps must be >= 1"),
    (dict(block_size=3), 8, "block_size=3 does not divide the answer length 8"),
    (dict(block_size=4, steps=3), 8, "must be at most the answer length 8 and a multiple"),
    (dict(steps=2, threshold=0.5), 8, "not both"),
    (dict(order="left"), 8, "order must be 'confidence' or 'random'"),
    (dict(order="random", threshold=0.5), 8, "order='random' is for the vanilla sampler"),
])
def test_bad_settings_fail_before_work(tiny_model_and_params, how, span, message):
    model, params = tiny_model_and_params
    with pytest.raises(ValueError, match=message):
        _run(model, params, DiffusionSampler(**how), 4, max_new_tokens=span)
