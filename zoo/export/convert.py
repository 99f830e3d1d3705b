"""Whole-checkpoint conversions behind `zoo-export` and `zoo-import`: a zoo run directory
(config.yaml + orbax checkpoints, and tokenizer files unless its text is bytes) <-> a Hugging
Face folder (with its tokenizer and generation_config.json)."""

import importlib
import pathlib

import dataclasses

import jax

from zoo import config as config_lib
from zoo.checkpoint import Checkpointer
from zoo.data.hf_tokenizer import HFTokenizer, load_tokenizer
from zoo.export import hf
from zoo.parallel import Layout, ShardingError
from zoo.train.steps import TrainState

# zoo model family -> architecture module; Hugging Face model_type -> the same modules.
BY_FAMILY = {"transformer": "llama", "mamba2": "mamba2", "hybrid": "hybrid"}
BY_MODEL_TYPE = {"llama": "llama", "qwen2": "llama", "qwen3": "llama", "mamba2": "mamba2",
                 "granitemoehybrid": "hybrid"}


def architecture(family: str):
    if family not in BY_FAMILY:
        raise ValueError(f"no Hugging Face export for model family {family!r}")
    return importlib.import_module(f"zoo.export.{BY_FAMILY[family]}")


def architecture_of(hf_config: dict):
    kind = hf_config.get("model_type")
    if kind not in BY_MODEL_TYPE:
        raise hf.CheckpointMismatch(f"config.json model_type {kind!r}: zoo imports "
                                    f"{sorted(BY_MODEL_TYPE)}")
    return importlib.import_module(f"zoo.export.{BY_MODEL_TYPE[kind]}")


def _spread(config: config_lib.ExperimentConfig):
    """(layout, shardings, logical axes) of the per-layer params split over all local devices
    (fsdp), so no device ever holds them all; (None, None, axes) on one device when the sizes do
    not divide. Traced abstractly once here, the model's shapes and axes serve the check, the
    placement of each tensor as it is read, and the optimizer moments."""
    from zoo.models import build_model  # noqa: PLC0415 (the models import jax-heavy code)

    model = build_model(dataclasses.replace(config.model, scan_layers=False))
    axes = model.logical_axes()
    try:
        layout = Layout.from_config(config_lib.MeshConfig(data=1, fsdp=-1, rules=config.mesh.rules))
        return layout, layout.shardings(jax.eval_shape(model.init, jax.random.key(0)), axes), axes
    except ShardingError:
        return None, None, axes


def _placement(shardings):
    """`place(path, array)` for `hf.read`: each per-layer parameter straight onto its shards
    over the local devices as it is read, so neither the host nor a device holds the model."""
    if shardings is None:
        return lambda path, array: jax.numpy.asarray(array)
    return lambda path, array: jax.device_put(array, hf.get_path(shardings, path))


def _placed_state(params, logical_axes, tx, layout) -> TrainState:
    """A fresh train state around placed `params` (of `logical_axes`): the optimizer moments are
    created sharded like their params (one device when `layout` is None)."""
    from zoo.train.steps import StepShardings  # noqa: PLC0415

    def fresh(p):
        return TrainState(jax.numpy.zeros((), jax.numpy.int32), p, tx.init(p))

    if layout is None:
        return fresh(params)
    shardings = StepShardings.for_state(jax.eval_shape(fresh, params), logical_axes, tx,
                                        layout).state
    return jax.jit(fresh, out_shardings=shardings)(params)


def export_run(run_dir, out_dir, dtype: str = "float32", step: int | None = None,
               max_shard_bytes: int = 2 * 2**30) -> list[str]:
    """Write the run's latest (or `step`) params as a Hugging Face folder, with the run's
    tokenizer and its decode settings as generation_config.json; the file names."""
    from zoo.runs import load_run, tokenizer_for_run  # noqa: PLC0415

    config = config_lib.load(pathlib.Path(run_dir) / "config.yaml")
    if config.heads.kind != "none":
        raise ValueError(f"{run_dir} is a draft-heads run; export its target LM instead")
    if config.objective.kind != "lm":
        raise ValueError(f"{run_dir} trains objective.kind={config.objective.kind!r}; Hugging Face "
                         "causal-LM classes would run it with a causal mask, not the mask it was "
                         "trained with, so zoo exports next-token (objective.kind=lm) runs only")
    module = architecture(config.model.family)
    tok = tokenizer_for_run(run_dir, config)
    _, params = load_run(run_dir, step, layout=_spread(config)[0])
    dc = config.decode
    return (hf.write(out_dir, hf.with_token_ids(module.hf_config(config.model), tok),
                     module.tensor_map(config.model), params, dtype=dtype,
                     max_shard_bytes=max_shard_bytes)
            + hf.write_tokenizer(out_dir, tok, dc.temperature, dc.top_k, dc.top_p,
                                 dc.max_new_tokens))


def import_hf(hf_dir, out_dir, experiment: config_lib.ExperimentConfig | None = None):
    """A zoo run directory holding the Hugging Face checkpoint's weights as step 0 (fresh
    optimizer state), so `zoo-generate --checkpoint out_dir` decodes with it and `zoo-train
    --resume` fine-tunes it. Returns its config: the checkpoint's model, trained the way
    `experiment` says (its model.scan_layers, model.remat; params stacked when scanned).
    The folder's tokenizer goes with the run; without a tokenizer.json the run's text is zoo's
    bytes, refused (like a tokenizer larger than the model) before anything is written."""
    hf_config = hf.read_config(hf_dir)
    module = architecture_of(hf_config)
    base = experiment or config_lib.ExperimentConfig()
    model_config = dataclasses.replace(module.zoo_config(hf_config),
                                       scan_layers=base.model.scan_layers, remat=base.model.remat)
    tok = load_tokenizer(hf_dir, model_config.vocab_size, fallback_ids=hf_config)
    # Training on the run reads text through the tokenizer kept in it (data.tokenizer), which
    # is also the one its step-0 checkpoint records: `zoo-train --resume` fine-tunes as is.
    data = dataclasses.replace(base.data, tokenizer=str(out_dir) if isinstance(tok, HFTokenizer)
                               else "")
    config = dataclasses.replace(base, model=model_config, data=data, train=dataclasses.replace(
        base.train, run_dir=str(out_dir)))
    layout, shardings, axes = _spread(config)
    params = hf.read(hf_dir, module.tensor_map(model_config), model_config.param_dtype,
                     place=_placement(shardings))
    if model_config.scan_layers:
        from zoo.models import build_model  # noqa: PLC0415
        from zoo.models.stacking import stack_layers  # noqa: PLC0415

        params = stack_layers(params, model_config)
        axes = build_model(model_config).logical_axes()  # of the stacked layout
    from zoo.train.loop import data_identity  # noqa: PLC0415
    from zoo.train.optimizer import make_optimizer  # noqa: PLC0415

    tx = make_optimizer(config.train)
    state = _placed_state(params, axes, tx, layout)
    out = pathlib.Path(out_dir)
    checkpointer = Checkpointer(out / "checkpoints", async_save=False)
    if checkpointer.latest_step() is not None:
        checkpointer.close()
        raise FileExistsError(f"{out} already holds checkpoints; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    config_lib.save(config, out / "config.yaml")
    for name, text in (tok.files.items() if isinstance(tok, HFTokenizer) else ()):
        (out / name).write_text(text)
    try:
        checkpointer.save(0, state, {"position": 0, **data_identity(config, tok)})
    finally:
        checkpointer.close()
    return config
