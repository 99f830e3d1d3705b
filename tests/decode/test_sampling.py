import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.decode.sampling import Sampler, reference_logprobs


def _support(logprobs):
    return set(np.flatnonzero(np.isfinite(np.asarray(logprobs))).tolist())


def test_greedy_is_argmax_one_hot():
    logits = jnp.array([0.1, 2.0, -1.0, 1.9])
    assert Sampler().sample(None, logits) == 1
    np.testing.assert_array_equal(np.exp(Sampler().logprobs(logits)), [0, 1, 0, 0])


def test_temperature_scales_logits():
    logits = jnp.array([0.0, 1.0, 2.0])
    np.testing.assert_allclose(Sampler(temperature=2.0).logprobs(logits),
                               jax.nn.log_softmax(logits / 2.0), rtol=1e-6)


def test_top_k_keeps_the_k_largest():
    logits = jnp.array([0.5, 3.0, -2.0, 1.0, 2.0])
    lp = Sampler(temperature=1.0, top_k=2).logprobs(logits)
    assert _support(lp) == {1, 4}
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.8, 0.95, 1.0])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p):
    logits = jnp.asarray(np.random.default_rng(0).normal(size=50) * 2, jnp.float32)
    probs = np.asarray(jax.nn.softmax(logits))
    order = np.argsort(-probs)
    mass_before = np.cumsum(probs[order]) - probs[order]
    expected = set(order[mass_before < top_p].tolist())
    assert _support(Sampler(temperature=1.0, top_p=top_p).logprobs(logits)) == expected


def test_top_k_then_top_p_and_sampling_stays_in_support():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 30)), jnp.float32)
    sampler = Sampler(temperature=0.7, top_k=5, top_p=0.6)
    support = [_support(row) for row in sampler.logprobs(logits)]
    assert all(1 <= len(s) <= 5 for s in support)
    for seed in range(20):
        tokens = sampler.sample(jax.random.key(seed), logits)
        assert all(int(t) in s for t, s in zip(tokens, support))


@pytest.mark.parametrize("top_k, top_p", [(1, 1.0), (7, 1.0), (300, 1.0), (0, 0.3), (0, 0.9),
                                          (0, 0.999), (12, 0.7), (1000, 0.5)])
def test_filters_equal_the_sorting_definition(top_k, top_p):
    """The bisection thresholds keep exactly what sorting the vocabulary keeps, on rows with
    ties, negative and positive logits, huge and tiny ones, and -inf entries."""
    rng = np.random.default_rng(top_k + int(top_p * 1000))
    logits = rng.normal(size=(6, 300)).astype(np.float32) * 3
    logits[1] = np.round(logits[1])  # many ties
    logits[2, :150] = -np.inf  # a masked half
    logits[3] *= 1e4  # nearly one-hot
    logits[4] = 0.0  # all equal
    logits[5] = np.where(rng.random(300) < 0.5, -1e-30, 1e-30)  # signs of zero-ish values
    sampler = Sampler(temperature=0.8, top_k=top_k, top_p=top_p)
    got, want = sampler.logprobs(jnp.asarray(logits)), reference_logprobs(sampler, logits)
    for row in range(len(logits)):
        assert _support(got[row]) == _support(want[row]), row
    np.testing.assert_allclose(np.exp(got), np.exp(want), atol=1e-6)


def test_invalid_sampler_settings():
    with pytest.raises(ValueError, match="temperature"):
        Sampler(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        Sampler(temperature=1, top_p=0)


def test_new_sampling_values_reuse_the_compiled_decoders(tiny_model_and_params):
    """Temperature, top-k and top-p are traced: changing them compiles nothing new (switching
    a filter on or off, or greedy vs sampled, is a different program)."""
    from zoo.decode import ar, next_block
    model, params = tiny_model_and_params
    kw = dict(max_new_tokens=4, rng=jax.random.key(0), eos_id=-1, pad_id=0)
    for decoder, run in [(ar._decode, lambda s: ar.generate(model, params, [[1, 2, 3]],
                                                             sampler=s, **kw)),
                         (next_block._decode, lambda s: next_block.generate(
                             model, params, [[1, 2, 3, 4]], block_size=2, sampler=s, **kw))]:
        run(Sampler(temperature=0.7, top_k=5, top_p=0.9))
        compiled = decoder._cache_size()
        for sampler in [Sampler(temperature=1.3, top_k=7, top_p=0.8), Sampler(0.2, 1, 0.99)]:
            run(sampler)
        assert decoder._cache_size() == compiled, decoder
        run(Sampler(temperature=0.7))  # top-k and top-p off: another program
        assert decoder._cache_size() == compiled + 1, decoder


def test_a_traced_sampler_samples_as_the_concrete_one():
    logits = jax.random.normal(jax.random.key(1), (64, 50)) * 3
    sampler = Sampler(temperature=0.8, top_k=10, top_p=0.7)
    traced = jax.jit(lambda s, x: s.logprobs(x))(sampler, logits)
    np.testing.assert_allclose(traced, sampler.logprobs(logits), rtol=1e-6)
    want = jax.lax.top_k(logits, 10)[0][:, -1:]  # top-k by lax.top_k, as a reference
    assert not np.isfinite(np.asarray(traced)[np.asarray(logits < want)]).any()
