"""Generative perplexity scores exactly the sample tokens after their prompts; unigram entropy."""

import math

import jax
import numpy as np
import pytest

from zoo.data.tokenizer import PAD_ID
from zoo.quality import distinct_ngrams, generative_perplexity, unigram_entropy


def test_generative_perplexity_is_the_judges_nll_on_sample_tokens(tiny_model_and_params):
    model, params = tiny_model_and_params
    prompts, samples = [[1, 2, 3], [4]], [[5, 6], [7, 8, 9, 10]]
    nll = []
    for p, s in zip(prompts, samples):
        seq = np.array(p + s)
        logits, _ = model.forward(params, seq[None])
        logp = np.asarray(jax.nn.log_softmax(logits[0]))
        nll += [-logp[len(p) + i - 1, tok] for i, tok in enumerate(s)]
    got = generative_perplexity(model, params, prompts, samples, PAD_ID)
    assert got == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)


def test_unigram_entropy():
    assert unigram_entropy([[3, 3, 3, 3]]) == 0
    assert unigram_entropy([[1, 2, 1, 2], [1, 2, 3, 4]]) == pytest.approx((1 + 2) / 2)
    with pytest.raises(ValueError, match="no non-empty samples"):
        unigram_entropy([[]])


def test_distinct_ngrams():
    assert distinct_ngrams([[1, 2, 3, 4, 5]], n=2) == 1.0
    assert distinct_ngrams([[7, 7, 7, 7, 7]], n=2) == 0.25  # one distinct bigram of four
    assert distinct_ngrams([[1, 2, 1, 2, 1], [1, 2]], n=2) == pytest.approx((2 / 4 + 1) / 2)
    with pytest.raises(ValueError, match="no sample has 4 tokens"):
        distinct_ngrams([[1, 2, 3]])
