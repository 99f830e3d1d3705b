"""Sharding over a mesh changes no numbers. On 8 simulated CPU devices (a subprocess, since the
device count is fixed when jax starts), for every model family: training steps with the state
and batch sharded over data / fsdp / tensor meshes give the single-device losses and params, and
sharded AR and speculative decoding give the unsharded tokens. A scanned, rematerialised hybrid
does too: its stacked params shard like per-layer ones (the layer axis replicated), and decode
from its checkpoint read back per layer onto the mesh."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from zoo.config import ConfigError, MeshConfig
from zoo.parallel import ShardingError, make_mesh, mesh_shape

from conftest import REPO

MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8))
# The transformer trains on every mesh; the SSM families on the two that split their params
# (fsdp and tensor together, and tensor=8), which a data-only or fsdp-only mesh adds nothing to;
# the unscanned hybrid on data=2 x fsdp=2 x tensor=2 only, where decoding is checked (its layers
# are mamba2's and the transformer's, and the scanned hybrid runs both meshes).
FAMILY_MESHES = {"transformer": MESHES, "mamba2": MESHES[2:], "hybrid": MESHES[2:3],
                 "hybrid_scanned": MESHES[2:]}

CHECK = r"""
import json, sys, tempfile
import jax, jax.numpy as jnp, numpy as np, optax
sys.path.insert(0, "tests")
from conftest import tiny_model_config, tiny_ssm_config, loud_ssm_params
from zoo import config as config_lib
from zoo.checkpoint import Checkpointer
from zoo.config import MeshConfig, TrainConfig
from zoo.data.tokenizer import PAD_ID
from zoo.decode import ar, speculative
from zoo.decode.drafters import TokenRecycling
from zoo.models import build_model
from zoo.models.stacking import stack_layers, unstack_layers
from zoo.parallel import Layout
from zoo.runs import load_run
from zoo.train.optimizer import learning_rate_schedule, make_optimizer
from zoo.train.steps import StepShardings, init_state, make_train_step

MESHES, FAMILY_MESHES = %s, %s
STEPS = 3
# Every sharded size divides by 8 (heads, KV heads, MLP, SSM heads and projections), so each
# family runs on every mesh, tensor=8 included.
CONFIGS = {
    "transformer": tiny_model_config(n_heads=8, n_kv_heads=8),
    "mamba2": tiny_ssm_config("mamba2", ssm_heads=8, ssm_head_dim=8),
    "hybrid": tiny_ssm_config("hybrid", ssm_heads=8, ssm_head_dim=8, n_heads=8, n_kv_heads=8),
    "hybrid_scanned": tiny_ssm_config("hybrid", n_layers=4, layer_pattern="mama", ssm_heads=8,
                                      ssm_head_dim=8, n_heads=8, n_kv_heads=8, scan_layers=True,
                                      remat="full"),
}
train_config = TrainConfig(steps=10, warmup_steps=2, learning_rate=3e-3)
tx, schedule = make_optimizer(train_config), learning_rate_schedule(train_config)
tokens = jax.random.randint(jax.random.key(1), (STEPS, 8, 17), 0, 256)
batches = [{"inputs": t[:, :-1], "targets": t[:, 1:]} for t in tokens]
prompts = [[1, 2, 3, 1, 2], [4, 5, 6, 7]]

out = {"devices": len(jax.devices()), "loss_diff": {}, "param_diff": {}, "tokens_equal": {},
       "errors": {}, "restored": {}}
saved = None


def saved_run(config, params):  # a run directory holding `params` as its one checkpoint
    run = tempfile.mkdtemp()
    config_lib.save(config_lib.ExperimentConfig(model=config), run + "/config.yaml")
    checkpointer = Checkpointer(run + "/checkpoints", async_save=False)
    checkpointer.save(STEPS, {"params": params}, {})
    checkpointer.close()
    return run

