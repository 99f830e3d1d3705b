"""Meshes and shardings: a device mesh built from `MeshConfig`, and NamedShardings for pytrees
whose leaves carry logical axis names (`model.logical_axes()`), mapped to mesh axes by the
config's rules. A dimension that does not divide over its mesh axes is an error naming the
parameter, the dimension and the axis, raised before anything is placed."""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zoo.config import MESH_AXES, MeshConfig


def mesh_shape(config: MeshConfig, n_devices: int) -> tuple[int, ...]:
    """The (data, fsdp, tensor) sizes, -1 resolved to the remaining devices."""
    sizes = [getattr(config, axis) for axis in MESH_AXES]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: {n_devices} devices do not "
                             f"divide by the fixed sizes' product {known}")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"there are {n_devices}")
    return tuple(sizes)


def make_mesh(config: MeshConfig, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(config, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def rules(config: MeshConfig) -> tuple[tuple[str, str | tuple[str, ...]], ...]:
    """`MeshConfig.rules` as flax logical-axis rules."""
    out = []
    for rule in config.rules.split():
        name, _, axes = rule.partition("=")
        axes = tuple(a for a in axes.split("+") if a)
        out.append((name, axes[0] if len(axes) == 1 else axes))
    return tuple(out)


def _axis_size(mesh: Mesh, axes) -> int:
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def shardings(tree, logical_axes, mesh: Mesh, config: MeshConfig):
    """NamedShardings for `tree` (arrays or shapes) from its logical axes; checks divisibility."""
    specs = nn.logical_to_mesh_sharding(logical_axes, mesh, rules(config))
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    flat_axes = jax.tree_util.tree_flatten_with_path(logical_axes, is_leaf=is_spec)[0]
    flat_tree = jax.tree.leaves(tree)
    flat_shardings = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, names), leaf, sharding in zip(flat_axes, flat_tree, flat_shardings):
        for dim, (size, name, axes) in enumerate(zip(leaf.shape, names, sharding.spec)):
            if size % _axis_size(mesh, axes):
                raise ValueError(
                    f"{jax.tree_util.keystr(path)} dimension {dim} ({name}, size {size}) does not "
                    f"divide over mesh axis {axes} of size {_axis_size(mesh, axes)}")
    return specs
