"""Reading a training run directory (config.yaml + orbax checkpoints) for inference, export
and as the frozen target of draft heads: the parameters only, never the optimizer state. Kept
out of the training loop so readers of runs do not import it (nor it them).

An LM's params come back per layer whatever layout the checkpoint holds (`model.scan_layers`
trains stacked ones, `zoo.models.stacking`): that is what decoding and export read. The layout is
read from the checkpoint itself, not from config.yaml, so a run whose config has since switched
`model.scan_layers` still loads.

A run's text goes through `tokenizer_for_run`: its tokenizer.json when it has one, else bytes.
"""

import dataclasses
import pathlib

import jax
from jax.sharding import SingleDeviceSharding

from zoo import config as config_lib
from zoo.checkpoint import Checkpointer
from zoo.data.hf_tokenizer import load_tokenizer
from zoo.models import build_model
from zoo.models.heads import build_heads
from zoo.models.stacking import LAYERS, unstack_layers
from zoo.parallel import Layout


def _shardings(trained, layout: Layout | None):
    """Where each of `trained`'s params goes: device 0, or its shards over `layout`'s mesh."""
    abstract = jax.eval_shape(trained.init, jax.random.key(0))
    if layout is None:
        return abstract, jax.tree.map(lambda _: SingleDeviceSharding(jax.devices()[0]), abstract)
    return abstract, layout.shardings(abstract, trained.logical_axes())


def _run_config(run_dir: pathlib.Path):
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a zoo run directory (no config.yaml)")
    return config_lib.load(run_dir / "config.yaml")


def load_run(run_dir: str | pathlib.Path, step: int | None = None,
             layout: Layout | None = None):
    """(config, params) of a training run directory, from its latest (or given) checkpoint,
    on one device or sharded over `layout`'s mesh, whatever mesh the run was trained on. For a
    draft-heads run the params are the heads' (its target is `config.heads.target_run`); an
    LM's are per layer (module docstring)."""
    run_dir = pathlib.Path(run_dir)
    config = _run_config(run_dir)
    checkpointer = Checkpointer(run_dir / "checkpoints", async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else step
        stacked = (config.heads.kind == "none" and step is not None
                   and checkpointer.params_stacked(step))
        saved = dataclasses.replace(config.model, scan_layers=stacked)
        trained = (build_model(saved) if config.heads.kind == "none"
                   else build_heads(config.heads, config.model))
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                *_shardings(trained, layout))
        # the parameters only: the optimizer's moments stay on disk
        params = checkpointer.restore_params(abstract, step)
    finally:
        checkpointer.close()
    if stacked:  # one stacked tree and its per-layer copy coexist until this returns
        _, shardings = _shardings(build_model(dataclasses.replace(saved, scan_layers=False)),
                                  layout)
        params = jax.device_put(unstack_layers(params, saved), shardings)
    return config, params


def tokenizer_for_run(run_dir: str | pathlib.Path, config=None):
    """The tokenizer of a run directory (`zoo.data.hf_tokenizer.load_tokenizer`): its
    tokenizer.json (imported from Hugging Face, or trained on `data.tokenizer`), else zoo's bytes;
    checked against the model's vocab_size (`config`: the run's, read when not given)."""
    if config is None:
        config = _run_config(pathlib.Path(run_dir))
    return load_tokenizer(run_dir, config.model.vocab_size)
