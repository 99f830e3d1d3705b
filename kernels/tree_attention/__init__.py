from .api import BACKENDS, tree_attention

__all__ = ["BACKENDS", "tree_attention"]
