"""Next-block decoding: every decoded block's logits equal one block-causal forward over the final
sequence; block size 1 is AR; EOS, length limit, prompt remainders and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.data.tokenizer import PAD_ID
from zoo.decode import ar, next_block
from zoo.decode.sampling import Sampler

S = 4
# Ragged on purpose: shorter than a block (left-padded), whole blocks, and remainders 1 and 3.
PROMPTS = [[7, 8], [1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 8, 7, 6], [3, 1, 4, 1, 5, 9, 2]]


def test_decoded_block_logits_equal_one_block_causal_forward(tiny_model_and_params):
    model, params = tiny_model_and_params
    got = next_block.generate(model, params, PROMPTS, block_size=S, max_new_tokens=10,
                              eos_id=-1, pad_id=PAD_ID, keep_logits=True)
    _, whole, _, n_forced, padded = next_block.prepare_blocks(PROMPTS, S, vocab_size=260,
                                                              pad_id=PAD_ID)
    np.testing.assert_array_equal(got.num_tokens, [10] * 4)
    assert got.forwards == -(-(10 + n_forced.max()) // S)  # one forward per block, prefill included
    for row, prompt in enumerate(padded):
        seq = np.array(prompt + got.tokens[row].tolist())
        full, _ = model.forward(params, jnp.asarray(seq[None]), mask="block_causal", block_size=S)
        start = whole[row] - S  # the last whole prompt block predicts the first decoded block
        n = len(seq) - start - S  # positions whose next-block logits the final sequence holds
        n = n // S * S
        np.testing.assert_allclose(got.logits[row, :n], full[0, start:start + n], atol=2e-5)
        # Greedy: each decoded token is the argmax at its position, except forced prompt tokens.
        argmax = np.asarray(full[0]).argmax(-1)
        new = np.arange(len(prompt), len(seq))
        np.testing.assert_array_equal(seq[new], argmax[new - S])


def test_prompt_remainder_is_forced_not_sampled(tiny_model_and_params):
    model, params = tiny_model_and_params
    got = next_block.generate(model, params, [PROMPTS[2]], block_size=S, max_new_tokens=3,
                              eos_id=-1, pad_id=PAD_ID, keep_logits=True)
    # Prompt [9 9 8 7 | 6]: block 1 is [6, x, y, z]; x, y, z are new, 6 is the prompt's.
    assert got.num_tokens[0] == 3 and got.forwards == 1
    np.testing.assert_array_equal(got.tokens[0], got.logits[0, 1:4].argmax(-1))


def test_block_size_one_equals_ar_greedy(tiny_model_and_params):
    model, params = tiny_model_and_params
    want = ar.generate(model, params, PROMPTS, max_new_tokens=12, eos_id=-1, pad_id=PAD_ID)
    eos = int(want.tokens[0, 5])  # a token row 0 emits: rows stop at it at different steps
    want = ar.generate(model, params, PROMPTS, max_new_tokens=12, eos_id=eos, pad_id=PAD_ID)
    got = next_block.generate(model, params, PROMPTS, block_size=1, max_new_tokens=12,
                              eos_id=eos, pad_id=PAD_ID)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.num_tokens, want.num_tokens)
    assert got.num_tokens[0] <= 6


def test_rows_stop_at_the_block_holding_their_eos(tiny_model_and_params):
    model, params = tiny_model_and_params
    free = next_block.generate(model, params, PROMPTS, block_size=S, max_new_tokens=16,
                               eos_id=-1, pad_id=PAD_ID)
    eos = int(free.tokens[1, 5])  # row 1 (whole blocks): position 5 is inside its second block
    got = next_block.generate(model, params, PROMPTS, block_size=S, max_new_tokens=16,
                              eos_id=eos, pad_id=PAD_ID)
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(free.tokens[row] == eos)
        n = hits[0] + 1 if hits.size else 16
        assert got.num_tokens[row] == n
        np.testing.assert_array_equal(got.tokens[row, :n], free.tokens[row, :n])
        assert (got.tokens[row, n:] == PAD_ID).all()


def test_sampling_is_per_position_and_seeded(tiny_model_and_params):
    model, params = tiny_model_and_params
    greedy = next_block.generate(model, params, PROMPTS, block_size=S, max_new_tokens=9,
                                 eos_id=-1, pad_id=PAD_ID)
    kw = dict(block_size=S, max_new_tokens=9, eos_id=-1, pad_id=PAD_ID)
    top1 = next_block.generate(model, params, PROMPTS, sampler=Sampler(1.0, top_k=1),
                               rng=jax.random.key(3), **kw)
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    hot = Sampler(1.5, top_p=0.95)
    a = next_block.generate(model, params, PROMPTS, sampler=hot, rng=jax.random.key(1), **kw)
    b = next_block.generate(model, params, PROMPTS, sampler=hot, rng=jax.random.key(1), **kw)
    c = next_block.generate(model, params, PROMPTS, sampler=hot, rng=jax.random.key(2), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert (a.tokens != c.tokens).any() and (a.tokens != greedy.tokens).any()


def test_bad_requests_fail_before_work(tiny_model_and_params):
    model, params = tiny_model_and_params
    kw = dict(block_size=S, eos_id=-1, pad_id=PAD_ID)
    with pytest.raises(ValueError, match="need a KV cache of 40 but the cache holds 32"):
        next_block.generate(model, params, [list(range(24))], max_new_tokens=20, max_len=32, **kw)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        next_block.generate(model, params, [[1], []], max_new_tokens=4, **kw)
    with pytest.raises(ValueError, match="token id 999 at position 0"):
        next_block.generate(model, params, [[999]], max_new_tokens=4, **kw)
    with pytest.raises(ValueError, match="explicit PRNG key"):
        next_block.generate(model, params, [[1]], max_new_tokens=4, sampler=Sampler(1.0), **kw)
