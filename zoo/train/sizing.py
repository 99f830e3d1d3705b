"""What a training config needs on its mesh, found without data or a single training step:
`zoo-train --dry-run`.

The parameter and optimizer-state bytes per device follow from their shardings (the largest
shard any device holds), exactly, on this process's devices or on an abstract mesh of any size
(a 256-chip pod sized on a laptop, in seconds). Activations on real devices come from XLA's
memory analysis of the compiled train step (per device for a sharded program). On an abstract
mesh nothing compiles; they are estimated from the residuals JAX's autodiff saves for the
backward (`saved_residuals`, which honours the remat policy) of one device's share: its batch
rows, on the model with the attention heads and MLP width the tensor axis splits divided by its
size (Megatron-style tensor parallelism) — within a few tens of percent of XLA:CPU's memory
analysis on the configs tested. Mamba2 layers are counted whole, an upper bound when `tensor`
> 1.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.ad_checkpoint import saved_residuals  # jax.ad_checkpoint only exports the printer

from zoo import config as config_lib
from zoo.models import build_model
from zoo.parallel import Layout
from zoo.train.loop import build_objective, sharded_setup
from zoo.train.optimizer import learning_rate_schedule, make_optimizer
from zoo.train.steps import mean_token_loss


@dataclasses.dataclass
class Sizing:
    mesh: dict[str, int]
    parameters: int
    params_bytes: int  # per device
    optimizer_bytes: int  # per device
    batch_rows: int  # per device
    temp_bytes: int | None  # per device: activations and scratch of the step
    compiled: bool  # temp_bytes from the compiled step (else an estimate, or None)

    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.optimizer_bytes + (self.temp_bytes or 0)


def _per_device_bytes(abstract, shardings) -> int:
    return sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
               for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))


def residual_bytes(model_config: config_lib.ModelConfig, rows: int, seq_len: int) -> int:
    """Bytes of the activations the forward of the next-token loss keeps for the backward, for
    `rows` x `seq_len` tokens; with remat, plus one layer period's recomputed activations (the
    backward rebuilds one period at a time)."""
    def kept(model_config):
        model = build_model(model_config)
        params = jax.eval_shape(model.init, jax.random.key(0))
        batch = {k: jax.ShapeDtypeStruct((rows, seq_len), jnp.int32)
                 for k in ("inputs", "targets")}
        residuals = saved_residuals(lambda p, b: mean_token_loss(model, p, b), params, batch)
        return sum(math.prod(r.shape) * r.dtype.itemsize for r, source in residuals
                   if not source.startswith("from the argument"))  # params, tokens: not extra

    total = kept(model_config)
    if model_config.remat != "none":  # one period unrematerialised: 2 periods' minus 1 period's
        period = model_config.scan_period
        periods = lambda k: dataclasses.replace(  # noqa: E731
            model_config, remat="none", scan_layers=False, n_layers=k * len(period),
            layer_pattern=period * k if model_config.layer_pattern else "")
        total += kept(periods(2)) - kept(periods(1))
    return total


def tensor_shard(model_config: config_lib.ModelConfig, tensor: int) -> config_lib.ModelConfig:
    """The model one device computes under tensor parallelism of size `tensor`: heads, KV heads
    and MLP width divided (where they divide; the residual stream stays whole)."""
    c = model_config
    if tensor == 1 or c.n_kv_heads % tensor or c.mlp_dim % tensor:
        return c
    return dataclasses.replace(c, n_heads=c.n_heads // tensor, n_kv_heads=c.n_kv_heads // tensor,
                               head_dim=c.resolved_head_dim, mlp_dim=c.mlp_dim // tensor)


def size(config: config_lib.ExperimentConfig, devices: int | None = None) -> Sizing:
    """Sizes of `config` on the mesh of `config.mesh` over this process's devices, or with
    `devices`, over an abstract mesh of that many devices (nothing compiles; activations are
    estimated by `residual_bytes`). Raises `ShardingError` naming a dimension and mesh axis that
    do not divide."""
    layout = (Layout.from_config(config.mesh) if devices is None
              else Layout.abstract(config.mesh, devices))
    objective = build_objective(config, layout)
    tx = make_optimizer(config.train)
    shardings, make_state = sharded_setup(config, objective, tx, layout)
    abstract = jax.eval_shape(make_state)
    dc = config.data
    batch = {k: jax.ShapeDtypeStruct((dc.batch_size, dc.seq_len), jnp.int32,
                                     sharding=shardings.batch)
             for k in ("inputs", "targets")}
    batch_rows = shardings.batch.shard_shape((dc.batch_size, dc.seq_len))[0]
    temp, compiled = None, devices is None
    if devices is not None and hasattr(objective, "model"):  # not draft heads on a target
        tensor = layout.axis_size(layout.spec(("heads",))[0])  # what splits the heads
        temp = residual_bytes(tensor_shard(config.model, tensor), batch_rows, dc.seq_len)
    if compiled:
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
        batch_rows=batch_rows, temp_bytes=temp, compiled=compiled)


def report(config: config_lib.ExperimentConfig, sizing: Sizing) -> str:
    mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
    mesh = " x ".join(f"{axis}={n}" for axis, n in sizing.mesh.items())
    temp = ("n/a (no memory analysis on this backend)" if sizing.temp_bytes is None
            else mib(sizing.temp_bytes))
    how = ("compiled train step" if sizing.compiled
           else "estimate: residuals saved for the backward")
    return "\n".join([
        f"{config.name}: {config.model.family}, {sizing.parameters:,} parameters, "
        f"mesh {mesh} ({math.prod(sizing.mesh.values())} devices)",
        f"per device: batch rows {sizing.batch_rows} of {config.data.batch_size} x "
        f"{config.data.seq_len} tokens",
        f"  parameters        {mib(sizing.params_bytes)}",
        f"  optimizer state   {mib(sizing.optimizer_bytes)}",
        f"  activations+temp  {temp}   ({how})",
        f"  total             {mib(sizing.total_bytes)}",
    ])
