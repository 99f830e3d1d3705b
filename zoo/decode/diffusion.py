"""Sampling masked diffusion LMs: vanilla, parallel threshold (Fast-dLLM) and semi-AR blocks.

Every row's answer span (G positions after its prompt) starts all-MASK. Each step runs the model,
picks a token and its confidence (its probability) at every masked position, and unmasks some:

  vanilla     a fixed number per step (the highest confidences: LLaDA's low-confidence
              remasking; or, with `order="random"`, positions drawn uniformly: MDLM's ancestral
              order, which a weak model needs, since its most confident guesses are runs of the
              commonest token), `steps` steps over the span;
  threshold   every masked position whose confidence exceeds `threshold` (at least the most
              confident one): Fast-dLLM's parallel decoding, as many steps as it needs;
  blocks      `block_size` > 0: blocks of the span left to right, one of the rules above inside
              the active block. The prompt is prefilled once and every finished block is
              committed to the KV cache, so a step's forward covers only the active block
              (`extend` with one bidirectional block). The first step of a block also carries the
              block just finished, as the parent block of a two-block tree, and commits it: no
              extra forward per block.

Attention masks. A model trained on one bidirectional window (objective.block_size 0) samples
without blocks by re-running the whole window each step (prompt and answer see each other). With
blocks its prompt and committed blocks are cached as computed when they were new, never updated
by later blocks: Fast-dLLM's approximation of a model that was trained without that constraint.
A block-diffusion model (objective.block_size s) was trained with clean blocks that only attend
block-causally, so its cache is exact: the blocked sampler with the cache gives the tokens of the
same sampler without it (`cache=False`: the whole sequence every step, masked block-causally),
which the tests check. Its prompt is cut into blocks of s counted back from the answer.

EOS: once a row unmasks an EOS, every answer position after it becomes PAD (decided), and the row
is done when nothing before it is masked. Tokens are greedy at temperature 0, else sampled from
the temperature / top-k / top-p distribution of `Sampler`; confidence is the probability of the
chosen token (for greedy, under the model's softmax).
"""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo_kernels.trees import SAME_BLOCK, block_parents
from zoo.decode.ar import check_budget_and_key, pad_prompts
from zoo.decode.sampling import Sampler

FAR = 2**30  # the block id of padding: after every real block, so no real token sees it


@dataclasses.dataclass(frozen=True)
class DiffusionSampler:
    """How a diffusion model is sampled; hashable, so it is a static jit argument."""

    steps: int = 0  # vanilla: steps over the whole span (0: one token per step)
    threshold: float = 0.0  # 0: off (vanilla); in (0, 1]: unmask every confidence > threshold
    block_size: int = 0  # 0: the whole span at once; s: semi-AR blocks of s
    cache: bool = True  # blocks: keep the prompt and finished blocks in the KV cache
    sampler: Sampler = Sampler()  # temperature 0: greedy
    order: str = "confidence"  # vanilla: unmask the most confident positions, or "random" ones

    def __post_init__(self):
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1] (or 0: off), got {self.threshold}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 1 (or 0: one token per step), got {self.steps}")
        if self.block_size < 0:
            raise ValueError(f"block_size must be >= 1 (or 0: no blocks), got {self.block_size}")
        if self.threshold and self.steps:
            raise ValueError("give steps (vanilla) or threshold (parallel decoding), not both")
        if self.order not in ("confidence", "random"):
            raise ValueError(f"order must be 'confidence' or 'random', got {self.order!r}")
        if self.order == "random" and self.threshold:
            raise ValueError("threshold decoding unmasks by confidence; order='random' is for "
                             "the vanilla sampler (steps)")

    def check(self, span: int) -> tuple[int, int]:
        """(block size, steps per block) for an answer span of `span` tokens, or a ValueError."""
        s = self.block_size or span
        if span % s:
            raise ValueError(f"block_size={self.block_size} does not divide the answer length "
                             f"{span}")
        blocks = span // s
        steps = self.steps or span
        if steps % blocks or steps > span:
            raise ValueError(f"steps={steps} must be at most the answer length {span} and a "
                             f"multiple of its {blocks} blocks")
        return s, steps // blocks


@dataclasses.dataclass
class DiffusionGeneration:
    tokens: np.ndarray  # int32[B, G]: the answers, pad_id after a row's EOS
    num_tokens: np.ndarray  # int32[B]: answer tokens up to and including EOS
    forwards: int  # model forwards run (prefill included)
    # int32[B, G]: the denoising step (1, 2, ...; the prefill not counted) that decided each
    # answer position: unmasked it, or made it PAD after an EOS. The sampler's unmasking order.
    unmasked_at: np.ndarray


