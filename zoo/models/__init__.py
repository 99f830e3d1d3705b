"""Model families. Each exposes the decoding protocol of `zoo.models.protocol`."""

from zoo.config import ModelConfig
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


__all__ = ["DecodingModel", "MambaLM", "TransformerLM", "build_model"]
