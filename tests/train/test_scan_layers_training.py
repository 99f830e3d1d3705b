"""A run trained with its layers scanned and rematerialised is the unrolled run: same losses, and
its checkpoints (stacked params) load, export and import like per-layer ones, whichever layout
the run's config names now."""

import jax
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from zoo import config as config_lib
from zoo.export import hf
from zoo.export.convert import export_run, import_hf
from zoo.runs import load_run
from zoo.checkpoint import Checkpointer
from zoo.train.loop import ResumeError, train

STEPS = ("train.steps=4", "train.warmup_steps=1", "train.eval_every=4",
         "train.checkpoint_every=4")
SCANNED = ("model.scan_layers=true", "model.remat=dots_with_no_batch_dims_saveable")


def _stacked(run_dir) -> bool:
    checkpointer = Checkpointer(run_dir / "checkpoints", async_save=False)
    try:
        return checkpointer.params_stacked()
    finally:
        checkpointer.close()


def _set_scan_layers(run_dir, value: bool):
    """Edit a run's config.yaml, as a user switching layouts would."""
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw["model"]["scan_layers"] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))


def _exported(hf_dir):
    return load_file(hf_dir / hf.SINGLE), (hf_dir / "config.json").read_text()


def test_scanned_run_trains_loads_exports_and_imports_like_an_unrolled_one(tiny_experiment,
                                                                           tmp_path):
    unrolled = tiny_experiment(*STEPS, f"train.run_dir={tmp_path / 'unrolled'}")
    scanned = tiny_experiment(*STEPS, *SCANNED, f"train.run_dir={tmp_path / 'scanned'}")
    want, got = train(unrolled, progress=False), train(scanned, progress=False)
    np.testing.assert_allclose([got.losses[s] for s in range(1, 5)],
                               [want.losses[s] for s in range(1, 5)], rtol=2e-5)
    assert not _stacked(tmp_path / "unrolled") and _stacked(tmp_path / "scanned")
    # Training does not continue across layouts (the optimizer state is laid out like the params).
    with pytest.raises(ResumeError, match="per-layer but model.scan_layers=True"):
        train(tiny_experiment(*STEPS, *SCANNED, f"train.run_dir={tmp_path / 'unrolled'}"),
              resume=True, progress=False)

    # load_run gives per-layer params from either checkpoint, under either config.
    _, params = load_run(tmp_path / "unrolled")
    _, from_scanned = load_run(tmp_path / "scanned")
    assert sorted(from_scanned) == sorted(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), from_scanned, params)
    _set_scan_layers(tmp_path / "unrolled", True)
    _set_scan_layers(tmp_path / "scanned", False)
    jax.tree.map(np.testing.assert_array_equal, load_run(tmp_path / "unrolled")[1], params)
    jax.tree.map(np.testing.assert_array_equal, load_run(tmp_path / "scanned")[1], from_scanned)

    # Import into a scanned experiment stacks the params; its export is the unrolled one's.
    export_run(tmp_path / "unrolled", tmp_path / "hf")
    config = import_hf(tmp_path / "hf", tmp_path / "imported", scanned)
    assert config.model.scan_layers and config.model.remat == scanned.model.remat
    assert config_lib.load(tmp_path / "imported" / "config.yaml").model.scan_layers
    assert _stacked(tmp_path / "imported")
    export_run(tmp_path / "imported", tmp_path / "hf_again")
    want_tensors, want_config = _exported(tmp_path / "hf")
    got_tensors, got_config = _exported(tmp_path / "hf_again")
    assert got_config == want_config and sorted(got_tensors) == sorted(want_tensors)
    for name, tensor in want_tensors.items():
        np.testing.assert_array_equal(got_tensors[name], tensor, err_msg=name)
