"""How good generated text is, as masked-diffusion papers measure it (MDLM).

Generative perplexity: the perplexity of the samples under a separately trained AR model of the
zoo (the judge), given their prompts. Low is better, but repetition also scores low, so the
samples' unigram entropy is reported beside it: a sampler that collapses into "))))" gets a
flattering perplexity and a tell-tale entropy.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def generative_perplexity(judge, judge_params, prompts: Sequence[Sequence[int]],
                          samples: Sequence[Sequence[int]], pad_id: int) -> float:
    """exp(mean NLL per sample token) under the AR `judge`, each sample scored after its prompt.

    One causal forward over [prompt ++ sample] per row (right-padded to a common length); only
    the sample's tokens are scored."""
    if len(prompts) != len(samples) or not samples:
        raise ValueError(f"{len(prompts)} prompts for {len(samples)} samples")
    rows = [list(p) + list(s) for p, s in zip(prompts, samples)]
    width = max(len(r) for r in rows)
    tokens = np.full((len(rows), width), pad_id, np.int32)
    scored = np.zeros((len(rows), width), bool)
    for i, (p, s) in enumerate(zip(prompts, samples)):
        tokens[i, :len(p) + len(s)] = rows[i]
        scored[i, len(p):len(p) + len(s)] = True
    logits = _forward(judge, judge_params, jnp.asarray(tokens))
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.asarray(tokens)[:, 1:, None], -1)[..., 0]
    mask = jnp.asarray(scored[:, 1:])
    if not mask.any():
        raise ValueError("no sample tokens to score")
    return float(jnp.exp(jnp.sum(nll * mask) / mask.sum()))


def _forward(judge, params, tokens):
    return jax.jit(lambda p, t: judge.forward(p, t)[0])(params, tokens)


def unigram_entropy(samples: Sequence[Sequence[int]]) -> float:
    """Mean over samples of the entropy (bits) of each sample's token frequencies."""
    values = []
    for s in samples:
        if len(s) == 0:
            continue
        _, counts = np.unique(np.asarray(s), return_counts=True)
        p = counts / counts.sum()
        values.append(float(-(p * np.log2(p)).sum()))
    if not values:
        raise ValueError("no non-empty samples")
    return float(np.mean(values))


def distinct_ngrams(samples: Sequence[Sequence[int]], n: int = 4) -> float:
    """Mean over samples of the fraction of a sample's n-grams that are distinct (Welleck et al.'s
    repetition measure): 1.0 for text that never repeats a span of n tokens, near 0 for a loop.
    Greedy decoding of a small model often loops, which inflates speculative acceptance."""
    values = []
    for s in samples:
        grams = [tuple(s[i:i + n]) for i in range(len(s) - n + 1)]
        if grams:
            values.append(len(set(grams)) / len(grams))
    if not values:
        raise ValueError(f"no sample has {n} tokens")
    return float(np.mean(values))
