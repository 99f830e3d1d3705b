"""`zoo-train --dry-run`: parameter count and per-device memory on a mesh of 8 simulated devices
(compiled) and on an abstract mesh of 8 (none needed: what sizes a pod), and configs that do not
divide over the mesh rejected by name."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from launch import train as train_cli
from zoo import config as config_lib
from zoo.models import build_model
from zoo.train import sizing

from conftest import REPO, code_bpe

TINY = "configs/experiments/tiny.yaml"
EIGHT = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
SIZES = r"""
import dataclasses, json, sys
from zoo import config as config_lib
from zoo.train import sizing
out = {}
for mesh in ("mesh.data=8", "mesh.data=1 mesh.fsdp=8", "mesh.data=4 mesh.tensor=2"):
    config = config_lib.load(sys.argv[1], mesh.split())
    out[mesh] = dataclasses.asdict(sizing.size(config))
    out["abstract " + mesh] = dataclasses.asdict(sizing.size(config, devices=8))
print(json.dumps(out))
"""


def test_dry_run_sizes_follow_the_shardings():
    done = subprocess.run([sys.executable, "-c", SIZES, TINY], cwd=REPO, env=EIGHT, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = json.loads(done.stdout.strip().splitlines()[-1])
    model = build_model(config_lib.load(REPO / TINY).model)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    leaves = jax.tree.leaves(shapes)
    count = sum(math.prod(a.shape) for a in leaves)
    # fsdp=8 splits every dimension named "embed" eight ways and replicates the rest (norms).
    axes = jax.tree.leaves(model.logical_axes(), is_leaf=lambda x: isinstance(x, tuple))
    split = sum(math.prod(a.shape) // (8 if "embed" in names else 1)
                for a, names in zip(leaves, axes))
    data, fsdp = sizes["mesh.data=8"], sizes["mesh.data=1 mesh.fsdp=8"]
    assert data["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert data["parameters"] == fsdp["parameters"] == count
    assert data["params_bytes"] == 4 * count  # replicated, float32
    assert fsdp["params_bytes"] == 4 * split < data["params_bytes"] / 4
    # AdamW keeps two moments per parameter, plus a step count or two.
    assert 0 <= data["optimizer_bytes"] - 2 * data["params_bytes"] <= 16
    assert 0 <= fsdp["optimizer_bytes"] - 2 * fsdp["params_bytes"] <= 16
    assert data["batch_rows"] == fsdp["batch_rows"] == 1  # 8 rows over 8 devices
    assert data["temp_bytes"] > 0 and fsdp["temp_bytes"] > 0
    # The abstract mesh gives the same shard sizes without devices; activations are estimated
    # from the backward's residuals (measured 0.8-1.4x of XLA's analysis across families).
    for mesh in ("mesh.data=8", "mesh.data=1 mesh.fsdp=8", "mesh.data=4 mesh.tensor=2"):
        real, abstract = sizes[mesh], sizes["abstract " + mesh]
        assert {k: v for k, v in abstract.items() if k not in ("temp_bytes", "compiled")} == \
            {k: v for k, v in real.items() if k not in ("temp_bytes", "compiled")}
        assert real["compiled"] and not abstract["compiled"]
        assert 0.5 < abstract["temp_bytes"] / real["temp_bytes"] < 2


def test_dry_run_cli_reports_and_rejects_what_does_not_divide(capsys, tmp_path):
    """--devices 8 sizes an abstract mesh in this process (which has one device)."""
    def run(*args):
        code = train_cli.main(["--dry-run", "--devices", "8", "--config", TINY, *args])
        return code, *capsys.readouterr()

    code, out, err = run("mesh.data=2", "mesh.fsdp=4")
    assert code == 0, err[-2000:]
    assert "mesh data=2 x fsdp=4 x tensor=1 (8 devices)" in out
    assert "activations+temp" in out and "estimate" in out and "optimizer state" in out
    code, out, err = run("mesh.data=1", "mesh.tensor=8")
    assert code == 2
    assert ("['block_0']['attn']['k']['kernel'] dimension 1 (kv_heads, size 2) does not divide "
            "over mesh axis tensor of size 8") in err
    code, out, err = run("mesh.data=8", "data.batch_size=12")
    assert code == 2
    assert "data.batch_size=12 does not divide over mesh axes ('data', 'fsdp') of size 8" in err
    code_bpe(vocab_size=300).save(str(tmp_path / "tokenizer.json"))  # tiny's vocabulary is 260
    code, out, err = run(f"data.tokenizer={tmp_path / 'tokenizer.json'}")
    assert code == 2 and "has 300 token ids but model.vocab_size is 260" in err


# The logical axes DEFAULT_RULES splits over each mesh axis.
SPLIT_BY = {"fsdp": ("embed",), "tensor": ("heads", "kv_heads", "mlp", "ssm_heads", "ssm_proj",
                                           "ssm_inner")}


@pytest.mark.parametrize("experiment,devices", [("llama3_1_8b_pod256", 256),
                                                ("mamba2_2_7b_pod64", 64)])
def test_pod_experiments_are_sized_exactly_without_their_chips(experiment, devices):
    """The catalog's pod runs on 256 / 64 chips, sized on this one-device machine: every
    parameter's shard from the mesh sizes its named axes divide by."""
    config = config_lib.load(experiment)
    got = sizing.size(config, devices=devices)
    model = build_model(config.model)
    leaves = jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0)))
    axes = jax.tree.leaves(model.logical_axes(), is_leaf=lambda x: isinstance(x, tuple))
    mesh = {"fsdp": config.mesh.fsdp, "tensor": config.mesh.tensor}
    itemsize = np.dtype(config.model.param_dtype).itemsize
    shard = sum(math.prod(a.shape) // math.prod(n for axis, n in mesh.items()
                                                for name in names if name in SPLIT_BY[axis])
                for a, names in zip(leaves, axes))
    assert got.mesh == {"data": 1, **mesh} and math.prod(got.mesh.values()) == devices
    assert got.parameters == sum(math.prod(a.shape) for a in leaves)
    assert got.params_bytes == itemsize * shard
    assert 0 <= got.optimizer_bytes - 2 * got.params_bytes <= 16  # AdamW's two moments
    assert got.batch_rows == config.data.batch_size // config.mesh.fsdp
    assert not got.compiled and got.temp_bytes > 0
