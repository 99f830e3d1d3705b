"""The jitted train and eval steps. The train state is donated, so it is updated in place."""

import dataclasses
import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from zoo.data.tokenizer import BYTE_VOCAB, PAD_ID


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: dict
    opt_state: optax.OptState


def init_state(model, tx, rng) -> TrainState:
    params = model.init(rng)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def token_losses(model, params, batch):
    """Per-target cross-entropy (nats, float32) and the mask of real (non-PAD) targets."""
    logits, _ = model.forward(params, batch["inputs"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return losses, batch["targets"] != PAD_ID


def make_train_step(model, tx, schedule):
    def loss_fn(params, batch):
        losses, mask = token_losses(model, params, batch)
        return jnp.sum(losses * mask) / jnp.maximum(mask.sum(), 1)

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state: TrainState, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        return apply_gradients(state, loss, grads, tx, schedule)

    return train_step


def apply_gradients(state: TrainState, loss, grads, tx, schedule):
    """One optimizer update -> (next state, the metrics the loop logs and checks for NaN)."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "params_finite": jnp.isfinite(optax.tree.norm(params)),
               "learning_rate": schedule(state.step)}
    return TrainState(state.step + 1, params, opt_state), metrics


def make_eval_step(model):
    @jax.jit
    def eval_step(params, batch):
        losses, mask = token_losses(model, params, batch)
        return {"nats": jnp.sum(losses * mask), "targets": mask.sum(),
                "bytes": jnp.sum(batch["targets"] < BYTE_VOCAB)}

    return eval_step


def summarize_eval(totals: dict) -> dict:
    """Mean loss per target and bits per byte (all nats, separators included, over text bytes)."""
    return {"val_loss": float(totals["nats"] / max(totals["targets"], 1)),
            "val_bits_per_byte": float(totals["nats"] / math.log(2) / max(totals["bytes"], 1))}


@dataclasses.dataclass(frozen=True)
class LMObjective:
    """What a plain LM run trains: the model's own next-token cross-entropy on the data.

    The loop trains any objective with this shape: `init(rng)` -> the trained params,
    `make_train_step(tx, schedule)` and `make_eval_step()` as above (the eval step returns sums
    over a batch), and `summarize(totals)` -> validation metrics. `zoo.train.heads` has the other
    one: draft heads on a frozen target.
    """

    model: Any  # a DecodingModel

    def init(self, rng):
        return self.model.init(rng)

    def make_train_step(self, tx, schedule):
        return make_train_step(self.model, tx, schedule)

    def make_eval_step(self):
        return make_eval_step(self.model)

    def summarize(self, totals: dict) -> dict:
        return summarize_eval(totals)
