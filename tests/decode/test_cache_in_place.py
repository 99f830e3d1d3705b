"""Decode loops update their KV caches in place: the compiled loop holds no copy of a layer's KV
cache. A copy per step is easy to cause and costly (at batch 16 it cost as much as the
attention): XLA inserts one when a layer's cache write may run before that layer's attention has
read the cache, i.e. when a commit does not depend on the step's forward (see
`zoo.models.protocol.after_forward`). SSM states are not checked: a commit computes a new state
from the old one (not a scatter), which XLA may stage through a copy of that small tensor."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.data.tokenizer import PAD_ID
from zoo.decode import ar, next_block, speculative
from zoo.decode.drafters import DraftModelChain, PromptLookup
from zoo.layers.kv_cache import KVCache, KVPending, commit_kv
from zoo.models import build_model

from conftest import tiny_model_config, tiny_ssm_config

PROMPTS = [[5, 6, 7, 5, 6, 7], [9, 8, 9, 8]]
COPY = re.compile(r"= \w+\[([\d,]*)\]\{[\d,]*\} copy\(")


def _compiled_loop(monkeypatch, engine, run) -> str:
    """The optimized HLO of `engine._decode` as `run()` calls it."""
    jitted, seen = engine._decode, {}

    def spy(*args, **kwargs):
        seen["hlo"] = jitted.lower(*args, **kwargs).compile().as_text()
        return jitted(*args, **kwargs)

    monkeypatch.setattr(engine, "_decode", spy)
    run()
    return seen["hlo"]


def _cache_shapes(model, batch: int, max_len: int) -> set[tuple]:
    """Shapes of the model's per-layer KV cache arrays."""
    cache = jax.eval_shape(lambda: model.init_cache(batch, max_len))
    kv = getattr(cache, "kv", cache)
    return {tuple(layer.shape) for layer in kv.k + kv.v}


def _unfused(hlo: str) -> str:
    """The HLO's arrays that are materialised: every computation but the bodies of fusions
    (values inside a fusion are per-element, never stored)."""
    kept, keep = [], True
    for line in hlo.splitlines():
        if line and not line.startswith(" "):
            keep = "_computation" not in line.split(" ")[0]
        if keep:
            kept.append(line)
    return "\n".join(kept)


def _assert_no_cache_copy(hlo: str, shapes: set[tuple]):
    copied = [m for m in COPY.findall(hlo) if tuple(int(d) for d in m.split(",") if d) in shapes]
    assert not copied, f"the decode loop copies cache buffers of shapes {sorted(set(copied))}"


@pytest.mark.parametrize("config", [tiny_model_config(), tiny_ssm_config("hybrid")],
                         ids=["transformer", "hybrid"])
def test_ar_loop_updates_caches_in_place(monkeypatch, config):
    model = build_model(config)
    params = model.init(jax.random.key(0))
    hlo = _compiled_loop(monkeypatch, ar, lambda: ar.generate(
        model, params, PROMPTS, max_new_tokens=8, eos_id=-1, pad_id=PAD_ID, max_len=64))
    _assert_no_cache_copy(hlo, _cache_shapes(model, len(PROMPTS), 64))


def test_speculative_loop_updates_caches_in_place(monkeypatch, tiny_model_and_params):
    target, params = tiny_model_and_params
    draft = build_model(tiny_model_config(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                          mlp_dim=64))
    draft_params = draft.init(jax.random.key(1))
    for drafter, drafter_params in [(PromptLookup(num_draft=3), None),
                                    (DraftModelChain(draft, num_draft=3), draft_params)]:
        hlo = _compiled_loop(monkeypatch, speculative, lambda: speculative.generate(
            target, params, PROMPTS, drafter=drafter, drafter_params=drafter_params,
            max_new_tokens=8, eos_id=-1, pad_id=PAD_ID, max_len=64))
        monkeypatch.undo()
        _assert_no_cache_copy(hlo, _cache_shapes(target, len(PROMPTS), 64)
                              | _cache_shapes(draft, len(PROMPTS), 64))


def test_next_block_loop_updates_caches_in_place(monkeypatch, tiny_model_and_params):
    model, params = tiny_model_and_params
    hlo = _compiled_loop(monkeypatch, next_block, lambda: next_block.generate(
        model, params, PROMPTS, block_size=2, max_new_tokens=8, eos_id=-1, pad_id=PAD_ID,
        max_len=64))
    _assert_no_cache_copy(hlo, _cache_shapes(model, len(PROMPTS), 64))


def test_bfloat16_cache_is_never_widened(monkeypatch):
    """XLA:CPU scatters into a 16-bit array by converting all of it to float32 and back, which
    cost 4.4 ms of a 10 ms batch-16 step; the commit must keep a bfloat16 cache in bfloat16.
    The cache is 48 long, not 64: the prefill's attention products over its 32-token prompt
    bucket, 2 query heads per KV head, are float32 [2, 2, 64, 16], a 64-long cache's shape."""
    model = build_model(tiny_model_config(dtype="bfloat16", param_dtype="bfloat16"))
    params = model.init(jax.random.key(0))
    hlo = _compiled_loop(monkeypatch, ar, lambda: ar.generate(
        model, params, PROMPTS, max_new_tokens=8, eos_id=-1, pad_id=PAD_ID, max_len=48))
    wide = {",".join(map(str, s)) for s in _cache_shapes(model, len(PROMPTS), 48)}
    widened = [m for m in re.findall(r"= f32\[([\d,]*)\]", _unfused(hlo)) if m in wide]
    assert not widened, f"the decode loop holds float32 copies of the cache: {sorted(set(widened))}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_commit_writes_each_rows_accepted_path(dtype):
    """commit_kv (scatter, or one select pass for 16-bit caches on CPU) against a plain loop:
    ragged acceptance, a path out of node order, and writes past the cache end dropped."""
    b, t, k, d, s = 3, 4, 2, 8, 6
    rng = np.random.default_rng(0)
    cache = rng.normal(size=(b, k, s, d)).astype(np.float32)
    pending = rng.normal(size=(b, t, k, d)).astype(np.float32)
    lengths = np.array([0, 2, 4], np.int32)
    path = np.array([[0, 2, 3], [0, 1, 3], [0, 3, 2]], np.int32)
    n_accepted = np.array([3, 1, 3], np.int32)  # row 2: its third write falls past S = 6
    kv = KVCache((jnp.asarray(cache, dtype),), (jnp.asarray(cache, dtype),),
                 jnp.asarray(lengths), s)
    pend_kv = KVPending((jnp.asarray(pending, dtype),), (jnp.asarray(pending, dtype),))
    out = jax.jit(commit_kv)(kv, pend_kv, jnp.asarray(path), jnp.asarray(n_accepted))
    want = np.array(jnp.asarray(cache, dtype).astype(jnp.float32))
    pend = np.asarray(jnp.asarray(pending, dtype).astype(jnp.float32))
    for row in range(b):
        for j in range(n_accepted[row]):
            if lengths[row] + j < s:
                want[row, :, lengths[row] + j] = pend[row, path[row, j]]
    for got in (out.k[0], out.v[0]):
        assert got.dtype == jnp.dtype(dtype)
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), want)
    np.testing.assert_array_equal(out.lengths, [3, 3, 6])
