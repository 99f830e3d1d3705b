"""TokenDense: one 2-D GEMM over flattened tokens; in bfloat16 every GEMM (forward, input and
weight gradients) reads bfloat16 and accumulates in float32 (XLA:CPU's fast bfloat16 GEMM), with
the same numbers as float32 maths on the bfloat16 values."""

import re

import chex
import jax
import jax.numpy as jnp
import pytest

from zoo.layers.params import dense
from zoo.platform import CPU_WORKAROUND

from conftest import lowered_text


def _layer(dtype, in_axes, features):
    return dense(features, ("heads", "head_dim", "embed")[-in_axes - 1:] if in_axes == 2
                 else ("embed", "mlp"), dtype=dtype, param_dtype=jnp.float32, init_std=0.5,
                 name="d", in_axes=in_axes)


@pytest.mark.parametrize("in_axes, x_shape, features", [(1, (3, 5, 8), 6), (2, (3, 5, 2, 4), 6),
                                                         (1, (3, 5, 8), (2, 3))])
def test_float32_is_the_plain_contraction(in_axes, x_shape, features):
    x = jax.random.normal(jax.random.key(0), x_shape)
    layer = _layer(jnp.float32, in_axes, features)
    params = layer.init(jax.random.key(1), x)
    kernel = params["params"]["kernel"].unbox()
    lead = "".join("abc"[:len(x_shape) - in_axes])
    ins = "xy"[:in_axes]
    outs = "uv"[:kernel.ndim - in_axes]
    want = jnp.einsum(f"{lead}{ins},{ins}{outs}->{lead}{outs}", x, kernel)
    chex.assert_trees_all_close(layer.apply(params, x), want, atol=1e-5, rtol=1e-5)


def test_bfloat16_gemms_accumulate_in_float32_and_match_float32_maths():
    x = jax.random.normal(jax.random.key(0), (4, 16, 32), jnp.bfloat16)
    cot = jax.random.normal(jax.random.key(2), (4, 16, 24))
    layer = _layer(jnp.bfloat16, 1, 24)
    params = layer.init(jax.random.key(1), x)

    def loss(params, x):
        return jnp.sum(layer.apply(params, x).astype(jnp.float32) * cot)

    grad = jax.grad(loss, argnums=(0, 1))
    dots = [e for e in _eqns(jax.make_jaxpr(grad)(params, x).jaxpr)
            if e.primitive.name == "dot_general"]
    assert len(dots) == 3  # forward, input gradient, weight gradient
    for eqn in dots:  # none rounds its result to bfloat16
        assert eqn.outvars[0].aval.dtype == jnp.float32, eqn
    for eqn in dots:  # forward and both gradients read bfloat16 (AMX), none upcasts first
        assert {v.aval.dtype for v in eqn.invars} == {jnp.dtype(jnp.bfloat16)}, eqn

    # Numbers: float32 maths on the bfloat16-rounded input and kernel.
    kernel = params["params"]["kernel"].unbox()
    k16 = kernel.astype(jnp.bfloat16).astype(jnp.float32)
    y = layer.apply(params, x)
    assert y.dtype == jnp.bfloat16
    chex.assert_trees_all_equal(y, jnp.einsum("btk,kn->btn", x.astype(jnp.float32),
                                              k16).astype(jnp.bfloat16))
    (g_params, g_x) = grad(params, x)
    assert g_params["params"]["kernel"].unbox().dtype == jnp.float32 and g_x.dtype == jnp.bfloat16
    want_k = jnp.einsum("btk,btn->kn", x.astype(jnp.float32),
                        cot.astype(jnp.bfloat16).astype(jnp.float32))
    chex.assert_trees_all_close(g_params["params"]["kernel"].unbox(), want_k, rtol=1e-2,
                                atol=1e-2 * float(jnp.max(jnp.abs(want_k))))
    want_x = jnp.einsum("btn,kn->btk", cot.astype(jnp.bfloat16).astype(jnp.float32), k16)
    chex.assert_trees_all_close(g_x.astype(jnp.float32), want_x, rtol=2e-2,
                                atol=2e-2 * float(jnp.max(jnp.abs(want_x))))


@pytest.mark.parametrize("rows", [1, 3])
def test_bfloat16_gemms_of_few_rows_run_as_four_in_cpu_programs_only(rows):
    """A CPU workaround: XLA:CPU's 1-3 row bfloat16 GEMM is its slow path (10x at one row), so a
    program lowered for CPU pads such inputs to 4 rows, and each row's numbers are those of the
    same row in a 4-row input; a TPU or GPU program multiplies the rows it has. Read off the
    lowered modules, so it holds on any runner."""
    x4 = jax.random.normal(jax.random.key(0), (4, 32), jnp.bfloat16)
    layer = _layer(jnp.bfloat16, 1, 24)
    params = layer.init(jax.random.key(1), x4)
    for platform, gemm_rows in (("cpu", 4), ("tpu", rows), ("cuda", rows)):
        text = lowered_text(layer.apply, params, x4[:rows], platform=platform)
        dots = re.findall(r"stablehlo.dot_general .*: \(tensor<(\d+)x32xbf16>", text)
        assert dots == [str(gemm_rows)], (platform, dots)
        assert (CPU_WORKAROUND in text) == (platform == "cpu"), platform
    y = layer.apply(params, x4[:rows])
    assert y.shape == (rows, 24)
    chex.assert_trees_all_equal(y, layer.apply(params, x4)[:rows])


def _eqns(jaxpr):
    """Every equation of `jaxpr`, inside call-like ones (custom_vjp, pjit) too."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from _eqns(inner)
