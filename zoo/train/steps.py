"""The jitted train and eval steps. The train state is donated, so it is updated in place.

On a mesh the steps are jitted with explicit shardings (`StepShardings`): the state stays where
`Layout` puts it from step to step, batches arrive split over the batch axes, metrics come back
replicated. Without one, jit places everything on the default device.
"""

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from zoo.data.tokenizer import PAD_ID


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: dict
    opt_state: optax.OptState


def init_state(model, tx, rng) -> TrainState:
    params = model.init(rng)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


@dataclasses.dataclass(frozen=True)
class StepShardings:
    """NamedShardings of the train state, of a batch and of replicated results."""

    state: Any  # a TrainState of shardings
    batch: Any  # one sharding for every array of a batch
    replicated: Any

    @classmethod
    def for_state(cls, abstract_state: TrainState, logical_axes, tx, layout) -> "StepShardings":
        """Params by their logical axes; optimizer moments like the params they belong to;
        scalars (step, counts) replicated. Raises naming any parameter that does not divide."""
        params = layout.shardings(abstract_state.params, logical_axes)
        opt_state = optax.tree_map_params(
            tx, lambda _, sharding: sharding, abstract_state.opt_state, params,
            transform_non_params=lambda _: layout.replicated)
        state = TrainState(layout.replicated, params, opt_state)
        return cls(state, layout.sharding(("batch", None)), layout.replicated)

    def jit_train_step(self, fn, *extra_in):
        """jit `fn(state, batch, *extra) -> (state, metrics)`, donating the state."""
        return jax.jit(fn, donate_argnums=0, in_shardings=(self.state, self.batch, *extra_in),
                       out_shardings=(self.state, self.replicated))

    def jit_eval_step(self, fn, *extra_in):
        """jit `fn(params, batch, *extra) -> sums`."""
        return jax.jit(fn, in_shardings=(self.state.params, self.batch, *extra_in),
                       out_shardings=self.replicated)


def jit_train_step(fn, shardings: StepShardings | None, *extra_in):
    if shardings is None:
        return jax.jit(fn, donate_argnums=0)
    return shardings.jit_train_step(fn, *extra_in)


def jit_eval_step(fn, shardings: StepShardings | None, *extra_in):
    return jax.jit(fn) if shardings is None else shardings.jit_eval_step(fn, *extra_in)


def real_tokens(ids, pad_id: int | None):
    """bool mask of the ids that count in a loss: all but PAD (all, when there is no PAD)."""
    return jnp.ones(ids.shape, bool) if pad_id is None else ids != pad_id


def text_bytes(ids, byte_lengths):
    """The bytes of text `ids` stand for: the sum of `byte_lengths[id]` (int32[vocab], see
    `zoo.data.hf_tokenizer.token_byte_lengths`; zoo's bytes: 1 below 256, 0 for specials)."""
    return jnp.sum(jnp.take(jnp.asarray(byte_lengths), ids))


def token_losses(model, params, batch, block_size: int = 1, pad_id: int | None = PAD_ID):
    """Per-target cross-entropy (nats, float32) and the mask of real (non-PAD) targets; with
    `block_size` > 1 under a block-causal mask (next-block prediction)."""
    mask = dict(mask="block_causal", block_size=block_size) if block_size > 1 else {}
    logits, _ = model.forward(params, batch["inputs"], **mask)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return losses, real_tokens(batch["targets"], pad_id)


def mean_token_loss(model, params, batch, block_size: int = 1, pad_id: int | None = PAD_ID):
    """The training loss: mean cross-entropy over the real targets."""
    losses, mask = token_losses(model, params, batch, block_size, pad_id)
    return jnp.sum(losses * mask) / jnp.maximum(mask.sum(), 1)


def make_train_step(model, tx, schedule, shardings: StepShardings | None = None,
                    block_size: int = 1, pad_id: int | None = PAD_ID):
    def train_step(state: TrainState, batch):
        loss, grads = jax.value_and_grad(
            lambda params: mean_token_loss(model, params, batch, block_size, pad_id))(
                state.params)
        return apply_gradients(state, loss, grads, tx, schedule)

    return jit_train_step(train_step, shardings)


def apply_gradients(state: TrainState, loss, grads, tx, schedule):
    """One optimizer update -> (next state, the metrics the loop logs and checks for NaN)."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "params_finite": jnp.isfinite(optax.tree.norm(params)),
               "learning_rate": schedule(state.step)}
    return TrainState(state.step + 1, params, opt_state), metrics


def make_eval_step(model, byte_lengths, shardings: StepShardings | None = None,
                   block_size: int = 1, pad_id: int | None = PAD_ID):
    """The eval step's sums: nats and count of the real targets, and the bytes of text of all
    targets (`text_bytes` by `byte_lengths`)."""
    def eval_step(params, batch):
        losses, mask = token_losses(model, params, batch, block_size, pad_id)
        return {"nats": jnp.sum(losses * mask), "targets": mask.sum(),
                "bytes": text_bytes(batch["targets"], byte_lengths)}

    return jit_eval_step(eval_step, shardings)


def summarize_eval(totals: dict) -> dict:
    """Mean loss per target and bits per byte (all nats, separators included, over text bytes)."""
    return {"val_loss": float(totals["nats"] / max(totals["targets"], 1)),
            "val_bits_per_byte": float(totals["nats"] / math.log(2) / max(totals["bytes"], 1))}


@dataclasses.dataclass(frozen=True, eq=False)
class LMObjective:
    """What an LM run trains: the model's own cross-entropy on the data, predicting the next
    token (block_size 1, causal) or the next block (next-block prediction: block-causal
    attention over blocks of `block_size`; the data shift targets by one block, so position k
    of block b is trained on token k of block b + 1). Either way the loss is the mean over the
    predicted (non-PAD) tokens.

    The loop trains any objective with this shape: `init(rng)` -> the trained params,
    `logical_axes()` of those params, `make_train_step(tx, schedule, shardings)` and
    `make_eval_step(shardings)` as above (the eval step returns sums over a batch), and
    `summarize(totals)` -> validation metrics. `zoo.train.heads` has the other
    one: draft heads on a frozen target.
    """

    model: Any  # a DecodingModel
    byte_lengths: Any  # int32[vocab]: bytes of text per id, for bits per byte (`text_bytes`)
    block_size: int = 1  # 1: next token; > 1: next block
    pad_id: int | None = PAD_ID  # the tokenizer's PAD, left out of the loss; None: none is

    def init(self, rng):
        return self.model.init(rng)

    def logical_axes(self):
        return self.model.logical_axes()

    def make_train_step(self, tx, schedule, shardings=None):
        return make_train_step(self.model, tx, schedule, shardings, self.block_size,
                               self.pad_id)

    def make_eval_step(self, shardings=None):
        return make_eval_step(self.model, self.byte_lengths, shardings, self.block_size,
                              self.pad_id)

    def summarize(self, totals: dict) -> dict:
        return summarize_eval(totals)
