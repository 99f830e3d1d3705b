"""The programs users run on TPUs and GPUs, lowered for them here (no accelerator needed:
`jit(f).trace(...).lower(lowering_platforms=...)`) and read as a compiler engineer would: the tree
kernels are in them as Mosaic (TPU) and Triton (GPU) calls, and none of zoo's CPU workarounds is.
The same traces lowered for CPU hold the workarounds and no kernel, so every check can fail.
Nothing is compiled or run: the decoders' jitted loops are traced from their public entry points
and stopped there."""

import json
import os
import subprocess
import sys

import jax
import pytest

from zoo.data.tokenizer import MASK_ID, PAD_ID
from zoo.decode import ar, diffusion, next_block, speculative
from zoo.decode.diffusion import DiffusionSampler
from zoo.decode.drafters import TokenRecycling
from zoo.decode.trees import PRESETS
from zoo.models import build_model
from zoo.platform import CPU_WORKAROUND

from conftest import REPO, tiny_model_config, tiny_ssm_config

PLATFORMS = ("tpu", "cuda", "cpu")
MOSAIC, TRITON = "tpu_custom_call", "xla.gpu.triton"
KERNEL_NAME = {"tpu": 'kernel_name = "%s', "cuda": 'name = "%s'}  # a Pallas call's name=
PROMPTS = [[5, 6, 7, 5, 6, 7], [9, 8, 9, 8]]
KW = dict(eos_id=-1, pad_id=PAD_ID)
BF16 = dict(dtype="bfloat16", param_dtype="bfloat16")


class _Lowered(Exception):
    """Raised in place of running a program once it is lowered."""


def _lowered(monkeypatch, module, name: str, run) -> dict[str, str]:
    """{platform: StableHLO with debug locations} of `module.<name>` (a jitted function) as
    `run()` calls it, traced once and lowered for every platform."""
    jitted, modules = getattr(module, name), {}

    def lower_instead(*args, **kwargs):
        traced = jitted.trace(*args, **kwargs)
        for platform in PLATFORMS:
            lowered = traced.lower(lowering_platforms=(platform,))
            modules[platform] = lowered.as_text(debug_info=True)
        raise _Lowered

    monkeypatch.setattr(module, name, lower_instead)
    with pytest.raises(_Lowered):
        run()
    monkeypatch.undo()
    return modules


def _check(modules: dict[str, str], *, kernels: bool, cpu_workaround: bool = True):
    """Kernels (or none) on the accelerators, no CPU workaround there; on CPU neither kernel,
    and the workaround where the program has one."""
    for platform in ("tpu", "cuda"):
        assert CPU_WORKAROUND not in modules[platform], f"a CPU workaround in the {platform} module"
    assert (MOSAIC in modules["tpu"]) == kernels and TRITON not in modules["tpu"]
    assert (TRITON in modules["cuda"]) == kernels and MOSAIC not in modules["cuda"]
    assert MOSAIC not in modules["cpu"] and TRITON not in modules["cpu"]
    assert (CPU_WORKAROUND in modules["cpu"]) == cpu_workaround


@pytest.fixture(scope="module")
def bf16_transformer():
    model = build_model(tiny_model_config(**BF16))
    return model, model.init(jax.random.key(0))


def test_ar_decode_loop(monkeypatch, bf16_transformer):
    """On CPU the loop grows its cache, pads 2-row bfloat16 GEMMs to 4 and commits by select."""
    model, params = bf16_transformer
    modules = _lowered(monkeypatch, ar, "_decode", lambda: ar.generate(
        model, params, PROMPTS, max_new_tokens=200, max_len=512, **KW))
    _check(modules, kernels=True)
    assert modules["cpu"].count("stablehlo.while") > modules["tpu"].count("stablehlo.while")


def test_speculative_loop_with_a_tree_drafter_on_a_hybrid_model(monkeypatch):
    """Token Recycling's 15-node tree over attention and Mamba2 layers: both tree kernels (head
    dims of 16, the smallest the Triton kernels take)."""
    model = build_model(tiny_ssm_config("hybrid", d_model=64, ssm_heads=8, **BF16))
    params = model.init(jax.random.key(0))
    drafter = TokenRecycling(vocab_size=model.vocab_size, tree=PRESETS["medusa_small"])
    modules = _lowered(monkeypatch, speculative, "_decode", lambda: speculative.generate(
        model, params, PROMPTS, drafter=drafter, max_new_tokens=16, **KW))
    _check(modules, kernels=True)
    for platform in ("tpu", "cuda"):  # the attention layer's and the Mamba2 layers' kernels
        for kernel in ("tree_attention", "ssm_tree_scan"):
            assert KERNEL_NAME[platform] % kernel in modules[platform], (platform, kernel)


