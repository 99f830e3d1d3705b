import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.data.tokenizer import EOS_ID, PAD_ID
from zoo.decode import ar
from zoo.decode.ar import generate
from zoo.decode.sampling import Sampler
from zoo.layers.kv_cache import KVCache
from zoo.models import build_model, in_dtype

from conftest import tiny_model_config, tiny_ssm_config

PROMPTS = [[256, 10, 20, 30], [256, 5], [256, 7, 8, 9, 1, 2, 3, 4, 5, 6, 11]]


def _greedy(model, params, prompts, n, **kw):
    return generate(model, params, prompts, max_new_tokens=n, eos_id=kw.pop("eos_id", EOS_ID),
                    pad_id=PAD_ID, **kw)


def _argmax_without_cache(model, params, prompt, n, pad_to=64):
    """Reference: append argmax of a fresh full forward, one token at a time, no KV cache."""
    forward = jax.jit(model.forward)
    seq = list(prompt)
    for _ in range(n):
        padded = np.zeros((1, pad_to), np.int32)
        padded[0, :len(seq)] = seq
        logits, _ = forward(params, jnp.asarray(padded))
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt):]


def test_greedy_equals_stepwise_argmax_of_full_forwards(tiny_model_and_params):
    model, params = tiny_model_and_params
    out = _greedy(model, params, PROMPTS, 16, eos_id=-1)  # no EOS: compare all 16 tokens
    assert out.tokens.shape == (3, 16)
    for row, prompt in enumerate(PROMPTS):
        assert out.tokens[row].tolist() == _argmax_without_cache(model, params, prompt, 16)
    np.testing.assert_array_equal(out.num_tokens, [16, 16, 16])


def test_batched_ragged_equals_per_row(tiny_model_and_params):
    model, params = tiny_model_and_params
    batched = _greedy(model, params, PROMPTS, 12, eos_id=-1)
    for row, prompt in enumerate(PROMPTS):
        single = _greedy(model, params, [prompt], 12, eos_id=-1)
        np.testing.assert_array_equal(batched.tokens[row], single.tokens[0])


def test_each_row_stops_at_its_own_eos(tiny_model_and_params):
    model, params = tiny_model_and_params
    free = _greedy(model, params, PROMPTS, 12, eos_id=-1).tokens
    eos = int(free[0, 3])  # pretend row 0's fourth token is EOS
    out = _greedy(model, params, PROMPTS, 12, eos_id=eos)
    for row in range(3):
        hits = np.flatnonzero(free[row] == eos)
        n = int(hits[0]) + 1 if hits.size else 12
        assert out.num_tokens[row] == n
        np.testing.assert_array_equal(out.tokens[row, :n], free[row, :n])
        assert (out.tokens[row, n:] == PAD_ID).all()
    assert out.num_tokens[0] <= 4


def test_sampling_is_reproducible_and_key_dependent(tiny_model_and_params):
    model, params = tiny_model_and_params
    sampler = Sampler(temperature=1.0, top_k=50, top_p=0.95)
    run = lambda seed: _greedy(model, params, PROMPTS, 10, sampler=sampler,  # noqa: E731
                               rng=jax.random.key(seed), eos_id=-1).tokens
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))
    top1 = _greedy(model, params, PROMPTS, 10, sampler=Sampler(temperature=1.0, top_k=1),
                   rng=jax.random.key(0), eos_id=-1).tokens
    np.testing.assert_array_equal(top1, _greedy(model, params, PROMPTS, 10, eos_id=-1).tokens)


def test_one_compile_per_shape_bucket(tiny_model_and_params):
    model, params = tiny_model_and_params
    _greedy(model, params, [[1, 2, 3]], 5)
    before = ar._decode._cache_size()
    _greedy(model, params, [[4, 5, 6, 7, 8]], 5)  # same bucket (32), different prompt
    _greedy(model, params, [[9] * 20], 5)
    assert ar._decode._cache_size() == before


def test_bad_inputs_fail_before_work(tiny_model_and_params):
    model, params = tiny_model_and_params
    with pytest.raises(ValueError, match="token id 300 at position 1, outside the vocabulary"):
        _greedy(model, params, [[1, 2], [5, 300]], 4)
    with pytest.raises(ValueError, match="token id -1"):
        _greedy(model, params, [[-1]], 4)
    with pytest.raises(ValueError, match="prompt 0 has 40 tokens; with max_new_tokens=10 it "
                                         "needs a KV cache of 50 but the cache holds 32"):
        _greedy(model, params, [[1] * 40], 10, max_len=32)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        _greedy(model, params, [[1], []], 4)
    with pytest.raises(ValueError, match="explicit PRNG key"):
        _greedy(model, params, [[1]], 4, sampler=Sampler(temperature=1.0))
    with pytest.raises(ValueError, match="max_new_tokens"):
        _greedy(model, params, [[1]], 0)


