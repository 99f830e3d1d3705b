"""Meshes and shardings: a device mesh built from `MeshConfig`, and a `Layout` (mesh + logical-axis
rules) that turns the logical axis names carried by parameters (`model.logical_axes()`),
activations, batches and caches into NamedShardings.

Parameters must divide over their mesh axes: a dimension that does not is an error naming the
parameter, the dimension and the axis, raised before anything is placed. Activations and caches
are only constrained, so a size that does not divide (a decoding batch of 3 on data=8) is
replicated along that axis instead.
"""

import dataclasses
import math
import os

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from zoo.config import MESH_AXES, MeshConfig


class ShardingError(ValueError):
    """The devices or the config's sizes do not fit the mesh."""


def mesh_shape(config: MeshConfig, n_devices: int) -> tuple[int, ...]:
    """The (data, fsdp, tensor) sizes, -1 resolved to the remaining devices."""
    sizes = [getattr(config, axis) for axis in MESH_AXES]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ShardingError(f"mesh {dict(zip(MESH_AXES, sizes))}: {n_devices} devices do "
                                f"not divide by the fixed sizes' product {known}")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ShardingError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                            f"devices, there are {n_devices}")
    return tuple(sizes)


def dcn_shape(config: MeshConfig) -> tuple[int, ...]:
    """The (data, fsdp, tensor) sizes across slices."""
    return tuple(getattr(config, f"dcn_{axis}") for axis in MESH_AXES)


def make_mesh(config: MeshConfig, devices=None) -> Mesh:
    """Devices laid out by the physical topology, as MaxText does: within a slice
    `create_device_mesh` maps the mesh axes onto the TPU torus (the last axis, tensor, on the
    fastest links; on CPUs it keeps `jax.devices()` order). Several slices (dcn sizes > 1): each
    axis is the within-slice size times the across-slice size, laid out by
    `create_hybrid_device_mesh` so that only the dcn part of an axis crosses slices (when all
    devices report one slice, as CPUs do, each process counts as a slice). Which batch rows a
    process holds follows from the mesh: `jax.make_array_from_process_local_data` places each
    process's rows on its own devices."""
    devices = jax.devices() if devices is None else devices
    shape, slices = _slice_shape(config, len(devices))
    if slices == 1:
        return Mesh(mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True),
                    MESH_AXES)
    grid = mesh_utils.create_hybrid_device_mesh(
        shape, dcn_shape(config), devices,
        process_is_granule=len({getattr(d, "slice_index", 0) for d in devices}) == 1)
    return Mesh(grid, MESH_AXES)


def _slice_shape(config: MeshConfig, n_devices: int) -> tuple[tuple[int, ...], int]:
    """(the mesh sizes within one slice, the number of slices) for `n_devices` devices."""
    slices = math.prod(dcn_shape(config))
    if n_devices % slices:
        raise ShardingError(f"{n_devices} devices do not split into {slices} slices "
                            f"(mesh.dcn_* sizes {dcn_shape(config)})")
    return mesh_shape(config, n_devices // slices), slices


def abstract_mesh(config: MeshConfig, n_devices: int) -> AbstractMesh:
    """The shape of the mesh `make_mesh` builds over `n_devices` devices, with no devices: what
    sizing a pod's run needs (shardings' shard shapes) on a machine that is not the pod."""
    shape, _ = _slice_shape(config, n_devices)
    return AbstractMesh(tuple(s * d for s, d in zip(shape, dcn_shape(config))), MESH_AXES)


def rules(config: MeshConfig) -> tuple[tuple[str, str | tuple[str, ...]], ...]:
    """`MeshConfig.rules` as flax logical-axis rules."""
    out = []
    for rule in config.rules.split():
        name, _, axes = rule.partition("=")
        axes = tuple(a for a in axes.split("+") if a)
        out.append((name, axes[0] if len(axes) == 1 else axes))
    return tuple(out)


def _as_tuple(axes) -> tuple[str, ...]:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every named array dimension lives on `mesh`. Hashable: models carry it as a static
    field, so a jitted function traced for one layout is never reused for another."""

    mesh: Mesh | AbstractMesh
    rules: tuple

    @classmethod
    def from_config(cls, config: MeshConfig, devices=None) -> "Layout":
        return cls(make_mesh(config, devices), rules(config))

    @classmethod
    def abstract(cls, config: MeshConfig, n_devices: int) -> "Layout":
        """The layout of `n_devices` devices that need not exist: its shardings give shard
        shapes (for sizing) but place nothing."""
        return cls(abstract_mesh(config, n_devices), rules(config))

    def axis_size(self, axes) -> int:
        return math.prod(self.mesh.shape[a] for a in _as_tuple(axes))

    def spec(self, names, shape=None) -> PartitionSpec:
        """Mesh axes of logical `names`; with `shape`, axes that do not divide are dropped."""
        spec = nn.logical_to_mesh_axes(tuple(names), self.rules)
        if shape is None:
            return spec
        return PartitionSpec(*(axes if size % self.axis_size(axes) == 0 else None
                               for size, axes in zip(shape, spec)))

    def sharding(self, names, shape=None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(names, shape))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def constrain(self, x, names):
        """Pin activation `x` [dims named `names`] to its sharding inside a jitted function."""
        return jax.lax.with_sharding_constraint(x, self.sharding(names, x.shape))

    def shardings(self, tree, logical_axes):
        """NamedShardings for `tree` (arrays or shapes) from its logical axes; every dimension
        must divide over its mesh axes."""
        is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
        flat_axes, treedef = jax.tree_util.tree_flatten_with_path(logical_axes, is_leaf=is_spec)
        out = []
        for (path, names), leaf in zip(flat_axes, jax.tree.leaves(tree)):
            spec = self.spec(names)
            for dim, (size, name, axes) in enumerate(zip(leaf.shape, names, spec)):
                if size % self.axis_size(axes):
                    raise ShardingError(
                        f"{jax.tree_util.keystr(path)} dimension {dim} ({name}, size {size}) does "
                        f"not divide over mesh axis {axes} of size {self.axis_size(axes)}")
            out.append(NamedSharding(self.mesh, spec))
        return jax.tree.unflatten(treedef, out)


def constrain(layout: Layout | None, x, names):
    """`layout.constrain(x, names)`, or `x` unchanged without a layout (one device)."""
    return x if layout is None else layout.constrain(x, names)


# Environment of a process started by `launch/local_pod.py` (on TPU pods and GPU clusters
# jax.distributed finds its peers by itself).
COORDINATOR_ENV = ("ZOO_COORDINATOR", "ZOO_NUM_PROCESSES", "ZOO_PROCESS_ID")


def initialize_distributed() -> None:
    """Join the other processes of a multi-host run (`jax.distributed.initialize`), before any
    other JAX call. With the ZOO_* variables set, the coordinator is that address and CPU
    collectives run over gloo; otherwise JAX detects the cluster (TPU pod slice, SLURM, ...)."""
    if all(name in os.environ for name in COORDINATOR_ENV):
        address, count, index = (os.environ[name] for name in COORDINATOR_ENV)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(address, num_processes=int(count), process_id=int(index))
    else:
        jax.distributed.initialize()
