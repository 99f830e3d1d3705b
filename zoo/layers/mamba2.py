"""The Mamba2 mixer: input projection, short causal depthwise convolution, SSD, gated RMSNorm,
output projection (Dao & Gu, 2024).

One projection gives z (the gate), the convolution's input xBC = [x, B, C] and dt per head. After
the convolution and SiLU, x feeds the SSM, with a scalar A < 0 per head, dt = softplus(dt + bias)
and B, C shared by the heads of a group. The output is RMSNorm(y * silu(z)) projected back.

Whole sequences (training, prefill) run the chunked SSD from a zero state and return the layer's
cache for decoding: the last w - 1 convolution inputs and the SSM state, both at each row's own
length. `extend` runs T tree nodes on top of a cache: the convolution reads each node's ancestors
(reaching into the cached window above the root) and the SSM is the tree scan of
`zoo_kernels.ssm_tree_scan`; nothing is committed. What the layers read from the tree (the ancestor
mask, the convolution's taps) is an `ExtendTree`, built once per extend for all layers.
"""

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from zoo_kernels.ssm_tree_scan import ssm_tree_scan
from zoo_kernels.trees import ancestor_mask, as_chains, node_depths
from zoo.layers.params import dense
from zoo.layers.ssd import ssd_chunked
from zoo.layers.ssm_cache import advance_window


def causal_conv(inputs, weight, bias, window):
    """Depthwise causal convolution over a sequence: inputs [B, L, C], weight [w, C], bias [C],
    window [B, w - 1, C] the inputs before the first one (oldest first)."""
    w, length = weight.shape[0], inputs.shape[1]
    padded = jnp.concatenate([window.astype(inputs.dtype), inputs], axis=1)
    return sum(padded[:, j:j + length] * weight[j] for j in range(w)) + bias


def _conv_rows(parents, width: int):
    """int32[B, T, width]: the row of `window ++ inputs` ([B, width - 1 + T, C]) that each tap
    of each node's convolution reads, oldest tap first: the node's lag-th ancestor (lag =
    width - 1 - tap), or where its path is shorter, the cached window above its root."""
    chain, depth = as_chains(parents), node_depths(parents)
    ancestor = jnp.broadcast_to(jnp.arange(parents.shape[-1]), parents.shape)
    rows = [width - 1 + ancestor]  # lag 0: the node itself
    for lag in range(1, width):
        ancestor = jnp.where(ancestor >= 0, jnp.take_along_axis(
            chain, jnp.maximum(ancestor, 0), axis=-1), -1)  # the lag-th ancestor, or -1
        rows.append(jnp.where(ancestor >= 0, width - 1 + ancestor, width - 1 + depth - lag))
    return jnp.stack(rows[::-1], axis=-1)


def conv_taps(parents, width: int):
    """float32[B, T, width * M], one-hot, M = width - 1 + T: entry [b, i, k * M + m] is 1 where
    tap k (oldest first) of node i's convolution reads row m of `window ++ inputs`."""
    b, t = parents.shape
    one_hot = _conv_rows(parents, width)[..., None] == jnp.arange(width - 1 + t)
    return one_hot.reshape(b, t, -1).astype(jnp.float32)


def tree_conv(inputs, weight, bias, window, taps):
    """The same convolution over a tree: node i reads itself and its w - 1 nearest ancestors;
    where its path is shorter, the cached window above the root (ALGORITHMS.md section 5).

    inputs [B, T, C]; window [B, w - 1, C]; taps [B, T, w * (w - 1 + T)] from `conv_taps`.
    One matmul: the taps pick from every row of `window ++ inputs` scaled by every tap's weight.
    A gather instead would be a slow loop on XLA:CPU, which the SSM's consumers of the
    convolution would then re-run in each of their fusions; a matmul's result is computed once.
    """
    if inputs.shape[1] == 1:  # a lone node is a root: the sequence convolution, with slices
        return causal_conv(inputs, weight, bias, window)
    padded = jnp.concatenate([window.astype(inputs.dtype), inputs], axis=1)  # [B, M, C]
    scaled = weight[None, :, None, :] * padded[:, None]  # [B, w, M, C]
    scaled = scaled.reshape(padded.shape[0], -1, padded.shape[2])
    return jnp.einsum("bik,bkc->bic", taps.astype(inputs.dtype), scaled,
                      precision=jax.lax.Precision.HIGHEST) + bias


@flax.struct.dataclass
class ExtendTree:
    """The tree of one extend as every Mamba2 layer reads it, built once by `extend_tree`:
    parents int32[B, T]; ancestors bool[B, T, T] (`zoo_kernels.trees.ancestor_mask`); conv_taps
    float32[B, T, w * (w - 1 + T)] (`conv_taps`)."""

    parents: jnp.ndarray
    ancestors: jnp.ndarray
    conv_taps: jnp.ndarray


def extend_tree(parents, conv_width: int) -> ExtendTree:
    return ExtendTree(parents, ancestor_mask(parents), conv_taps(parents, conv_width))


def _dt_bias_init(dt_min=1e-3, dt_max=0.1):
    """Biases whose softplus is log-uniform in [dt_min, dt_max], as Mamba initialises them."""
    def init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape)
        dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)  # inverse softplus
    return init