for family, config in CONFIGS.items():
    model = build_model(config)
    make = lambda: init_state(model, tx, jax.random.key(0))
    step = make_train_step(model, tx, schedule)
    state, want_losses = make(), []
    for batch in batches:
        state, metrics = step(state, batch)
        want_losses.append(float(metrics["loss"]))
    want_params = state.params
    for sizes in FAMILY_MESHES[family]:
        layout = Layout.from_config(MeshConfig(*sizes))
        sharded_model = build_model(config, layout=layout)
        shardings = StepShardings.for_state(jax.eval_shape(make), model.logical_axes(), tx,
                                            layout)
        state = jax.jit(make, out_shardings=shardings.state)()
        step = make_train_step(sharded_model, tx, schedule, shardings)
        losses = []
        for batch in batches:
            state, metrics = step(state, jax.device_put(batch, shardings.batch))
            losses.append(float(metrics["loss"]))
        key = f"{family} {sizes}"
        out["loss_diff"][key] = float(np.abs(np.subtract(losses, want_losses)).max())
        out["param_diff"][key] = max(jax.tree.leaves(jax.tree.map(
            lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), state.params,
            want_params)))
        if family == "transformer":  # save on this mesh, restore onto the next one (resharded)
            if saved is not None:
                restored, _ = Checkpointer(saved, async_save=False).restore(
                    jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 state, shardings.state))
                out["restored"][f"{saved_sizes} -> {sizes}"] = (
                    restored.params["block_0"]["attn"]["q"]["kernel"].sharding
                    == shardings.state.params["block_0"]["attn"]["q"]["kernel"]
                    and bool(jax.tree.all(jax.tree.map(
                        lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()),
                        restored, saved_state))))
            saved, saved_sizes = tempfile.mkdtemp() + "/ckpt", sizes
            saved_state = jax.device_get(state)
            checkpointer = Checkpointer(saved, async_save=False)
            checkpointer.save(STEPS, state, {})
            checkpointer.close()
        if sizes == (2, 2, 2):
            params = unstack_layers(want_params, config) if config.scan_layers else want_params
            params = params if family == "transformer" else loud_ssm_params(params)
            if config.scan_layers:  # a stacked checkpoint, read back per layer onto the mesh
                stacked = jax.device_put(stack_layers(params, config), shardings.state.params)
                out["stacked_spec"] = list(
                    stacked["layers"]["block_1"]["attn"]["q"]["kernel"].sharding.spec)
                sharded = load_run(saved_run(config, stacked), layout=layout)[1]
            else:
                sharded = jax.device_put(params, shardings.state.params)
            drafter = TokenRecycling(config.vocab_size)
            kw = dict(max_new_tokens=8, eos_id=-1, pad_id=PAD_ID)
            a = ar.generate(model, params, prompts, **kw)
            b = ar.generate(sharded_model, sharded, prompts, **kw)
            c = speculative.generate(sharded_model, sharded, prompts, drafter=drafter, **kw)
            out["tokens_equal"][family] = bool((a.tokens == b.tokens).all()
                                               and (a.tokens == c.tokens).all())

# zoo-import puts each of a Hugging Face folder's tensors on its shards over every local device
# as it reads it, and creates the optimizer moments sharded: no device (and not the host) holds
# the model, and no device a whole weight matrix.
from zoo.config import ExperimentConfig
from zoo.export import convert, hf, llama
config = CONFIGS["transformer"]
params = build_model(config).init(jax.random.key(0))
import_layout, import_shardings, axes = convert._spread(ExperimentConfig(model=config))
with tempfile.TemporaryDirectory() as folder:
    hf.write(folder, llama.hf_config(config), llama.tensor_map(config), params)
    read = hf.read(folder, llama.tensor_map(config), config.param_dtype,
                   place=convert._placement(import_shardings))
state = convert._placed_state(read, axes, tx, import_layout)
kernel = state.params["block_0"]["mlp"]["up"]["kernel"]
moment = optax.tree_utils.tree_get(state.opt_state, "mu")["block_0"]["mlp"]["up"]["kernel"]
out["import_placement"] = {
    "read_devices": min(len(a.sharding.device_set) for a in jax.tree.leaves(read) if a.ndim > 1),
    "devices": len(kernel.sharding.device_set),
    "shard_fraction": kernel.addressable_shards[0].data.size / kernel.size,
    "moment_like_param": moment.sharding == kernel.sharding,
    "params_equal": all(bool((np.asarray(a) == np.asarray(b)).all())
                        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)))}

# Parameters that do not divide over the mesh are named before anything is placed.
for family, config in (("transformer", tiny_model_config()), ("mamba2", tiny_ssm_config())):
    model = build_model(config)
    try:
        Layout.from_config(MeshConfig(1, 1, 8)).shardings(
            jax.eval_shape(model.init, jax.random.key(0)), model.logical_axes())
    except ValueError as e:
        out["errors"][family] = str(e)