def generate(model, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             how: DiffusionSampler = DiffusionSampler(), model_block_size: int = 0, rng=None,
             eos_id: int, pad_id: int, mask_id: int) -> DiffusionGeneration:
    """Sample an answer of `max_new_tokens` after every prompt. `model_block_size` is the run's
    `objective.block_size` (0: trained on one bidirectional window; s: block diffusion)."""
    rng = check_budget_and_key(max_new_tokens, how.sampler, rng)
    s, steps_per_block = how.check(max_new_tokens)
    tokens, lengths = pad_prompts(prompts, model.vocab_size, pad_id)
    # The sampler travels as a traced argument (a new temperature reuses the program).
    out, forwards, unmasked_at = _sample(
        params, jnp.asarray(tokens), jnp.asarray(lengths), rng, model=model, span=max_new_tokens,
        block=s, steps_per_block=steps_per_block, how=dataclasses.replace(how, sampler=Sampler()),
        sampler=how.sampler, model_block=model_block_size, eos_id=eos_id, pad_id=pad_id,
        mask_id=mask_id)
    out = np.asarray(out)
    is_eos = out == eos_id
    num = np.where(is_eos.any(1), is_eos.argmax(1) + 1, max_new_tokens).astype(np.int32)
    return DiffusionGeneration(out, num, int(forwards), np.asarray(unmasked_at))


