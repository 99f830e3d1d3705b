"""Reading a training run directory (config.yaml + orbax checkpoints) for inference, export
and as the frozen target of draft heads: the parameters only, never the optimizer state. Kept
out of the training loop so readers of runs do not import it (nor it them)."""

import pathlib

import jax
from jax.sharding import SingleDeviceSharding

from zoo import config as config_lib
from zoo.checkpoint import Checkpointer
from zoo.models import build_model
from zoo.models.heads import build_heads
from zoo.parallel import Layout


def load_run(run_dir: str | pathlib.Path, step: int | None = None,
             layout: Layout | None = None):
    """(config, params) of a training run directory, from its latest (or given) checkpoint,
    on one device or sharded over `layout`'s mesh, whatever mesh the run was trained on. For a
    draft-heads run the params are the heads' (its target is `config.heads.target_run`)."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a zoo run directory (no config.yaml)")
    config = config_lib.load(run_dir / "config.yaml")
    trained = (build_model(config.model) if config.heads.kind == "none"
               else build_heads(config.heads, config.model))
    abstract = jax.eval_shape(trained.init, jax.random.key(0))
    if layout is None:
        shardings = jax.tree.map(lambda _: SingleDeviceSharding(jax.devices()[0]), abstract)
    else:
        shardings = layout.shardings(abstract, trained.logical_axes())
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
    checkpointer = Checkpointer(run_dir / "checkpoints", async_save=False)
    try:  # the parameters only: the optimizer's moments stay on disk
        params = checkpointer.restore_params(abstract, step)
    finally:
        checkpointer.close()
    return config, params