print(json.dumps(out))
""" % (MESHES, FAMILY_MESHES)


@pytest.fixture(scope="module")
def eight_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family,sizes", [(f, s) for f, meshes in FAMILY_MESHES.items()
                                          for s in meshes],
                         ids=lambda x: "data%d_fsdp%d_tensor%d" % x if isinstance(x, tuple) else x)
def test_sharded_training_equals_single_device(eight_devices, family, sizes):
    assert eight_devices["devices"] == 8
    assert eight_devices["loss_diff"][f"{family} {sizes}"] < 1e-5
    # Adam moves every weight by up to the learning rate (3e-3) whatever its gradient's size, so
    # reduction-order differences (~1e-7) in near-zero gradients show as up to ~1e-4 in params.
    assert eight_devices["param_diff"][f"{family} {sizes}"] < 2e-4


def test_import_places_params_and_moments_on_their_shards(eight_devices):
    placed = eight_devices["import_placement"]
    assert placed["read_devices"] == placed["devices"] == 8 and placed["shard_fraction"] <= 1 / 2
    assert placed["moment_like_param"] and placed["params_equal"]


@pytest.mark.parametrize("family", ["transformer", "mamba2", "hybrid", "hybrid_scanned"])
def test_sharded_decoding_gives_the_unsharded_tokens(eight_devices, family):
    """AR and speculative (Token Recycling tree) decoding on data=2 x fsdp=2 x tensor=2."""
    assert eight_devices["tokens_equal"][family]


def test_stacked_params_shard_like_per_layer_ones(eight_devices):
    """The q kernel [layers, embed, heads, head_dim] on data=2 x fsdp=2 x tensor=2: every
    device holds all layers of its shard."""
    assert eight_devices["stacked_spec"] == [None, "fsdp", "tensor", None]


def test_checkpoints_restore_resharded_onto_another_mesh(eight_devices):
    """A transformer train state saved on each mesh restores onto the next, bit for bit, with
    the new mesh's shardings."""
    assert eight_devices["restored"] == {f"{a} -> {b}": True for a, b in zip(MESHES, MESHES[1:])}


def test_dimensions_that_do_not_divide_over_the_mesh_are_named(eight_devices):
    """The tiny transformer has 2 KV heads and the tiny Mamba2 4 SSM heads: tensor=8 cannot
    split them."""
    assert eight_devices["errors"]["transformer"] == (
        "['block_0']['attn']['k']['kernel'] dimension 1 (kv_heads, size 2) does not divide over "
        "mesh axis tensor of size 8")
    assert eight_devices["errors"]["mamba2"] == (
        "['block_0']['mixer']['A_log'] dimension 0 (ssm_heads, size 4) does not divide over mesh "
        "axis tensor of size 8")


def test_mesh_sizes_resolve_and_are_checked():
    assert mesh_shape(MeshConfig(), 8) == (8, 1, 1)
    assert mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="needs 4 devices, there are 8"):
        mesh_shape(MeshConfig(data=2, fsdp=2), 8)
    with pytest.raises(ValueError, match="8 devices do not divide by the fixed sizes' product 3"):
        mesh_shape(MeshConfig(tensor=3), 8)
    with pytest.raises(ShardingError, match="1 devices do not split into 2 slices"):
        make_mesh(MeshConfig(dcn_data=2))
    with pytest.raises(ConfigError, match="mesh.dcn_fsdp"):
        MeshConfig(dcn_fsdp=0)
    with pytest.raises(ConfigError, match="only one mesh size may be -1"):
        MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ConfigError, match="mesh.rules"):
        MeshConfig(rules="embed=model")


def test_mesh_follows_the_tpu_topology():
    """A TPU v4 slice of 2x2x2 chips listed in an order that is not the torus order: the mesh
    puts the tensor axis on neighbouring chips (one link apart), which a reshape of the device
    list does not."""

    @dataclasses.dataclass(frozen=True)
    class FakeTpu:
        id: int
        coords: tuple
        platform: str = "tpu"
        device_kind: str = "TPU v4"
        core_on_chip: int = 0
        process_index: int = 0
        slice_index: int = 0

    order = [(0, 0, 0), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 0, 0), (0, 1, 0), (1, 1, 1), (0, 0, 1)]
    devices = [FakeTpu(i, c) for i, c in enumerate(order)]
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), devices)
    grid = mesh.devices
    assert sorted(d.id for d in grid.flat) == list(range(8))
    for index in np.ndindex(grid.shape[:-1]):
        a, b = grid[index]  # the two devices of one tensor group
        assert sum(abs(x - y) for x, y in zip(a.coords, b.coords)) == 1, (a, b)
