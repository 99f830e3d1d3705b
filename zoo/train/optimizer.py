"""AdamW with linear warmup, cosine decay and global-norm clipping (optax)."""

import jax
import optax

from zoo.config import TrainConfig
from zoo.models.stacking import LAYERS


def schedule_settings(config: TrainConfig) -> dict:
    """The train settings `learning_rate_schedule` reads: a resumed run that changed one would
    jump to another learning-rate curve."""
    return {key: getattr(config, key)
            for key in ("steps", "learning_rate", "warmup_steps", "end_lr_ratio")}


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
        decay_steps=config.steps, end_value=config.learning_rate * config.end_lr_ratio)


def decays(path, param) -> bool:
    """Weight decay applies to matrices only, not to vectors (norm scales, Mamba2's per-head
    A_log, D, dt_bias, its conv bias); the stacked layer axis of scanned params (under
    `LAYERS`, model.scan_layers) is not a matrix dimension."""
    stacked = any(getattr(key, "key", None) == LAYERS for key in path)
    return param.ndim - stacked >= 2


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                    weight_decay=config.weight_decay,
                    mask=lambda params: jax.tree_util.tree_map_with_path(decays, params)))
