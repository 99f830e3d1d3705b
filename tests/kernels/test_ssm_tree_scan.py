"""The Mamba2 (SSD) tree scan: the reference against a brute-force walk of every root-to-node path
(ALGORITHMS.md section 5), and every backend (XLA, Pallas TPU and GPU kernels in interpret mode)
against the reference; `node_state` and `path_state` against the reference's per-node states;
a given ancestor mask is the one the XLA path reads; dispatch errors; and
lowering of the kernels to Mosaic (TPU) and Triton (GPU) IR, as far as a CPU machine can take them.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from zoo_kernels.ssm_tree_scan import (api, gpu, node_state, path_state, reference,
                                       ssm_tree_scan, tpu, xla)
from zoo_kernels.trees import ancestor_mask, chain_parents

from conftest import lowered_text, random_parents

# Everything runs jitted: one compilation per shape instead of one per eager op.
IMPLEMENTATIONS = {
    "xla": jax.jit(xla.ssm_tree_scan),
    "pallas_tpu": jax.jit(functools.partial(
        tpu.ssm_tree_scan, interpret=pltpu.InterpretParams(out_of_bounds_reads="raise"))),
    "pallas_gpu": jax.jit(functools.partial(gpu.ssm_tree_scan, interpret=True)),
}
run_reference = jax.jit(reference.ssm_tree_scan)
reference_states = jax.jit(reference.node_states)
scan = jax.jit(ssm_tree_scan, static_argnames="backend")
state_after = jax.jit(node_state)
state_on_path = jax.jit(path_state)


def _parents(rng: np.random.Generator, t: int, kind: str) -> np.ndarray:
    """chain / star / bushy (uniformly random parent) / deep (parent among the two previous
    nodes) / forest (bushy, a quarter of the nodes new roots)."""
    if kind == "bushy":
        return random_parents(rng, t, "random")
    if kind == "deep":
        return np.array([-1] + [i - 1 - int(rng.integers(0, min(i, 2))) for i in range(1, t)])
    if kind == "forest":
        return np.array([-1] + [-1 if rng.random() < 0.25 else int(rng.integers(0, i))
                                for i in range(1, t)])
    return random_parents(rng, t, kind)


def _inputs(seed, bt, t, h, g, p, n, kind, dtype=jnp.float32, dt_scale=1.0):
    """Random scan inputs in the contract's dtypes; h0 non-zero, dt = softplus(normal - 1).
    Drawn with numpy: eager jax.random would compile once per shape, which dominates the tests."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, np.float32)  # noqa: E731
    x = jnp.asarray(normal(bt, t, h, p), dtype)
    dt = jnp.asarray(dt_scale * np.logaddexp(0.0, normal(bt, t, h) - 1.0), dtype)
    A = jnp.asarray(-np.exp(rng.uniform(-1.5, 1.0, h)), jnp.float32)
    B = jnp.asarray(normal(bt, t, g, n), dtype)
    C = jnp.asarray(normal(bt, t, g, n), dtype)
    D = jnp.asarray(normal(h))
    h0 = jnp.asarray(normal(bt, h, p, n))
    parents = jnp.asarray(np.stack([_parents(rng, t, kind) for _ in range(bt)]), jnp.int32)
    return x, dt, A, B, C, D, h0, parents