def block_ids(positions, lengths, answer_block: int, prompt_block: int, real):
    """int32[B, W] block id of every position: answer blocks 0, 1, ... of `answer_block` from
    each row's answer start, prompt blocks -1, -2, ... of `prompt_block` counted back from it
    (0: the whole prompt is block -1), padding FAR."""
    rel = positions - lengths[:, None]
    prompt = -1 if prompt_block == 0 else jnp.floor_divide(rel, prompt_block)
    ids = jnp.where(rel < 0, prompt, rel // answer_block)
    return jnp.where(real, ids, FAR).astype(jnp.int32)


def _choose(how: DiffusionSampler, sampler: Sampler, rng, logits, masked, count):
    """(tokens [B, N], which masked positions to unmask bool[B, N]) for the logits [B, N, V] of
    the positions in play; `count` int32[B]: how many a vanilla step unmasks."""
    token_key, order_key = jax.random.split(rng)
    tokens = sampler.sample(token_key, logits)
    if how.order == "random":
        conf = jnp.where(masked, jax.random.uniform(order_key, masked.shape), -1.0)
    else:
        scores = logits if sampler.greedy else sampler.logprobs(logits)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
        conf = jnp.where(masked, jnp.take_along_axis(probs, tokens[..., None], -1)[..., 0], -1.0)
    rank = jnp.argsort(jnp.argsort(-conf, axis=-1), axis=-1)  # 0: the most confident
    if how.threshold:
        count = jnp.maximum((conf > how.threshold).sum(-1), 1)
    return tokens, masked & (rank < count[:, None])


def _unmask(answer, unmasked_at, step, tokens, chosen, start, eos_id, pad_id, mask_id):
    """Write the chosen tokens into the answer [B, G] at offset `start`; after a row's first
    EOS every position is PAD. `unmasked_at` [B, G] (0: still masked) records `step` at the
    positions this step decides."""
    n = tokens.shape[1]
    window = jax.lax.dynamic_slice_in_dim(answer, start, n, axis=1)
    answer = jax.lax.dynamic_update_slice_in_dim(answer, jnp.where(chosen, tokens, window),
                                                 start, axis=1)
    eos = answer == eos_id
    after = jnp.cumsum(eos, axis=1) - eos > 0
    answer = jnp.where(after, pad_id, answer)
    return answer, jnp.where((unmasked_at == 0) & (answer != mask_id), step, unmasked_at)


@functools.partial(jax.jit, static_argnames=("model", "span", "block", "steps_per_block", "how",
                                             "model_block", "eos_id", "pad_id", "mask_id"))
def _sample(params, prompt, lengths, rng, *, model, span, block, steps_per_block, how, sampler,
            model_block, eos_id, pad_id, mask_id):
    b, p_width = prompt.shape
    rows = jnp.arange(b)[:, None]
    width = p_width + span
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (b, width))
    real = positions < (lengths + span)[:, None]
    at_answer = lengths[:, None] + jnp.arange(span)  # [B, G] positions of the answer
    answer = jnp.full((b, span), mask_id, jnp.int32)
    use_cache = how.cache and how.block_size > 0  # else every step re-runs the whole sequence

    def quota(step):
        """Vanilla: tokens to unmask at `step` of a block (an even split over the steps)."""
        return ((step + 1) * block) // steps_per_block - (step * block) // steps_per_block

    def whole_sequence(answer):
        seq = jnp.concatenate([prompt, jnp.full((b, span), pad_id, jnp.int32)], axis=1)
        return seq.at[rows, at_answer].set(answer)

    def full_logits(answer):
        """Logits at the answer positions from one forward over prompt + answer (no cache)."""
        seq = whole_sequence(answer)
        if model_block == 0 and how.block_size == 0:  # MDLM / LLaDA: all see all
            logits, _ = model.forward(params, seq, mask="bidirectional",
                                      segment_ids=real.astype(jnp.int32))
        else:
            ids = block_ids(positions, lengths, block, model_block, real)
            logits, _ = model.forward(params, seq, mask="block_causal", block_ids=ids)
        return logits[rows, at_answer]

    def block_loop(j, state):
        """Denoise answer block j (positions j*block ...) until nothing in it is masked."""
        answer, unmasked_at, cache, forwards, rng = state
        start = j * block

        def masked_now(answer):
            return jax.lax.dynamic_slice_in_dim(answer, start, block, axis=1) == mask_id

        def step(carry):
            i, answer, unmasked_at, cache, forwards, rng = carry
            rng, key = jax.random.split(rng)
            if use_cache:
                active = jax.lax.dynamic_slice_in_dim(answer, start, block, axis=1)
                logits, _, _ = model.extend(params, cache, active, block_parents(block))
            else:
                logits = jax.lax.dynamic_slice_in_dim(full_logits(answer), start, block, axis=1)
            tokens, chosen = _choose(how, sampler, key, logits, masked_now(answer),
                                     jnp.full((b,), quota(i)))
            answer, unmasked_at = _unmask(answer, unmasked_at, forwards + 1, tokens, chosen,
                                          start, eos_id, pad_id, mask_id)
            return i + 1, answer, unmasked_at, cache, forwards + 1, rng

        def first_step(answer, unmasked_at, cache, forwards, rng):
            """Step 0, carrying the finished block j - 1 as the parent block and committing
            it (for j = 0 the parent slot is unused: both blocks are roots)."""
            rng, key = jax.random.split(rng)
            prev = jax.lax.dynamic_slice_in_dim(answer, jnp.maximum(start - block, 0), block,
                                                axis=1)
            active = jax.lax.dynamic_slice_in_dim(answer, start, block, axis=1)
            second_root = jnp.where(j == 0, -1, block - 1)
            parents = jnp.concatenate([block_parents(block),
                                       jnp.full((block,), SAME_BLOCK).at[0].set(second_root)])
            logits, _, pending = model.extend(params, cache, jnp.concatenate([prev, active], 1),
                                              jnp.broadcast_to(parents, (b, 2 * block)))
            cache = model.commit(cache, pending, jnp.broadcast_to(jnp.arange(block), (b, block)),
                                 jnp.full((b,), jnp.where(j == 0, 0, block)))
            tokens, chosen = _choose(how, sampler, key, logits[:, block:], masked_now(answer),
                                     jnp.full((b,), quota(0)))
            answer, unmasked_at = _unmask(answer, unmasked_at, forwards + 1, tokens, chosen,
                                          start, eos_id, pad_id, mask_id)
            return 1, answer, unmasked_at, cache, forwards + 1, rng

        def run_block(state):
            carry = first_step(*state) if use_cache else (0, *state)
            bound = block if how.threshold else steps_per_block
            carry = jax.lax.while_loop(
                lambda c: (c[0] < bound) & masked_now(c[1]).any(), step, carry)
            return carry[1:]

        # Once every row's answer is decided (EOS), later blocks cost nothing.
        return jax.lax.cond(masked_now(answer).any(), run_block, lambda st: st, state)

    forwards, cache = jnp.int32(0), None
    if use_cache:
        in_prompt = positions[:, :p_width] < lengths[:, None]
        ids = block_ids(positions[:, :p_width], lengths, block, model_block, in_prompt)
        _, _, cache = model.prefill(params, prompt, lengths, width, mask="block_causal",
                                    block_ids=ids)
        forwards = forwards + 1
    # unmasked_at holds forwards counts (0: masked); a step's number leaves out the prefill
    answer, unmasked_at, _, forwards, _ = jax.lax.fori_loop(
        0, span // block, block_loop, (answer, jnp.zeros_like(answer), cache, forwards, rng))
    return answer, forwards, jnp.maximum(unmasked_at - int(use_cache), 0)
