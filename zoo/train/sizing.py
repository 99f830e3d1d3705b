"""What a training config needs on its mesh, found without data or a single training step:
`zoo-train --dry-run`.

The parameter and optimizer-state bytes per device follow from their shardings (the largest
shard any device holds); activations and scratch come from XLA's memory analysis of the
compiled train step, which is per device for a sharded program.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from zoo import config as config_lib
from zoo.parallel import Layout
from zoo.train.loop import build_objective, sharded_setup
from zoo.train.optimizer import learning_rate_schedule, make_optimizer


@dataclasses.dataclass
class Sizing:
    mesh: dict[str, int]
    parameters: int
    params_bytes: int  # per device
    optimizer_bytes: int  # per device
    batch_rows: int  # per device
    temp_bytes: int | None  # per device: activations and scratch of the compiled step
    compiled: bool

    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.optimizer_bytes + (self.temp_bytes or 0)


def _per_device_bytes(abstract, shardings) -> int:
    return sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
               for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))


def size(config: config_lib.ExperimentConfig, compile_step: bool = True) -> Sizing:
    """Sizes of `config` on the mesh of `config.mesh` over this process's devices. Raises
    `ShardingError` naming a dimension and mesh axis that do not divide."""
    layout = Layout.from_config(config.mesh)
    objective = build_objective(config, layout)
    tx = make_optimizer(config.train)
    shardings, make_state = sharded_setup(config, objective, tx, layout)
    abstract = jax.eval_shape(make_state)
    dc = config.data
    batch = {k: jax.ShapeDtypeStruct((dc.batch_size, dc.seq_len), jnp.int32,
                                     sharding=shardings.batch)
             for k in ("inputs", "targets")}
    temp = None
    if compile_step:
        step = objective.make_train_step(tx, learning_rate_schedule(config.train), shardings)
        state_in = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract, shardings.state)
        analysis = step.lower(state_in, batch).compile().memory_analysis()
        temp = None if analysis is None else int(analysis.temp_size_in_bytes)
    return Sizing(
        mesh=dict(layout.mesh.shape),
        parameters=int(sum(np.prod(a.shape) for a in jax.tree.leaves(abstract.params))),
        params_bytes=_per_device_bytes(abstract.params, shardings.state.params),
        optimizer_bytes=_per_device_bytes(abstract.opt_state, shardings.state.opt_state),
        batch_rows=shardings.batch.shard_shape((dc.batch_size, dc.seq_len))[0],
        temp_bytes=temp, compiled=compile_step)


def report(config: config_lib.ExperimentConfig, sizing: Sizing) -> str:
    mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
    mesh = " x ".join(f"{axis}={n}" for axis, n in sizing.mesh.items())
    temp = ("n/a (no memory analysis on this backend)" if sizing.temp_bytes is None
            else mib(sizing.temp_bytes))
    return "\n".join([
        f"{config.name}: {config.model.family}, {sizing.parameters:,} parameters, "
        f"mesh {mesh} ({math.prod(sizing.mesh.values())} devices)",
        f"per device: batch rows {sizing.batch_rows} of {config.data.batch_size} x "
        f"{config.data.seq_len} tokens",
        f"  parameters        {mib(sizing.params_bytes)}",
        f"  optimizer state   {mib(sizing.optimizer_bytes)}",
        f"  activations+temp  {temp}   (compiled train step)",
        f"  total             {mib(sizing.total_bytes)}",
    ])
