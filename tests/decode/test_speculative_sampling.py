"""Speculative sampling through the whole engine reproduces AR sampling's distribution.

A small-vocabulary target (V = 8) with peaked random weights, sampled at temperature 1 with
top-k 6 (so p has zeros). N = 20,000 rows of one prompt each generate 3 tokens; the first comes
from the prefill, the next two from speculative steps. The empirical joint distribution of
(token 2, token 3) over its 36 possible cells is compared with the exact AR distribution
(enumerated with one batched forward over all continuations) by a chi-square test.

Power: with N = 20,000, a deviation of total variation 0.03 gives a noncentrality of at least
4 N TV^2 = 72, which the chi-square test at level 1e-3 detects with probability > 0.9 even over
all 64 cells (scipy.stats.ncx2; test_power checks it for the actual support). The wrong rule (the
i.i.d. ratio test applied to deterministic candidates) deviates by far more and must be rejected.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from zoo.config import ModelConfig
from zoo.decode import speculative, verify
from zoo.decode.drafters import Draft, DraftModelChain, PromptLookup, TokenRecycling
from zoo.decode.trees import static_tree
from zoo.decode.sampling import Sampler
from zoo.models import build_model

from conftest import loud_ssm_params

V, PAD, N, NEW = 8, 7, 20_000, 3
PROMPT = [1, 2, 3, 1, 2, 4, 1, 2]
SAMPLER = Sampler(temperature=1.0, top_k=6)
ALPHA, TV = 1e-3, 0.03


@pytest.fixture(scope="module")
def small_vocab_target():
    model = build_model(ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    mlp_dim=64, init_std=0.5))
    return model, model.init(jax.random.key(3))


def exact_joint(model, params) -> np.ndarray:
    """p(t1, t2, t3 | prompt) under AR sampling, by enumerating all V^3 continuations."""
    conts = np.array(list(itertools.product(range(V), repeat=NEW)), np.int32)
    seqs = np.concatenate([np.tile(PROMPT, (len(conts), 1)), conts], axis=1)
    logits, _ = jax.jit(model.forward)(params, jnp.asarray(seqs))
    logp = np.asarray(SAMPLER.logprobs(logits))
    p0 = len(PROMPT) - 1
    total = sum(logp[np.arange(len(conts)), p0 + i, conts[:, i]] for i in range(NEW))
    return np.exp(total.astype(np.float64)).reshape((V,) * NEW)


def chi_square_pvalue(samples: np.ndarray, joint: np.ndarray) -> float:
    """Chi-square goodness of fit of the (t2, t3) pairs against the exact joint."""
    expected = joint.sum(0).ravel().astype(np.float64) * len(samples)
    observed = np.bincount(samples[:, 1] * V + samples[:, 2], minlength=V * V)
    assert observed[expected == 0].sum() == 0, "sampled a pair of probability zero"
    keep = expected > 0
    return stats.chisquare(observed[keep], expected[keep] * observed.sum() /
                           expected[keep].sum()).pvalue


def run(model, params, drafter):
    out = speculative.generate(model, params, [PROMPT] * N, drafter=drafter, max_new_tokens=NEW,
                               sampler=SAMPLER, rng=jax.random.key(0), eos_id=-1, pad_id=PAD)
    # Rows that got tokens 2 and 3 from one forward accepted a draft: the speculative path ran.
    assert (out.target_forwards == 1).mean() > 0.05
    return out.tokens


def test_prompt_lookup_sampling_matches_ar(small_vocab_target):
    model, params = small_vocab_target
    tokens = run(model, params, PromptLookup(num_draft=3, max_ngram=2))
    assert chi_square_pvalue(tokens, exact_joint(model, params)) > ALPHA


@dataclasses.dataclass(frozen=True)
class WrongRuleLookup(PromptLookup):
    """Deterministic proposals verified with the i.i.d. ratio test against a uniform q: the
    mixed-up rule ALGORITHMS.md §3 warns about."""

    rule = "iid"

    def propose(self, params, state, last, rng):
        draft, state = super().propose(params, state, last, rng)
        uniform = jnp.full(draft.tokens.shape + (V,), -jnp.log(V))
        return Draft(draft.tokens, draft.parents, uniform), state


def test_wrong_rule_is_caught(small_vocab_target):
    model, params = small_vocab_target
    tokens = run(model, params, WrongRuleLookup(num_draft=3, max_ngram=2))
    assert chi_square_pvalue(tokens, exact_joint(model, params)) < 1e-6


@pytest.fixture(scope="module")
def small_vocab_draft():
    """An independent random draft LM over the same 8 tokens."""
    model = build_model(ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                    mlp_dim=32, init_std=0.5))
    return model, model.init(jax.random.key(4))


def _resample_from_p(residual, fallback):
    """The mutation: after a rejection sample from p itself instead of norm(max(p - q, 0)),
    the classic speculative-sampling bug."""
    return fallback


@pytest.mark.parametrize("mutated", [False, True])
def test_sampled_draft_model_chain_matches_ar(small_vocab_target, small_vocab_draft, mutated):
    """The draft LM sampling its chain (rule "iid": the ratio test against its own q) is exact;
    with the residual mutated the same test rejects it."""
    model, params = small_vocab_target
    draft, draft_params = small_vocab_draft
    drafter = DraftModelChain(draft, num_draft=2, sampler=SAMPLER)
    original = verify._normalize
    if mutated:
        verify._normalize = _resample_from_p
        jax.clear_caches()  # retrace the engine with the mutated rule
    try:
        out = speculative.generate(model, params, [PROMPT] * N, drafter=drafter,
                                   drafter_params=draft_params, max_new_tokens=NEW,
                                   sampler=SAMPLER, rng=jax.random.key(1), eos_id=-1, pad_id=PAD)
    finally:
        verify._normalize = original
        jax.clear_caches()
    assert (out.target_forwards == 1).mean() > 0.05
    pvalue = chi_square_pvalue(out.tokens, exact_joint(model, params))
    assert pvalue < 1e-6 if mutated else pvalue > ALPHA


@pytest.mark.parametrize("family", ["mamba2", "hybrid"])
def test_tree_sampling_on_ssm_models_matches_ar(family):
    """The same test on Mamba2 and hybrid targets, drafting a 4-node tree (Token Recycling): the
    tree forward is the SSM tree scan and commit moves the states to the sampled path."""
    layers = dict(mamba2=dict(n_layers=1), hybrid=dict(n_layers=2, layer_pattern="ma"))[family]
    model = build_model(ModelConfig(
        family=family, vocab_size=V, d_model=16, n_heads=2, n_kv_heads=1, mlp_dim=32,
        ssm_heads=2, ssm_head_dim=16, ssm_state_dim=16, init_std=0.5, **layers))
    params = loud_ssm_params(model.init(jax.random.key(3)))
    tree = static_tree([(0,), (1,), (0, 0)])  # two candidates, the first with a child
    tokens = run(model, params, TokenRecycling(vocab_size=V, tree=tree))
    assert chi_square_pvalue(tokens, exact_joint(model, params)) > ALPHA


def test_power(small_vocab_target):
    df = int((exact_joint(*small_vocab_target).sum(0) > 0).sum()) - 1
    critical = stats.chi2.ppf(1 - ALPHA, df)
    assert stats.ncx2.sf(critical, df, 4 * N * TV ** 2) > 0.9
