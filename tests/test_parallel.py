"""Sharding over a mesh changes no numbers: on 8 simulated CPU devices (a subprocess, since the
device count is fixed when jax starts), a forward of every model family with parameters and
batch sharded over data / fsdp / tensor meshes equals the unsharded forward, and sharded AR
decoding gives the unsharded tokens."""

import json
import os
import subprocess
import sys

import pytest

from zoo.config import ConfigError, MeshConfig
from zoo.parallel import mesh_shape

from conftest import REPO

CHECK = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, "tests")
from conftest import tiny_model_config, tiny_ssm_config
from zoo import parallel
from zoo.config import MeshConfig
from zoo.data.tokenizer import PAD_ID
from zoo.decode import ar
from zoo.models import build_model

out = {"devices": len(jax.devices()), "max_diff": {}, "tokens_equal": {}, "errors": {}}
tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, 256)
for family in ("transformer", "mamba2", "hybrid"):
    model = build_model(tiny_model_config() if family == "transformer" else tiny_ssm_config(family))
    params = model.init(jax.random.key(0))
    want = np.asarray(jax.jit(model.forward)(params, tokens)[0])
    for sizes in ((8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)):
        config = MeshConfig(*sizes)
        mesh = parallel.make_mesh(config)
        try:
            shardings = parallel.shardings(params, model.logical_axes(), mesh, config)
        except ValueError as e:
            out["errors"][f"{family} {sizes}"] = str(e)
            continue
        sharded = jax.device_put(params, shardings)
        batch = jax.device_put(tokens, NamedSharding(mesh, P(("data", "fsdp"))))
        got = jax.jit(model.forward, in_shardings=(shardings, batch.sharding))(sharded, batch)[0]
        out["max_diff"][f"{family} {sizes}"] = float(np.abs(np.asarray(got) - want).max())
        if sizes == (2, 2, 2):
            prompts = [[1, 2, 3], [4, 5, 6, 7]]
            a = ar.generate(model, params, prompts, max_new_tokens=6, eos_id=-1, pad_id=PAD_ID)
            b = ar.generate(model, sharded, prompts, max_new_tokens=6, eos_id=-1, pad_id=PAD_ID)
            out["tokens_equal"][family] = bool((a.tokens == b.tokens).all())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def eight_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sharded_forward_equals_unsharded(eight_devices):
    assert eight_devices["devices"] == 8
    for family in ("transformer", "mamba2", "hybrid"):
        for sizes in ("(8, 1, 1)", "(2, 4, 1)", "(2, 2, 2)"):
            assert eight_devices["max_diff"][f"{family} {sizes}"] < 1e-5, (family, sizes)
        assert eight_devices["tokens_equal"][family], family


def test_dimensions_that_do_not_divide_over_the_mesh_are_named(eight_devices):
    """The tiny transformer has 2 KV heads and the tiny Mamba2 a 196-wide input projection:
    tensor=8 cannot split them."""
    assert eight_devices["errors"]["transformer (1, 1, 8)"] == (
        "['block_0']['attn']['k']['kernel'] dimension 1 (kv_heads, size 2) does not divide over "
        "mesh axis tensor of size 8")
    assert "(ssm_proj, size 196) does not divide over mesh axis tensor of size 8" in \
        eight_devices["errors"]["mamba2 (1, 1, 8)"]


def test_mesh_sizes_resolve_and_are_checked():
    assert mesh_shape(MeshConfig(), 8) == (8, 1, 1)
    assert mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="needs 4 devices, there are 8"):
        mesh_shape(MeshConfig(data=2, fsdp=2), 8)
    with pytest.raises(ValueError, match="8 devices do not divide by the fixed sizes' product 3"):
        mesh_shape(MeshConfig(tensor=3), 8)
    with pytest.raises(ConfigError, match="only one mesh size may be -1"):
        MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ConfigError, match="mesh.rules"):
        MeshConfig(rules="embed=model")
