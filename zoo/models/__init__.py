"""Model families. Each exposes the decoding protocol of `zoo.models.protocol`."""

import dataclasses

import jax
import jax.numpy as jnp

from zoo.config import DTYPES, ModelConfig
from zoo.models.protocol import DecodingModel
from zoo.models.mamba import MambaLM
from zoo.models.transformer import TransformerLM
from zoo.parallel import Layout


def build_model(config: ModelConfig, kernel_backend: str = "auto",
                layout: Layout | None = None) -> DecodingModel:
    """The model object for a config's family; with a `layout`, its activations and caches are
    sharded over that mesh."""
    families = {"transformer": TransformerLM, "mamba2": MambaLM, "hybrid": MambaLM}
    if config.family not in families:
        raise ValueError(f"unknown model family {config.family!r}; choose one of {list(families)}")
    return families[config.family](config, kernel_backend, layout)


def in_dtype(config: ModelConfig, params, dtype: str):
    """(config, params) to run a trained model in another dtype: weights, activations and caches
    (e.g. float32 training, bfloat16 serving, as checkpoints ship and as AMX / TPU MXUs run
    fastest). Floating params are cast; integer ones are kept."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if config.dtype == dtype and config.param_dtype == dtype:
        return config, params
    return dataclasses.replace(config, dtype=dtype, param_dtype=dtype), cast_params(params, dtype)


def cast_params(params, dtype: str):
    """`params` with every floating leaf in `dtype` (integer leaves kept)."""
    return jax.tree.map(
        lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


__all__ = ["DecodingModel", "MambaLM", "TransformerLM", "build_model", "cast_params", "in_dtype"]
