"""The Pallas tree-attention kernels equal the reference, run in interpret mode on CPU.

Interpret mode executes the kernels' own block logic (grid, index maps, scalar prefetch, masked
loads, online softmax, in-kernel tree mask); the lowering tests check that the same kernels also
lower to Mosaic (TPU) and Triton (GPU) IR, which is as far as a CPU machine can take them.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import pytest
from jax.experimental.pallas import tpu as pltpu

from kernels.tree_attention import api, gpu, tpu, tree_attention
from zoo.decode.drafters import PromptLookup
from zoo.models import build_model

from conftest import assert_speculative_equals_ar
from test_tree_attention import _case

# Small blocks so that every case spans several cache blocks, the last one partial.
KERNELS = {
    "pallas_tpu": functools.partial(tpu.tree_attention, block_kv=128,
                                    interpret=pltpu.InterpretParams(out_of_bounds_reads="raise")),
    "pallas_gpu": functools.partial(gpu.tree_attention, block_kv=32, interpret=True),
}

# (batch, tree nodes T, cache slots S, query heads, KV heads, head dim, tree kind, dtype): every
# batch 1-4, T in {1, 7, 16, 64}, GQA ratio 1/2/4, head dim 64/128, f32/bf16, chain/star/random
# trees, one bidirectional block (next-block prediction) and trees of blocks.
CASES = [
    (1, 1, 200, 4, 4, 64, "chain", jnp.float32),
    (2, 7, 300, 4, 2, 64, "random", jnp.float32),
    (3, 16, 200, 8, 2, 128, "star", jnp.bfloat16),
    (4, 64, 130, 4, 1, 64, "random", jnp.bfloat16),
    (2, 64, 64, 2, 2, 128, "chain", jnp.float32),
    (3, 7, 37, 8, 4, 128, "star", jnp.bfloat16),
    (1, 16, 260, 4, 1, 128, "random", jnp.float32),
    (3, 16, 300, 4, 2, 64, "block", jnp.float32),
    (2, 8, 200, 8, 2, 128, "block", jnp.bfloat16),
    (2, 7, 140, 4, 1, 64, "block_tree", jnp.float32),
]


def _tolerance(dtype):
    return dict(atol=2e-2, rtol=2e-2) if dtype == jnp.bfloat16 else dict(atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}-t{}-s{}-h{}-kv{}-d{}-{}-{}".format(
    *c[:7], jnp.dtype(c[7]).name))
@pytest.mark.parametrize("backend", list(KERNELS))
def test_kernel_equals_reference(backend, case):
    *shape, kind, dtype = case
    args = _case(sum(shape), *shape, kind, dtype)
    want = tree_attention(*args, backend="reference").astype(jnp.float32)
    got = KERNELS[backend](*args)
    assert got.dtype == dtype
    chex.assert_shape(got, args[0].shape)
    chex.assert_trees_all_close(got.astype(jnp.float32), want, **_tolerance(dtype))


@pytest.mark.parametrize("backend", list(KERNELS))
def test_forced_backend_runs_interpreted_through_the_api(backend):
    args = _case(5, 2, 7, 40, 4, 2, 64, "random", jnp.float32)
    want = tree_attention(*args, backend="reference")
    chex.assert_trees_all_close(tree_attention(*args, backend=backend), want, atol=2e-5, rtol=2e-5)


def test_auto_picks_the_platform_kernel(monkeypatch):
    q = jnp.zeros((1, 7, 4, 64))
    cache = jnp.zeros((1, 2, 32, 64))
    assert api.resolve_backend("auto", q, cache) == "xla"  # this CPU
    for platform, kernel in (("tpu", "pallas_tpu"), ("gpu", "pallas_gpu")):
        monkeypatch.setattr(jax, "default_backend", lambda p=platform: p)
        assert api.resolve_backend("auto", q, cache) == kernel
    # A shape the GPU kernel cannot take falls back to XLA under auto, and is an error if forced.
    odd = jnp.zeros((1, 7, 4, 48))
    assert api.resolve_backend("auto", odd, jnp.zeros((1, 2, 32, 48))) == "xla"
    with pytest.raises(ValueError, match="power-of-two head dim >= 16, got 48"):
        api.resolve_backend("pallas_gpu", odd, jnp.zeros((1, 2, 32, 48)))


def test_tpu_kernel_rejects_a_tree_too_big_for_vmem():
    q = jnp.zeros((1, 1024, 32, 128), jnp.bfloat16)
    with pytest.raises(ValueError, match="1024 tree nodes x 4 query heads per KV head need"):
        api.resolve_backend("pallas_tpu", q, jnp.zeros((1, 8, 4096, 128), jnp.bfloat16))


def test_bad_block_sizes_are_rejected():
    args = _case(0, 1, 2, 8, 2, 1, 64, "chain", jnp.float32)
    with pytest.raises(ValueError, match="block_kv=100 must be a multiple of 128"):
        tpu.tree_attention(*args, block_kv=100, interpret=pltpu.InterpretParams())
    with pytest.raises(ValueError, match="block_kv=48 must be a power of two"):
        gpu.tree_attention(*args, block_kv=48, interpret=True)


def _abstract_args(dtype):
    b, t, s, h, kv, d = 2, 7, 300, 8, 2, 64
    sd = jax.ShapeDtypeStruct
    return (sd((b, t, h, d), dtype), sd((b, kv, s, d), dtype), sd((b, kv, s, d), dtype),
            sd((b,), jnp.int32), sd((b, t, kv, d), dtype), sd((b, t, kv, d), dtype),
            sd((b, t), jnp.int32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("platform, kernel, marker", [
    ("tpu", tpu.tree_attention, "tpu_custom_call"),
    ("cuda", gpu.tree_attention, "xla.gpu.triton"),
])
def test_kernel_lowers_for_its_platform(platform, kernel, marker, dtype):
    lowered = jax.jit(kernel).trace(*_abstract_args(dtype)).lower(lowering_platforms=(platform,))
    assert marker in lowered.as_text()


def test_greedy_speculative_decode_on_the_tpu_kernel_equals_ar(tiny_model_and_params):
    """The transformer's extend goes through the dispatch: the whole decode, interpreted."""
    model, params = tiny_model_and_params
    on_tpu_kernel = build_model(model.config, kernel_backend="pallas_tpu")
    assert_speculative_equals_ar(model, params, [[5, 6, 7, 5, 6, 7, 5], [9, 8, 9, 8]],
                                 PromptLookup(num_draft=4), max_new_tokens=12,
                                 verifier=on_tpu_kernel, max_len=64)
