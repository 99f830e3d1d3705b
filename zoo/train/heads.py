"""Training draft heads on a frozen target by self-distillation (Medusa-2 / Hydra++ style).

The labels are the target's own greedy predictions, not the data: a head is only useful when it
agrees with what the target will emit, and the target's argmax is that. On a batch of corpus
text the frozen target gives, at every position j, its hidden state h_j and its greedy next token
y_{j+1} = argmax logits_j. Head k at position t learns y_{t+k+1} from h_t (Hydra heads also see
the teacher tokens y_{t+1..t+k} as their drafted path; Falcon's blocks see them up to their
boundary). Positions whose label falls past the window are masked. Only the heads are trained:
the target's params are an argument of the jitted step, never part of the train state, so its
gradients are never taken and nothing of it is saved.

Falcon trains with glancing (Coupled Sequential Glancing Distillation, after GLAT): a first
forward without gradients drafts every block; where a query got its token wrong, some of those
true tokens (a `GLANCE_RATIO` share of the misses, per position) are shown to the next query of
the block as its input, and the loss is taken on a second forward. A shown token is the label of
the query before it, which sees it through the block's bidirectional attention, so that query's
loss is dropped. As the first pass improves, fewer tokens are shown (GLAT's curriculum), and the
coupled block moves from drafting a token given some of its neighbours to drafting them all at
once, as it must when drafting.

`HeadsObjective` plugs into `zoo.train.loop` exactly like the plain LM objective, so heads get
the loop's checkpoints, resume, NaN stop and SIGTERM handling for free.
"""

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zoo.config import ConfigError, ExperimentConfig, first_difference
from zoo.data.hf_tokenizer import tokenizer_identity
from zoo.data.tokenizer import Tokenizer
from zoo.models import build_model
from zoo.models.heads import DraftHeads, build_heads
from zoo.runs import load_run, tokenizer_for_run
from zoo.train.steps import TrainState, apply_gradients, jit_eval_step, jit_train_step


def teacher(target, target_params, inputs):
    """The frozen target's (hidden [B, T, E], greedy next tokens int32[B, T])."""
    logits, hidden = target.forward(target_params, inputs)
    return jax.lax.stop_gradient(hidden), jnp.argmax(logits, -1).astype(jnp.int32)


GLANCE_RATIO = 0.5  # Falcon: share of a position's missed tokens shown in the second forward


def _targets(greedy, k: int):
    """(labels, path, mask), each [B, T, K]: head k's label y_{t+k+1}, the teacher path
    y_{t+1..t+K} (Hydra's and Falcon's inputs) and whether the label lies inside the window."""
    t = greedy.shape[1]
    ahead = jnp.arange(t)[:, None] + jnp.arange(k)[None, :]  # [T, K]: t + k - 1 for head k
    labels = jnp.take(greedy, jnp.minimum(ahead + 1, t - 1), axis=1)  # y_{t+k+1} = greedy[t+k]
    path = jnp.take(greedy, jnp.minimum(ahead, t - 1), axis=1)  # y_{t+1..t+K}
    return labels, path, jnp.broadcast_to(ahead + 1 < t, labels.shape)


def head_losses(heads: DraftHeads, params, target_params, hidden, greedy, glanced=None):
    """Per (row, position, head) cross-entropy and top-1 agreement with the target, [B, T, K],
    and the mask of positions whose label lies inside the window. `glanced` (Falcon): see
    `DraftHeads.logits`."""
    labels, path, mask = _targets(greedy, heads.num_heads)
    logits = heads.logits(params, target_params, hidden, path,  # [B, T, K, V]
                          **({} if glanced is None else {"glanced": glanced}))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return losses, jnp.argmax(logits, -1) == labels, mask


def glance(rng, missed, ratio: float = GLANCE_RATIO):
    """bool[..., K]: which of the `missed` entries to show. Per row (last axis), n of its m
    missed entries chosen uniformly, n = floor(ratio * m + u) with u ~ U[0, 1) (stochastic
    rounding: n is ratio * m on average and floor or ceil of it always)."""
    count_key, pick_key = jax.random.split(rng)
    m = missed.sum(-1, keepdims=True)
    n = jnp.floor(ratio * m + jax.random.uniform(count_key, m.shape)).astype(jnp.int32)
    score = jnp.where(missed, jax.random.uniform(pick_key, missed.shape), -1.0)
    rank = jnp.argsort(jnp.argsort(-score, axis=-1), axis=-1)  # 0: the highest score
    return missed & (rank < n)


def glancing_losses(heads: DraftHeads, params, target_params, hidden, greedy, rng,
                    ratio: float = GLANCE_RATIO):
    """Falcon's training losses and mask, [B, T, K]: a first forward (no gradients) drafts every
    block; `glance` picks among the queries that missed and have a next query in their block,
    whose input becomes the missed true token; the second forward's losses, with the shown
    tokens' own queries masked (they can read their label from the next query)."""
    k = heads.num_heads
    _, agree, mask = head_losses(heads, jax.lax.stop_gradient(params), target_params, hidden,
                                 greedy)
    has_next = (np.arange(1, k + 1) % heads.block_size != 0) & (np.arange(1, k + 1) < k)
    shown = glance(rng, ~agree & mask & has_next, ratio)
    glanced = jnp.pad(shown[..., :-1], [(0, 0)] * (shown.ndim - 1) + [(1, 0)])  # to query q+1
    losses, _, _ = head_losses(heads, params, target_params, hidden, greedy, glanced)
    return losses, mask & ~shown


