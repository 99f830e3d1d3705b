"""AdamW with linear warmup, cosine decay and global-norm clipping (optax)."""

import jax
import optax

from zoo.config import TrainConfig


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
        decay_steps=config.steps, end_value=config.learning_rate * config.end_lr_ratio)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Weight decay applies to matrices only, not to norm scales."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                    weight_decay=config.weight_decay,
                    mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)))