def test_tight_cache_smaller_than_bucket(tiny_model_and_params):
    model, params = tiny_model_and_params
    out = _greedy(model, params, [[1, 2, 3]], 5, eos_id=-1, max_len=8)
    np.testing.assert_array_equal(out.tokens, _greedy(model, params, [[1, 2, 3]], 5,
                                                      eos_id=-1).tokens)


def test_cache_sizes_are_halves_of_max_len_from_the_prompt_to_its_end():
    assert ar.capacities(32, 100, 512) == [128, 256]  # a 32-token bucket + 100 tokens: 132 slots
    assert ar.capacities(64, 64, 512) == [128]
    assert ar.capacities(320, 8, 512) == [512]  # the bucket alone needs 512
    assert ar.capacities(32, 2000, 1024) == [128, 256, 512, 1024]
    assert ar.capacities(32, 100, 200) == [200]  # no half of 200 is a multiple of 128
    with pytest.raises(ValueError, match="a KV cache of 256 slots cannot grow to 128"):
        KVCache.zeros(1, 1, 256, 1, 8, jnp.float32).grow(128)


@pytest.mark.parametrize("config", [tiny_model_config(), tiny_ssm_config("hybrid")],
                         ids=["transformer", "hybrid"])
def test_cache_grows_with_the_rows(monkeypatch, config):
    """A 100-token row fills 128 slots at step 29 of 40: the CPU program's loop goes on over 256
    slots, and every row gets the tokens of one 256-slot cache. Both programs are traced (the
    TPU/GPU one loops over 256 slots from the start); only the CPU one is compiled here."""
    model = build_model(config)
    params = model.init(jax.random.key(0))
    slots, extend = [], type(model).extend

    def spy(self, params, cache, *args):
        slots.append(getattr(cache, "kv", cache).max_len)  # at trace time: once per loop
        return extend(self, params, cache, *args)

    monkeypatch.setattr(type(model), "extend", spy)
    ar._decode.clear_cache()
    prompts = [[256, *range(1, 100)], *PROMPTS[:2]]  # a 128-token bucket
    grown = _greedy(model, params, prompts, 40, eos_id=-1, max_len=256)
    assert slots == [128, 256, 256]  # CPU: 128 then 256 slots; TPU/GPU: 256
    monkeypatch.setattr(ar, "capacities", lambda prompt_len, new, max_len: [max_len])
    ar._decode.clear_cache()
    one = _greedy(model, params, prompts, 40, eos_id=-1, max_len=256)
    assert slots[3:] == [256]
    np.testing.assert_array_equal(grown.tokens, one.tokens)
    np.testing.assert_array_equal(grown.num_tokens, [40, 40, 40])


@pytest.mark.parametrize("config", [tiny_model_config(), tiny_ssm_config("mamba2"),
                                    tiny_ssm_config("hybrid")],
                         ids=["transformer", "mamba2", "hybrid"])
def test_a_float32_model_serves_in_bfloat16(config):
    """`in_dtype` casts every floating param, and the bfloat16 model (its caches bfloat16 too)
    decodes through prefill, extend and commit: its first greedy token per row is the argmax of
    its own forward, and its logits stay within bfloat16 rounding of the float32 model's."""
    params = build_model(config).init(jax.random.key(0))
    bf_config, bf_params = in_dtype(config, params, "bfloat16")
    assert {leaf.dtype for leaf in jax.tree.leaves(bf_params)} == {jnp.dtype(jnp.bfloat16)}
    model, ref = build_model(bf_config), build_model(config)
    caches = jax.tree.leaves(jax.eval_shape(lambda: model.init_cache(2, 32)))
    assert jnp.dtype(jnp.bfloat16) in {c.dtype for c in caches}
    tokens = jnp.asarray([[256, 10, 20, 30, 40, 50]], jnp.int32)
    ours = model.forward(bf_params, tokens)[0].astype(jnp.float32)
    theirs = ref.forward(params, tokens)[0]
    scale = float(jnp.abs(theirs).max())
    np.testing.assert_allclose(ours, theirs, atol=0.05 * scale)
    out = _greedy(model, bf_params, [tokens[0].tolist()], 4, eos_id=-1)
    assert out.tokens[0, 0] == int(jnp.argmax(ours[0, -1]))
