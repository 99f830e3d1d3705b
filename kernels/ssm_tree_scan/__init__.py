from .api import BACKENDS, node_state, path_state, ssm_tree_scan

__all__ = ["BACKENDS", "node_state", "path_state", "ssm_tree_scan"]
