"""The Pallas tree-attention kernels equal the reference, run in interpret mode on CPU.

Interpret mode executes the kernels' own block logic (grid, index maps, scalar prefetch, masked
loads, online softmax, in-kernel tree mask, cache splits and their combine); the lowering tests
check that the same kernels also lower to Mosaic (TPU) and Triton (GPU) IR, which is as far as a
CPU machine can take them.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from zoo_kernels.tree_attention import api, blocks, gpu, tpu, tree_attention
from zoo.decode.drafters import PromptLookup
from zoo.models import build_model

from conftest import assert_speculative_equals_ar, lowered_text
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


def test_auto_picks_the_platform_kernel():
    q = jnp.zeros((1, 7, 4, 64))
    cache = jnp.zeros((1, 2, 32, 64))
    assert api.resolve_backend("auto", q, cache, platform="cpu") == "xla"
    for platform, kernel in (("tpu", "pallas_tpu"), ("gpu", "pallas_gpu")):
        assert api.resolve_backend("auto", q, cache, platform=platform) == kernel
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


def _abstract_args(dtype, t=7):
    b, s, h, kv, d = 2, 300, 8, 2, 64
    sd = jax.ShapeDtypeStruct
    return (sd((b, t, h, d), dtype), sd((b, kv, s, d), dtype), sd((b, kv, s, d), dtype),
            sd((b,), jnp.int32), sd((b, t, kv, d), dtype), sd((b, t, kv, d), dtype),
            sd((b, t), jnp.int32))


@pytest.mark.parametrize("t, num_splits", [(7, None), (1, 3)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("platform, kernel, marker", [
    ("tpu", tpu.tree_attention, "tpu_custom_call"),
    ("cuda", gpu.tree_attention, "xla.gpu.triton"),
])
def test_kernel_lowers_for_its_platform(platform, kernel, marker, dtype, t, num_splits):
    """A tree with the default splits, and a decode step (T = 1) split 3 ways."""
    fn = jax.jit(functools.partial(kernel, num_splits=num_splits))
    lowered = fn.trace(*_abstract_args(dtype, t)).lower(lowering_platforms=(platform,))
    assert marker in lowered.as_text()


# Decode steps (T = 1) and small trees with explicit cache splits: batch 1 and 3, ragged lengths
# with an empty and a full row, caches spanning several splits (3-5 TPU blocks of 128 slots, 9-17
# GPU blocks of 32), and more splits than a row has blocks, so that some splits are empty.
SPLIT_CASES = [
    # (cache lengths, T, S, query heads, KV heads, head dim, tree kind, dtype, num_splits)
    ([300], 1, 300, 4, 1, 64, "chain", jnp.float32, 4),
    ([0, 300, 129], 1, 300, 8, 2, 64, "chain", jnp.bfloat16, 2),
    ([520, 0, 77], 1, 520, 4, 2, 64, "chain", jnp.float32, 1),
    ([0, 300, 140], 7, 300, 4, 2, 64, "random", jnp.float32, 4),
]


def _split_case(lengths, *shape, seed=11):
    q, k_cache, v_cache, _, k_new, v_new, parents = _case(seed, len(lengths), *shape)
    return q, k_cache, v_cache, jnp.asarray(lengths, jnp.int32), k_new, v_new, parents


def _split_case_id(case):
    lengths, *shape, dtype, num_splits = case
    return "len{}-t{}-s{}-h{}-kv{}-d{}-{}-{}-splits{}".format(
        "_".join(map(str, lengths)), *shape, jnp.dtype(dtype).name, num_splits)


@pytest.mark.parametrize("case", SPLIT_CASES, ids=_split_case_id)
@pytest.mark.parametrize("backend", list(KERNELS))
def test_split_kernel_equals_reference(backend, case):
    lengths, *shape, num_splits = case
    args = _split_case(lengths, *shape)
    dtype = shape[-1]
    want = tree_attention(*args, backend="reference").astype(jnp.float32)
    got = KERNELS[backend](*args, num_splits=num_splits)
    assert got.dtype == dtype
    chex.assert_trees_all_close(got.astype(jnp.float32), want, **_tolerance(dtype))


@pytest.mark.parametrize("backend", list(KERNELS))
def test_empty_splits_and_slots_past_the_length_leave_no_trace(backend):
    """Five splits over rows of 0, 1 and 129 slots: most splits hold no cache block (max -inf),
    one row has none at all. NaN in every slot past a row's length would reach the output if a
    split read it, and a wrong merge (an empty split's -inf, the new nodes counted per split)
    would show against the reference."""
    lengths, shape = [0, 1, 129], (1, 160, 4, 2, 64, "chain", jnp.float32)
    q, k_cache, v_cache, cache_len, k_new, v_new, parents = _split_case(lengths, *shape)
    want = tree_attention(q, k_cache, v_cache, cache_len, k_new, v_new, parents,
                          backend="reference")
    past = jnp.arange(k_cache.shape[2])[None, None, :, None] >= cache_len[:, None, None, None]
    k_cache, v_cache = (jnp.where(past, jnp.nan, x) for x in (k_cache, v_cache))
    got = KERNELS[backend](q, k_cache, v_cache, cache_len, k_new, v_new, parents, num_splits=5)
    assert bool(jnp.isfinite(got).all())
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)


def test_split_range_deals_every_block_once():
    """The splits of a row cover its blocks exactly once, in order, in runs within one block of
    each other; a split is empty only when the row has fewer blocks than splits."""
    for length in [0, 1, 31, 32, 33, 100, 300]:
        n_blocks = -(-length // 32)
        for num_splits in range(1, 7):
            runs = [tuple(int(x) for x in blocks.split_range(jnp.int32(length), p, num_splits, 32))
                    for p in range(num_splits)]
            assert [b for first, end in runs for b in range(first, end)] == list(range(n_blocks))
            sizes = [end - first for first, end in runs]
            assert max(sizes) - min(sizes) <= 1
            assert (min(sizes) == 0) == (n_blocks < num_splits)


def test_combine_splits_equals_one_softmax():
    """Partial softmaxes over a split key axis, one split empty, merge to the softmax over all
    keys; the empty split (m = -inf, l = 0, acc = 0) adds nothing and no NaN."""
    rng = np.random.default_rng(0)
    scores = jnp.asarray(rng.normal(size=(5, 12)) * 4, jnp.float32)  # [R, N]
    values = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)  # [N, D]
    want = jax.nn.softmax(scores, axis=-1) @ values
    parts = []
    for keys in (slice(0, 5), slice(5, 5), slice(5, 12)):
        init = (jnp.full((5, 1), -jnp.inf), jnp.zeros((5, 1)), jnp.zeros((5, 3)))
        part = init if keys.start == keys.stop else blocks.online_softmax_step(
            *init, scores[:, keys], values[keys])
        parts.append(part)
    m, l, acc = (jnp.stack(x) for x in zip(*parts))
    got = blocks.combine_splits(acc, m, l)
    assert bool(jnp.isfinite(got).all())
    chex.assert_trees_all_close(got, want, atol=1e-6, rtol=1e-6)


def test_query_tile_is_sized_to_the_stacked_rows():
    """(query rows, new-node keys) per (row, KV head): the G * T stacked rows are padded as a
    whole (Triton: a power of two >= 16; Mosaic: 8 sublanes), not T per query head."""
    assert gpu.tile_rows(4, 1) == (16, 16)  # a decode step, G = 4: 16 rows, not 4 x 16
    assert gpu.tile_rows(4, 7) == (32, 16)
    assert gpu.tile_rows(8, 64) == (512, 64)
    assert tpu.tile_rows(4, 1) == (8, 8)  # not 4 x 8
    assert tpu.tile_rows(4, 7) == (32, 8)
    assert tpu.tile_rows(1, 1) == (8, 8)


def test_default_num_splits():
    # GPU: enough programs for the SMs, no split under max(block_kv, 16 * rows) slots.
    assert gpu.default_num_splits(1, 8, 32768, n_rows=16) == 17  # 8 x 17 >= 132 programs
    assert gpu.default_num_splits(16, 8, 32768, n_rows=16) == 2
    assert gpu.default_num_splits(32, 8, 32768, n_rows=16) == 1  # b * K fills the SMs
    assert gpu.default_num_splits(1, 8, 512, n_rows=16) == 2  # splits of >= 256 slots
    assert gpu.default_num_splits(1, 8, 200, n_rows=16) == 1
    assert gpu.default_num_splits(1, 8, 8192, n_rows=256) == 2  # a 64-node tree: >= 4096 slots
    # TPU: two halves when b * K is odd and the cache spans two blocks.
    assert tpu.default_num_splits(1, 1, 4096) == 2
    assert tpu.default_num_splits(3, 1, 4096) == 2
    assert tpu.default_num_splits(1, 8, 4096) == 1
    assert tpu.default_num_splits(1, 1, 512) == 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_num_splits_are_rejected(bad):
    args = _case(0, 1, 2, 8, 2, 1, 64, "chain", jnp.float32)
    for backend, kernel in KERNELS.items():
        with pytest.raises(ValueError, match=f"{backend} tree_attention: num_splits={bad!r} must"):
            kernel(*args, num_splits=bad)


def test_greedy_speculative_decode_on_the_tpu_kernel_equals_ar(tiny_model_and_params):
    """The transformer's extend goes through the dispatch: the whole decode, interpreted."""
    model, params = tiny_model_and_params
    on_tpu_kernel = build_model(model.config, kernel_backend="pallas_tpu")
    assert_speculative_equals_ar(model, params, [[5, 6, 7, 5, 6, 7, 5], [9, 8, 9, 8]],
                                 PromptLookup(num_draft=4), max_new_tokens=12,
                                 verifier=on_tpu_kernel, max_len=64)


# What each backend name compiles to, read off the module lowered for each platform: `auto` is
# the platform's kernel; a forced kernel on this CPU host runs interpreted wherever it is lowered.
DISPATCH = {  # backend -> {lowering platform: (Mosaic call, Triton call) in the module}
    "auto": {"cpu": (False, False), "tpu": (True, False), "cuda": (False, True)},
    "xla": {"cpu": (False, False), "tpu": (False, False), "cuda": (False, False)},
    "pallas_gpu": {"cpu": (False, False)},
}


@pytest.mark.parametrize("backend", list(DISPATCH))
def test_backends_are_chosen_for_the_platform_a_program_is_lowered_for(backend):
    args = _abstract_args(jnp.bfloat16, 4)
    for platform, want in DISPATCH[backend].items():
        text = lowered_text(functools.partial(tree_attention, backend=backend), *args,
                            platform=platform)
        assert ("tpu_custom_call" in text, "xla.gpu.triton" in text) == want, platform