def test_next_block_loop(monkeypatch, bf16_transformer):
    model, params = bf16_transformer
    modules = _lowered(monkeypatch, next_block, "_decode", lambda: next_block.generate(
        model, params, PROMPTS, block_size=4, max_new_tokens=16, **KW))
    _check(modules, kernels=True)


def test_block_diffusion_sampler(monkeypatch, bf16_transformer):
    model, params = bf16_transformer
    how = DiffusionSampler(block_size=4, threshold=0.9)
    modules = _lowered(monkeypatch, diffusion, "_sample", lambda: diffusion.generate(
        model, params, PROMPTS, how=how, model_block_size=4, max_new_tokens=8, mask_id=MASK_ID,
        **KW))
    _check(modules, kernels=True)


@pytest.mark.parametrize("family", ["transformer", "hybrid"])
def test_prefill(family):
    """Whole-prompt attention and the chunked SSD: no tree kernel; on CPU the bfloat16
    attention products read materialised transposes."""
    config = (tiny_model_config(**BF16) if family == "transformer"
              else tiny_ssm_config("hybrid", **BF16))
    model = build_model(config)
    params = jax.eval_shape(model.init, jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((2, 64), "int32")
    lengths = jax.ShapeDtypeStruct((2,), "int32")
    traced = jax.jit(model.prefill, static_argnums=3).trace(params, tokens, lengths, 128)
    _check({p: traced.lower(lowering_platforms=(p,)).as_text(debug_info=True)
            for p in PLATFORMS}, kernels=False)


# The train step of every family, scanned and rematerialised, in bfloat16, sharded over a
# data=2 x fsdp=2 x tensor=2 mesh of 8 simulated devices (a subprocess: the device count is fixed
# when jax starts), lowered for each platform from abstract state and batch.
TRAIN_STEPS = r"""
import json, sys
import jax, jax.numpy as jnp
sys.path.insert(0, "tests")
from conftest import tiny_model_config, tiny_ssm_config
from zoo.config import MeshConfig, TrainConfig
from zoo.models import build_model
from zoo.parallel import Layout
from zoo.platform import CPU_WORKAROUND
from zoo.train.optimizer import learning_rate_schedule, make_optimizer
from zoo.train.steps import StepShardings, init_state, make_train_step

common = dict(dtype="bfloat16", scan_layers=True, remat="full")
configs = {
    "transformer": tiny_model_config(n_heads=8, n_kv_heads=8, n_layers=4, **common),
    "mamba2": tiny_ssm_config("mamba2", ssm_heads=8, ssm_head_dim=8, n_layers=4, **common),
    "hybrid": tiny_ssm_config("hybrid", ssm_heads=8, ssm_head_dim=8, n_heads=8, n_kv_heads=8,
                              n_layers=4, layer_pattern="mama", **common),
}
train = TrainConfig(steps=10, warmup_steps=2, learning_rate=3e-3)
tx, schedule = make_optimizer(train), learning_rate_schedule(train)
layout = Layout.from_config(MeshConfig(2, 2, 2))
out = {}
for family, config in configs.items():
    model = build_model(config)
    state = jax.eval_shape(lambda: init_state(model, tx, jax.random.key(0)))
    shardings = StepShardings.for_state(state, model.logical_axes(), tx, layout)
    step = make_train_step(build_model(config, layout=layout), tx, schedule, shardings)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state,
                         shardings.state)
    batch = {k: jax.ShapeDtypeStruct((8, 32), jnp.int32, sharding=shardings.batch)
             for k in ("inputs", "targets")}
    traced = step.trace(state, batch)
    for platform in ("tpu", "cuda", "cpu"):
        text = traced.lower(lowering_platforms=(platform,)).as_text(debug_info=True)
        sharded = any(a in text for a in ("sdy.sharding", "mhlo.sharding"))  # Shardy or GSPMD
        out[f"{family} {platform}"] = {"workaround": CPU_WORKAROUND in text, "sharded": sharded}
print(json.dumps(out))
"""


def test_sharded_bfloat16_train_steps():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", TRAIN_STEPS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for family in ("transformer", "mamba2", "hybrid"):
        for platform in ("tpu", "cuda"):
            module = got[f"{family} {platform}"]
            assert not module["workaround"] and module["sharded"], (family, platform)
        assert got[f"{family} cpu"]["workaround"], family  # bfloat16 transposes materialised