def _bind_last(step, target_params):
    """`step(a, b, target_params)` as `step(a, b)`, the target's params passed positionally
    (jit matches explicit in_shardings to positional arguments only)."""
    return lambda a, b: step(a, b, target_params)


@dataclasses.dataclass(frozen=True, eq=False)
class HeadsObjective:
    """Draft heads on a frozen target: the loop's objective for a `heads.kind` != none run."""

    heads: DraftHeads
    target: Any  # the target's DecodingModel
    target_params: Any
    seed: int = 0  # Falcon's glancing draws from key(seed) folded with the step

    @classmethod
    def from_config(cls, config: ExperimentConfig, tok: Tokenizer) -> "HeadsObjective":
        """Load the target run named by `heads.target_run`; it must exist, hold a checkpoint,
        have the model config the experiment names (the heads are built for its shapes), and
        read text with `tok`, the tokenizer of the heads' data."""
        run = pathlib.Path(config.heads.target_run)
        try:
            target_config, target_params = load_run(run)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"heads.target_run={str(run)!r}: {e}; train the target "
                                    "first (zoo-train --config <its experiment>)") from None
        if target_config.heads.kind != "none":
            raise ConfigError(f"heads.target_run={str(run)!r} is itself a draft-heads run; name "
                             "the target LM's run directory")
        diff = first_difference(config.model, target_config.model)
        if diff:
            raise ConfigError(f"heads.target_run={str(run)!r} was trained with "
                             f"model.{diff}={getattr(target_config.model, diff)!r} but this "
                             f"config has model.{diff}={getattr(config.model, diff)!r}; the "
                             "heads need the target's model")
        if tokenizer_identity(tokenizer_for_run(run, target_config)) != tokenizer_identity(tok):
            raise ConfigError(f"heads.target_run={str(run)!r} reads text with another tokenizer "
                              f"than data.tokenizer={config.data.tokenizer!r}; name the "
                              "target's (its run directory holds it)")
        return cls(build_heads(config.heads, config.model), build_model(config.model),
                   target_params, config.train.seed)

    def init(self, rng):
        return self.heads.init(rng, self.target_params)

    def logical_axes(self):
        return self.heads.logical_axes()

    def _target_params(self, shardings):
        """The frozen target's params, replicated over the mesh when there is one."""
        return (self.target_params if shardings is None
                else jax.device_put(self.target_params, shardings.replicated))

    def make_train_step(self, tx, schedule, shardings=None):
        heads, target, seed = self.heads, self.target, self.seed

        def loss_fn(params, target_params, hidden, greedy, rng):
            if heads.kind == "falcon":
                losses, mask = glancing_losses(heads, params, target_params, hidden, greedy, rng)
            else:
                losses, _, mask = head_losses(heads, params, target_params, hidden, greedy)
            per_head = jnp.sum(losses * mask, (0, 1)) / jnp.maximum(mask.sum((0, 1)), 1)
            return per_head.mean()

        def train_step(state: TrainState, batch, target_params):
            hidden, greedy = teacher(target, target_params, batch["inputs"])
            rng = jax.random.fold_in(jax.random.key(seed), state.step)
            loss, grads = jax.value_and_grad(loss_fn)(state.params, target_params, hidden, greedy,
                                                      rng)
            return apply_gradients(state, loss, grads, tx, schedule)

        # The target's params are a jit argument (not a closed-over constant baked into the
        # program), passed on every call.
        replicated = () if shardings is None else (shardings.replicated,)
        return _bind_last(jit_train_step(train_step, shardings, *replicated),
                          self._target_params(shardings))

    def make_eval_step(self, shardings=None):
        heads, target = self.heads, self.target

        def eval_step(params, batch, target_params):
            hidden, greedy = teacher(target, target_params, batch["inputs"])
            losses, agree, mask = head_losses(heads, params, target_params, hidden, greedy)
            return {"nats": jnp.sum(losses * mask, (0, 1)), "agree": jnp.sum(agree & mask, (0, 1)),
                    "count": jnp.sum(mask, (0, 1))}

        replicated = () if shardings is None else (shardings.replicated,)
        return _bind_last(jit_eval_step(eval_step, shardings, *replicated),
                          self._target_params(shardings))

    def summarize(self, totals: dict) -> dict:
        """Mean loss over heads, and each head's top-1 agreement with the target's greedy token
        (the chance that head alone would be accepted given its parent was)."""
        count = totals["count"].clip(min=1)
        metrics = {"val_loss": float((totals["nats"] / count).mean())}
        for k, agree in enumerate(totals["agree"] / count, start=1):
            metrics[f"val_head{k}_top1"] = float(agree)
        return metrics


def load_heads_run(run_dir, step: int | None = None):
    """(config, heads, head params, target model, target params) of a draft-heads run: what a
    `MedusaDrafter` / `HydraDrafter` / `FalconDrafter` and the engine need."""
    config, params = load_run(run_dir, step)
    if config.heads.kind == "none":
        raise ValueError(f"{run_dir} is not a draft-heads run (heads.kind is 'none')")
    objective = HeadsObjective.from_config(config, tokenizer_for_run(run_dir, config))
    return config, objective.heads, params, objective.target, objective.target_params