def brute_force(x, dt, A, B, C, D, h0, parents):
    """float64 numpy: for every node and head, walk the root-to-node path and run the plain
    recurrence h = exp(dt A) h + dt x Bᵀ from h0. Returns (y, log_decay, per-node states)."""
    x, dt, A, B, C, D, h0 = (np.asarray(a, np.float64) for a in (x, dt, A, B, C, D, h0))
    parents = np.asarray(parents)
    bt, t, h, p = x.shape
    heads_per_group = h // B.shape[2]
    y, log_decay = np.zeros(x.shape), np.zeros(dt.shape)
    states = np.zeros((bt, t, h, p, B.shape[3]))
    for b in range(bt):
        for i in range(t):
            path, j = [], i
            while j >= 0:
                path.append(j)
                j = parents[b, j]
            for head in range(h):
                group = head // heads_per_group
                state, s = h0[b, head].copy(), 0.0
                for j in reversed(path):
                    state = (np.exp(dt[b, j, head] * A[head]) * state
                             + dt[b, j, head] * np.outer(x[b, j, head], B[b, j, group]))
                    s += dt[b, j, head] * A[head]
                y[b, i, head] = state @ C[b, i, group] + D[head] * x[b, i, head]
                log_decay[b, i, head], states[b, i, head] = s, state
    return y, log_decay, states


@jax.jit
def sequential_scan(x, dt, A, B, C, D, h0):
    """Plain Mamba2 decoding, one token after another (a lax.scan over T, no tree)."""
    heads_per_group = x.shape[2] // B.shape[2]
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731

    def token(state, inputs):
        x_t, dt_t, b_t, c_t = inputs
        b_t, c_t = (jnp.repeat(f32(v), heads_per_group, axis=1) for v in (b_t, c_t))
        state = (jnp.exp(f32(dt_t) * A)[..., None, None] * state
                 + jnp.einsum("bhp,bhn->bhpn", f32(dt_t)[..., None] * f32(x_t), b_t))
        return state, jnp.einsum("bhpn,bhn->bhp", state, c_t) + D[:, None] * f32(x_t)

    _, y = jax.lax.scan(token, h0, tuple(jnp.moveaxis(a, 1, 0) for a in (x, dt, B, C)))
    return jnp.moveaxis(y, 0, 1).astype(x.dtype)


