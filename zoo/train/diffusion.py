"""Masked diffusion language models (MDLM / LLaDA): the training objective.

Forward process: every token is replaced by MASK independently with probability t, t ~ U(t_min,
1] per sequence. The model sees the noised sequence and predicts the clean token at every masked
position; the loss is the masked cross-entropy weighted by 1/t (the linear schedule's ELBO
weight), summed and divided by the number of tokens. Its expectation over t and the masks is the
negative ELBO, so validation reports it in bits per byte, comparable to an AR model's.

Two attention layouts (`objective.block_size`):
  0  one bidirectional window (MDLM, LLaDA): sampling must re-run the whole window each step, or
     reuse a prefix cache as Fast-dLLM's approximation;
  s  block diffusion (BD3-LM): blocks of s, each noised with its own t_b and denoised while seeing
     the clean blocks before it. One forward trains all blocks: the model reads the noised
     sequence and the clean one (2L tokens, same positions) under the `block_diffusion` mask, and
     the loss is read on the noised half. Clean blocks only ever attend block-causally, so at
     sampling time the committed blocks' KV cache is exact.

Randomness comes from the train state's step (and, in evaluation, the batch's content), so a
resumed run draws exactly the noise an uninterrupted one would.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from zoo.data.tokenizer import MASK_ID, PAD_ID
from zoo.train.steps import (TrainState, apply_gradients, jit_eval_step, jit_train_step,
                             real_tokens, text_bytes)


def noise(rng, x0, t_min: float, block_size: int = 0, pad_id: int | None = PAD_ID,
          mask_id: int = MASK_ID):
    """(x_t, masked bool[B, L], t per token float32[B, L]): `mask_id` where masked. t is drawn
    per sequence, or per block of `block_size` when > 0; PAD tokens are never masked."""
    b, length = x0.shape
    t_key, mask_key = jax.random.split(rng)
    n_t = length // block_size if block_size else 1
    t = jax.random.uniform(t_key, (b, n_t), minval=t_min, maxval=1.0)
    t_tok = jnp.repeat(t, length // n_t, axis=1)
    masked = (jax.random.uniform(mask_key, (b, length)) < t_tok) & real_tokens(x0, pad_id)
    return jnp.where(masked, mask_id, x0), masked, t_tok


def weighted_losses(logits, x0, masked, t_tok):
    """float32[B, L]: cross-entropy / t at masked positions, 0 elsewhere (no gradient there)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, x0)
    return jnp.where(masked, ce / t_tok, 0.0)


def denoiser_logits(model, params, xt, x0, block_size: int):
    """The model's logits for the clean tokens at every position of x_t, [B, L, V]."""
    if block_size == 0:
        return model.forward(params, xt, mask="bidirectional")[0]
    both = jnp.concatenate([xt, x0], axis=1)  # noised half, then clean half
    logits, _ = model.forward(params, both, mask="block_diffusion", block_size=block_size)
    return logits[:, : xt.shape[1]]


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionObjective:
    """The MDLM loss on a (bidirectional or block) transformer; same interface as LMObjective."""

    model: Any
    byte_lengths: Any  # int32[vocab]: bytes of text per id, for bits per byte (`text_bytes`)
    block_size: int = 0  # 0: one bidirectional window; s: block diffusion with blocks of s
    t_min: float = 1e-3
    seed: int = 0
    pad_id: int | None = PAD_ID  # the tokenizer's PAD (never masked, no loss); None: none is
    mask_id: int = MASK_ID  # the tokenizer's [MASK]

    def init(self, rng):
        return self.model.init(rng)

    def logical_axes(self):
        return self.model.logical_axes()

    def losses(self, params, batch, rng):
        """(weighted losses [B, L], real-token mask [B, L]) for the clean windows `inputs`."""
        x0 = batch["inputs"]
        xt, masked, t_tok = noise(rng, x0, self.t_min, self.block_size, self.pad_id,
                                  self.mask_id)
        logits = denoiser_logits(self.model, params, xt, x0, self.block_size)
        return weighted_losses(logits, x0, masked, t_tok), real_tokens(x0, self.pad_id)

    def make_train_step(self, tx, schedule, shardings=None):
        def loss_fn(params, batch, rng):
            losses, real = self.losses(params, batch, rng)
            return jnp.sum(losses) / jnp.maximum(real.sum(), 1)

        def train_step(state: TrainState, batch):
            rng = jax.random.fold_in(jax.random.key(self.seed), state.step)
            loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
            return apply_gradients(state, loss, grads, tx, schedule)

        return jit_train_step(train_step, shardings)

    def make_eval_step(self, shardings=None):
        def eval_step(params, batch):
            # Fixed noise per batch (a checksum of its tokens): validation is deterministic.
            x0 = batch["inputs"]
            checksum = jnp.sum(x0 * (jnp.arange(x0.size) % 9973).reshape(x0.shape))
            rng = jax.random.fold_in(jax.random.key(self.seed + 1), checksum)
            losses, real = self.losses(params, batch, rng)
            return {"nats": jnp.sum(losses), "targets": real.sum(),
                    "bytes": text_bytes(x0, self.byte_lengths)}  # PAD: 0 bytes

        return jit_eval_step(eval_step, shardings)

    def summarize(self, totals: dict) -> dict:
        """The diffusion ELBO per token and in bits per byte (an upper bound on the NLL)."""
        return {"val_loss": float(totals["nats"] / max(totals["targets"], 1)),
                "val_bits_per_byte": float(totals["nats"] / math.log(2) / max(totals["bytes"], 1))}