def _a_log_init(key, shape, dtype=jnp.float32):
    return jnp.log(jax.random.uniform(key, shape, minval=1.0, maxval=16.0)).astype(dtype)


class Mamba2Mixer(nn.Module):
    d_model: int
    n_heads: int
    head_dim: int
    state_dim: int
    n_groups: int
    conv_width: int
    chunk_size: int
    norm_eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    init_std: float
    backend: str = "auto"  # zoo_kernels.ssm_tree_scan backend used by `extend`

    @property
    def d_inner(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.state_dim

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, init_std=self.init_std)
        self.in_proj = dense(self.d_inner + self.conv_dim + self.n_heads, ("embed", "ssm_proj"),
                             name="in_proj", **kw)
        param = lambda name, init, shape, axes: self.param(  # noqa: E731
            name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)
        bound = 1 / math.sqrt(self.conv_width)  # PyTorch's Conv1d default for a depthwise conv
        uniform = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)  # noqa: E731
        self.conv_weight = param("conv_weight", uniform, (self.conv_width, self.conv_dim),
                                 ("conv", "ssm_conv"))
        self.conv_bias = param("conv_bias", nn.initializers.zeros, (self.conv_dim,), ("ssm_conv",))
        self.dt_bias = param("dt_bias", _dt_bias_init(), (self.n_heads,), ("ssm_heads",))
        self.A_log = param("A_log", _a_log_init, (self.n_heads,), ("ssm_heads",))
        self.D = param("D", nn.initializers.ones, (self.n_heads,), ("ssm_heads",))
        self.norm_scale = param("norm_scale", nn.initializers.ones, (self.d_inner,), ("ssm_inner",))
        self.out_proj = dense(self.d_model, ("ssm_inner", "embed"), name="out_proj", **kw)

    def _project(self, u):
        zxbcdt = self.in_proj(u)
        z, xbc, dt = jnp.split(zxbcdt, [self.d_inner, self.d_inner + self.conv_dim], axis=-1)
        return z, xbc, dt

    def _conv_params(self):
        """(weight [w, C], oldest tap first; bias [C]) in the compute dtype."""
        return self.conv_weight.astype(self.dtype), self.conv_bias.astype(self.dtype)

    def _ssm_inputs(self, conv_out, dt):
        """(x [.., H, P], B [.., G, N], C [.., G, N], dt float32 [.., H], A [H], D [H])."""
        xbc = nn.silu(conv_out)
        x, b, c = jnp.split(xbc, [self.d_inner, self.d_inner + self.n_groups * self.state_dim],
                            axis=-1)
        lead = xbc.shape[:-1]
        dt = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias.astype(jnp.float32))
        return (x.reshape(*lead, self.n_heads, self.head_dim),
                b.reshape(*lead, self.n_groups, self.state_dim),
                c.reshape(*lead, self.n_groups, self.state_dim), dt,
                -jnp.exp(self.A_log.astype(jnp.float32)), self.D.astype(jnp.float32))

    def _output(self, y, z):
        """Gated RMSNorm, RMSNorm(y * silu(z)) over each B/C group's channels (as Mamba2's
        reference and transformers normalise), then the output projection."""
        lead = y.shape[:-2]
        g = (y.reshape(*lead, self.d_inner) * nn.silu(z)).astype(jnp.float32)
        g = g.reshape(*lead, self.n_groups, self.d_inner // self.n_groups)
        g = g * jax.lax.rsqrt(jnp.mean(g * g, axis=-1, keepdims=True) + self.norm_eps)
        g = g.reshape(*lead, self.d_inner) * self.norm_scale.astype(jnp.float32)
        return self.out_proj(g.astype(self.dtype))

    def __call__(self, u, lengths=None):
        """u [B, L, E] from a zero state -> (out [B, L, E], (conv window, SSM state)) where the
        cache entries are at each row's `lengths` (default L): positions past a row's length get
        dt = 0 and leave its state alone."""
        bsz, length, _ = u.shape
        z, xbc, dt = self._project(u)
        empty = jnp.zeros((bsz, self.conv_width - 1, self.conv_dim), xbc.dtype)
        x, b, c, dt, a, d = self._ssm_inputs(causal_conv(xbc, *self._conv_params(), empty), dt)
        lengths = jnp.full((bsz,), length, jnp.int32) if lengths is None else lengths
        dt = jnp.where(jnp.arange(length)[None, :, None] < lengths[:, None, None], dt, 0.0)
        y, state = ssd_chunked(x, dt, a, b, c, d, chunk_size=self.chunk_size)
        return self._output(y, z), (advance_window(empty, xbc, lengths), state)

    def extend(self, u, conv_window, ssm_state, tree: ExtendTree):
        """T tree nodes u [B, T, E] on top of the cache -> (out, pending pieces)."""
        z, xbc, dt = self._project(u)
        conv_out = tree_conv(xbc, *self._conv_params(), conv_window, tree.conv_taps)
        x, b, c, dt, a, d = self._ssm_inputs(conv_out, dt)
        y, log_decay = ssm_tree_scan(x, dt, a, b, c, d, ssm_state, tree.parents,
                                     backend=self.backend, ancestors=tree.ancestors)
        return self._output(y, z), (xbc, x, dt, b, log_decay)