def _assert_close(got, want, rtol):
    """Relative to the largest magnitude of `want`, so near-zero entries do not dominate."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("bt, t, h, g, p, n, kind", [
    (1, 1, 2, 1, 3, 2, "chain"), (2, 7, 4, 2, 4, 3, "bushy"), (1, 9, 2, 1, 3, 5, "forest"),
    (2, 6, 4, 1, 2, 4, "deep"), (1, 5, 2, 2, 2, 2, "star")])
def test_reference_equals_brute_force_path_walk(bt, t, h, g, p, n, kind):
    args = _inputs(t * 10 + bt, bt, t, h, g, p, n, kind)
    want_y, want_s, want_states = brute_force(*args)
    y, log_decay = run_reference(*args)
    x, dt, A, B, C, D, h0, parents = args
    _assert_close(y, want_y, 1e-5)
    _assert_close(log_decay, want_s, 1e-6)
    _assert_close(reference_states(x, dt, A, B, h0, parents), want_states, 1e-5)


# (batch, nodes T, heads H, groups G, head dim P, state dim N, tree, dtype): T in {1, 7, 16, 64},
# batch 1-3, G 1 and 2, P and N in {16, 32, 64}, every tree kind, float32 and bfloat16.
CASES = [
    (1, 1, 2, 1, 16, 16, "chain", jnp.float32),
    (2, 7, 4, 2, 16, 32, "bushy", jnp.float32),
    (3, 16, 2, 1, 32, 16, "star", jnp.bfloat16),
    (2, 16, 4, 2, 16, 64, "forest", jnp.float32),
    (1, 64, 4, 2, 16, 16, "deep", jnp.float32),
    (2, 64, 2, 1, 32, 32, "bushy", jnp.bfloat16),
    (3, 7, 2, 2, 64, 16, "chain", jnp.bfloat16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}-t{}-h{}-g{}-p{}-n{}-{}-{}".format(
    *c[:7], jnp.dtype(c[7]).name))
@pytest.mark.parametrize("backend", list(IMPLEMENTATIONS))
def test_backend_equals_reference(backend, case):
    *shape, kind, dtype = case
    args = _inputs(sum(shape), *shape, kind, dtype)
    want_y, want_s = run_reference(*args)
    y, log_decay = IMPLEMENTATIONS[backend](*args)
    assert y.dtype == dtype and y.shape == args[0].shape
    assert log_decay.dtype == jnp.float32 and log_decay.shape == args[1].shape
    _assert_close(y, want_y, 2e-2 if dtype == jnp.bfloat16 else 1e-4)
    _assert_close(log_decay, want_s, 1e-5)


@pytest.mark.parametrize("backend", ["reference", *IMPLEMENTATIONS])
def test_chain_equals_sequential_decoding(backend):
    args = _inputs(3, 2, 16, 4, 2, 16, 16, "chain")
    y, _ = scan(*args, backend=backend)
    _assert_close(y, sequential_scan(*args[:7]), 1e-4)


@pytest.mark.parametrize("backend", ["reference", *IMPLEMENTATIONS])
def test_steep_decays_stay_finite(backend):
    """Large steps: S of sibling branches differs by more than float32's exp range (~88), so
    exp(S_i - S_j) would be inf off the ancestor mask (and inf * 0 = nan) if it were not masked
    before exponentiating."""
    args = _inputs(4, 1, 16, 2, 1, 16, 16, "star", dt_scale=300.0)
    want_y, want_s = run_reference(*args)
    assert float(np.ptp(np.asarray(want_s), axis=1).max()) > 89  # some head overflows
    y, log_decay = scan(*args, backend=backend)
    assert np.isfinite(np.asarray(y)).all()
    _assert_close(y, want_y, 1e-4)
    _assert_close(log_decay, want_s, 1e-5)


@pytest.mark.parametrize("bt, t, h, g, kind, nodes", [
    (3, 7, 4, 2, "bushy", [6, -1, 3]), (2, 16, 2, 1, "forest", [0, 15]),
    (1, 1, 2, 2, "chain", [-1])])
def test_node_state_equals_reference_states(bt, t, h, g, kind, nodes):
    x, dt, A, B, C, D, h0, parents = _inputs(t + bt, bt, t, h, g, 16, 32, kind)
    _, log_decay = scan(x, dt, A, B, C, D, h0, parents, backend="xla")
    node = jnp.asarray(nodes, jnp.int32)
    got = state_after(x, dt, B, log_decay, h0, parents, node)
    states = reference_states(x, dt, A, B, h0, parents)
    want = np.stack([h0[b] if i < 0 else states[b, i] for b, i in enumerate(nodes)])
    assert got.shape == h0.shape and got.dtype == jnp.float32
    _assert_close(got, want, 1e-5)


@pytest.mark.parametrize("bt, t, h, g, kind, nodes", [
    (3, 7, 4, 2, "bushy", [6, -1, 3]), (2, 16, 2, 1, "forest", [0, 15])])
def test_path_state_equals_reference_states(bt, t, h, g, kind, nodes):
    """The state after a node from its root-to-node path as a mask (what a commit reads off the
    accepted path; no nodes for -1)."""
    x, dt, A, B, C, D, h0, parents = _inputs(t + bt, bt, t, h, g, 16, 32, kind)
    _, log_decay = scan(x, dt, A, B, C, D, h0, parents, backend="xla")
    on_path = np.zeros((bt, t), bool)
    for row, node in enumerate(nodes):
        while node >= 0:
            on_path[row, node], node = True, int(parents[row, node])
    got = state_on_path(x, dt, B, log_decay, h0, jnp.asarray(on_path), jnp.asarray(nodes))
    states = reference_states(x, dt, A, B, h0, parents)
    want = np.stack([h0[b] if i < 0 else states[b, i] for b, i in enumerate(nodes)])
    assert got.shape == h0.shape and got.dtype == jnp.float32
    _assert_close(got, want, 1e-5)


def test_xla_path_reads_the_ancestor_mask_it_is_given():
    """A model builds the mask once per extend for all layers: the XLA path uses the one it is
    given (here a chain's while parents say star, so the result is the chain's), and names a
    misshapen one."""
    args = _inputs(5, 2, 9, 4, 2, 16, 16, "star")
    chain = jnp.broadcast_to(chain_parents(9), (2, 9))
    want_y, want_s = run_reference(*args[:7], chain)
    got_y, got_s = jax.jit(functools.partial(ssm_tree_scan, backend="xla"))(
        *args, ancestors=ancestor_mask(chain))
    _assert_close(got_y, want_y, 1e-4)
    _assert_close(got_s, want_s, 1e-5)
    with pytest.raises(ValueError, match=re.escape(
            "ssm_tree_scan: ancestors has shape (2, 9, 8), expected (2, 9, 9)")):
        ssm_tree_scan(*args, backend="xla", ancestors=jnp.zeros((2, 9, 8), bool))


def test_committed_state_continues_the_decode():
    """The commit path of speculative decoding: the state after the accepted node of one tree,
    as the h0 of the next tree, continues exactly as a plain decode of the accepted path and then
    the next tokens."""
    x, dt, A, B, C, D, h0, parents = _inputs(6, 1, 7, 4, 2, 16, 16, "bushy")
    accepted, path = 6, []
    while accepted >= 0:
        path.insert(0, accepted)
        accepted = int(parents[0, accepted])
    _, log_decay = scan(x, dt, A, B, C, D, h0, parents, backend="xla")
    committed = state_after(x, dt, B, log_decay, h0, parents, jnp.asarray([path[-1]], jnp.int32))
    nx, ndt, _, nB, nC, _, _, chain = _inputs(7, 1, 5, 4, 2, 16, 16, "chain")
    y_next, _ = scan(nx, ndt, A, nB, nC, D, committed, chain, backend="xla")
    then = lambda drafted, after: jnp.concatenate([drafted[:, path], after], 1)  # noqa: E731
    want = sequential_scan(then(x, nx), then(dt, ndt), A, then(B, nB), then(C, nC), D, h0)
    _assert_close(y_next, want[:, len(path):], 1e-5)


def test_unknown_backend_is_rejected():
    args = _inputs(0, 1, 4, 2, 1, 16, 16, "chain")
    with pytest.raises(ValueError, match="unknown ssm_tree_scan backend 'cuda'"):
        ssm_tree_scan(*args, backend="cuda")


@pytest.mark.parametrize("index, name, bad_shape, expected", [
    (1, "dt", (2, 5, 4), (2, 6, 4)),
    (2, "A", (2,), (4,)),
    (4, "C", (2, 6, 1, 32), (2, 6, 2, 32)),
    (5, "D", (4, 1), (4,)),
    (6, "h0", (2, 4, 32, 16), (2, 4, 16, 32)),
    (7, "parents", (2, 7), (2, 6)),
])
def test_inconsistent_shapes_are_named(index, name, bad_shape, expected):
    args = list(_inputs(0, 2, 6, 4, 2, 16, 32, "bushy"))
    args[index] = jnp.zeros(bad_shape, args[index].dtype)
    with pytest.raises(ValueError, match=re.escape(
            f"ssm_tree_scan: {name} has shape {bad_shape}, expected {expected}")):
        ssm_tree_scan(*args, backend="reference")


def test_heads_must_split_into_groups_and_node_must_match_batch():
    x, dt, A, B, C, D, h0, parents = _inputs(0, 2, 6, 4, 2, 16, 32, "bushy")
    three_groups = jnp.zeros((2, 6, 3, 32))
    with pytest.raises(ValueError, match="4 heads .* not a multiple of 3 groups"):
        ssm_tree_scan(x, dt, A, three_groups, three_groups, D, h0, parents)
    with pytest.raises(ValueError, match=r"B has shape \(2, 5, 2, 32\), expected \(2, 6, G, N\)"):
        ssm_tree_scan(x, dt, A, B[:, :5], C, D, h0, parents)
    _, log_decay = scan(x, dt, A, B, C, D, h0, parents)
    with pytest.raises(ValueError, match=r"node_state: node has shape \(3,\), expected \(2,\)"):
        node_state(x, dt, B, log_decay, h0, parents, jnp.zeros((3,), jnp.int32))


def test_auto_picks_the_platform_kernel():
    x, b = jnp.zeros((1, 7, 4, 64)), jnp.zeros((1, 7, 1, 64))
    assert api.resolve_backend("auto", x, b, platform="cpu") == "xla"
    for platform, kernel in (("tpu", "pallas_tpu"), ("gpu", "pallas_gpu")):
        assert api.resolve_backend("auto", x, b, platform=platform) == kernel
    # Shapes the GPU kernel cannot take fall back to XLA under auto, and are errors if forced.
    for odd_x, odd_b, message in (
            (jnp.zeros((1, 7, 4, 48)), b, "power-of-two head dim P >= 16, got 48"),
            (x, jnp.zeros((1, 7, 1, 8)), "power-of-two state dim N >= 16, got 8"),
            (jnp.zeros((1, 200, 4, 64)), jnp.zeros((1, 200, 1, 64)), "at most 128 nodes, got 200")):
        assert api.resolve_backend("auto", odd_x, odd_b) == "xla"
        with pytest.raises(ValueError, match=message):
            api.resolve_backend("pallas_gpu", odd_x, odd_b)


def test_gpu_kernel_rejects_unsupported_shapes_itself():
    args = _inputs(0, 1, 4, 2, 1, 24, 16, "chain")
    with pytest.raises(ValueError, match="power-of-two head dim P >= 16, got 24"):
        gpu.ssm_tree_scan(*args, interpret=True)


def test_tpu_kernel_takes_trees_that_fit_in_vmem_only():
    shape = lambda t: (jnp.zeros((1, t, 8, 64)), jnp.zeros((1, t, 1, 128)))  # noqa: E731
    assert api.resolve_backend("pallas_tpu", *shape(512)) == "pallas_tpu"
    with pytest.raises(ValueError, match="a tree of 1024 nodes needs ~41 MiB of VMEM"):
        api.resolve_backend("pallas_tpu", *shape(1024))
    assert api.resolve_backend("auto", *shape(1024), platform="tpu") == "xla"


def _abstract_args(dtype):
    bt, t, h, g, p, n = 2, 7, 8, 2, 64, 128
    sd = jax.ShapeDtypeStruct
    return (sd((bt, t, h, p), dtype), sd((bt, t, h), dtype), sd((h,), jnp.float32),
            sd((bt, t, g, n), dtype), sd((bt, t, g, n), dtype), sd((h,), jnp.float32),
            sd((bt, h, p, n), jnp.float32), sd((bt, t), jnp.int32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("platform, kernel, marker", [
    ("tpu", tpu.ssm_tree_scan, "tpu_custom_call"),
    ("cuda", gpu.ssm_tree_scan, "xla.gpu.triton"),
])
def test_kernel_lowers_for_its_platform(platform, kernel, marker, dtype):
    lowered = jax.jit(kernel).trace(*_abstract_args(dtype)).lower(lowering_platforms=(platform,))
    assert marker in lowered.as_text()


@pytest.mark.parametrize("backend, want", [
    ("auto", {"cpu": (False, False), "tpu": (True, False), "cuda": (False, True)}),
    ("xla", {"cpu": (False, False), "tpu": (False, False), "cuda": (False, False)}),
])
def test_backends_are_chosen_for_the_platform_a_program_is_lowered_for(backend, want):
    """(Mosaic call, Triton call) in the module lowered for each platform: `auto` is the
    platform's kernel."""
    for platform, calls in want.items():
        text = lowered_text(functools.partial(ssm_tree_scan, backend=backend),
                            *_abstract_args(jnp.bfloat16), platform=platform)
        assert ("tpu_custom_call" in text, "xla.gpu.triton" in text) == calls, platform
