"""Llama-style decoder-only transformer: RMSNorm, RoPE, SwiGLU, grouped-query attention (with
Qwen2's q/k/v biases and Qwen3's q/k norms when the config asks).

`Transformer` is the linen module; `TransformerLM` wraps it as a `DecodingModel` (init, forward,
prefill / extend / commit over an explicit `KVCache`).

Training follows `model.scan_layers` and `model.remat` (as MaxText's decoder does): scanned, one
period of the layer pattern is compiled once and `nn.scan` repeats it, its params stacked under
"layers" (`zoo.models.stacking`); remat wraps each block (or the scanned period) in `nn.remat`
with the chosen `jax.checkpoint_policies` policy. Decoding runs the blocks one by one on
per-layer params and per-layer caches, never remat: `init` gives the training layout, `forward`
takes either, `prefill`/`extend` the per-layer one (`stacking` says why).
"""

import dataclasses
import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo_kernels.trees import node_depths
from zoo.config import ModelConfig
from zoo.layers.attention import Attention, attention_mask, mask_positions
from zoo.layers.kv_cache import KVCache, KVPending, commit_kv
from zoo.layers.mlp import SwiGLU
from zoo.layers.params import dense, rms_norm
from zoo.layers.rope import Rope
from zoo.models.protocol import after_forward
from zoo.models.stacking import LAYERS, is_stacked, stack_layers
from zoo.parallel import Layout, constrain

# Logical names of activation and cache dimensions (parameters name theirs in their initializers).
RESIDUAL = ("batch", "length", None)
KV_CACHE = ("batch", "kv_heads", None, None)  # one layer's [B, K, S, D]


def rematted(cls, remat: str, prevent_cse: bool = True):
    """`cls` under `nn.remat` with `model.remat`'s policy ("full": save nothing; "none": `cls`
    itself). Under `nn.scan` pass prevent_cse=False: the scan already keeps XLA from merging the
    recomputation into the forward, and the barriers would only slow it."""
    if remat == "none":
        return cls
    policy = None if remat == "full" else getattr(jax.checkpoint_policies, remat)
    return nn.remat(cls, policy=policy, prevent_cse=prevent_cse)


class Block(nn.Module):
    """Pre-norm attention then pre-norm SwiGLU, each added to the residual stream."""

    config: ModelConfig
    backend: str

    def setup(self):
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        self.attn_norm = rms_norm(c.norm_eps, name="attn_norm", **kw)
        self.attn = Attention(c.n_heads, c.n_kv_heads, c.resolved_head_dim, c.d_model,
                              Rope.of(c), init_std=c.init_std, backend=self.backend,
                              qkv_bias=c.qkv_bias, qk_norm=c.qk_norm, norm_eps=c.norm_eps, **kw)
        self.mlp_norm = rms_norm(c.norm_eps, name="mlp_norm", **kw)
        self.mlp = SwiGLU(c.d_model, c.mlp_dim, init_std=c.init_std, **kw)

    def __call__(self, x, positions, mask=None, kv_context=None):
        """kv_context None: full-sequence attention under `mask`; else (k_cache, v_cache,
        cache_len, parents) for a tree extend. Returns (x, (k, v))."""
        h = self.attn_norm(x)
        if kv_context is None:
            h, kv = self.attn(h, positions, mask)
        else:
            h, kv = self.attn.extend(h, positions, *kv_context)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), kv


class Period(nn.Module):
    """One period of the layer pattern over whole sequences: the body `nn.scan` repeats. Its
    blocks (one class per layer kind, in pattern order) are block_0, block_1, ..."""

    config: ModelConfig
    backend: str
    layout: Layout | None
    classes: tuple  # a block class per layer of the period

    @nn.compact
    def __call__(self, x, positions, mask):
        for j, cls in enumerate(self.classes):
            x, _ = cls(self.config, self.backend, name=f"block_{j}")(x, positions, mask)
            x = constrain(self.layout, x, RESIDUAL)
        return x, None


class Transformer(nn.Module):
    """Embedding, the blocks of `config.layers`, final norm, LM head."""

    config: ModelConfig
    backend: str = "auto"
    layout: Layout | None = None  # constrains the residual stream's sharding when set
    scanned: bool = False  # blocks under nn.scan (training only: no caches in or out)
    remat: str = "none"  # model.remat of the blocks (training; decoding keeps "none")

    def setup(self):
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        self.embed = nn.Embed(c.vocab_size, c.d_model, name="embed", embedding_init=(
            nn.with_logical_partitioning(nn.initializers.normal(c.init_std), ("vocab", "embed"))),
            **kw)
        self.blocks = self.make_blocks()
        self.final_norm = rms_norm(c.norm_eps, name="final_norm", **kw)
        if not c.tie_embeddings:
            self.lm_head = dense(c.vocab_size, ("embed", "vocab"), init_std=c.init_std,
                                 name="lm_head", **kw)

    def block_class(self, kind: str):
        """The module of layer kind `kind` (subclasses add other kinds)."""
        return Block

    def make_blocks(self):
        """The residual blocks, named block_0, block_1, ...; scanned, one `nn.scan` named
        "layers" over repeats of `config.scan_period`."""
        c = self.config
        if not self.scanned:
            return [rematted(self.block_class(kind), self.remat)(c, self.backend,
                                                                 name=f"block_{i}")
                    for i, kind in enumerate(c.layers)]
        scan = nn.scan(rematted(Period, self.remat, prevent_cse=False),
                       variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast, nn.broadcast),
                       length=c.n_layers // len(c.scan_period),
                       metadata_params={nn.PARTITION_NAME: LAYERS})
        classes = tuple(self.block_class(kind) for kind in c.scan_period)
        return scan(c, self.backend, self.layout, classes, name=LAYERS)

    def run_scanned(self, tokens, positions, mask, logits_at):
        """(logits, hidden, None): the whole sequence through the scanned blocks."""
        x = constrain(self.layout, self.embed(tokens), RESIDUAL)
        x, _ = self.blocks(x, positions, mask)
        return *self.head(x, logits_at), None

    def head(self, x, logits_at=None):
        """(logits float32 [B, T, V], hidden [B, T, E]) from the last block's output; with
        `logits_at` int32[B, K] the logits of those positions only, [B, K, V] (a prompt's
        [B, T, V] logits can dwarf the rest of a prefill)."""
        hidden = self.final_norm(x)
        read = hidden if logits_at is None else jnp.take_along_axis(
            hidden, logits_at[..., None].astype(jnp.int32), axis=1)
        logits = self.embed.attend(read) if self.config.tie_embeddings else self.lm_head(read)
        return logits.astype(jnp.float32), hidden

    def __call__(self, tokens, positions, mask=None, cache=None, parents=None, logits_at=None):
        """Returns (logits float32 [B, T, V], hidden [B, T, E], (k, v)): k, v one [B, T, K, D] per
        layer (tuples).

        Without `cache`: full-sequence attention under `mask`. With `cache` (a KVCache) and
        `parents`: the tokens are tree nodes extending the committed cache. `logits_at`: see
        `head`. Scanned: no cache, and None in place of (k, v).
        """
        if self.scanned:
            return self.run_scanned(tokens, positions, mask, logits_at)
        x = constrain(self.layout, self.embed(tokens), RESIDUAL)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            context = None if cache is None else (cache.k[i], cache.v[i], cache.lengths, parents)
            x, (k, v) = block(x, positions, mask, context)
            x = constrain(self.layout, x, RESIDUAL)
            ks.append(k)
            vs.append(v)
        logits, hidden = self.head(x, logits_at)
        return logits, hidden, (tuple(ks), tuple(vs))


def constrain_kv(layout: Layout | None, cache: KVCache) -> KVCache:
    return KVCache(tuple(constrain(layout, k, KV_CACHE) for k in cache.k),
                   tuple(constrain(layout, v, KV_CACHE) for v in cache.v),
                   constrain(layout, cache.lengths, ("batch",)), cache.max_len)


@dataclasses.dataclass(frozen=True)
class TransformerLM:
    """`Transformer` as a DecodingModel: pure functions of (params, arrays)."""

    config: ModelConfig
    kernel_backend: str = "auto"
    layout: Layout | None = None  # a mesh: activations and caches are sharded over it
    backbone: ClassVar[type] = Transformer

    @property
    def module(self) -> Transformer:
        """The decoding module: per-layer blocks, no remat."""
        return self.backbone(self.config, self.kernel_backend, self.layout)

    def training_module(self, scanned: bool) -> Transformer:
        return self.backbone(self.config, self.kernel_backend, self.layout, scanned,
                             self.config.remat)

    def decoding_module(self, params) -> Transformer:
        """`module`, after checking `params` are per-layer."""
        if is_stacked(params):
            raise ValueError(
                "decoding reads per-layer params (block_0, block_1, ...); these are stacked "
                f"under {LAYERS!r} (model.scan_layers=true, the training layout). Convert them "
                "once with zoo.models.stacking.unstack_layers(params, config), as "
                "zoo.runs.load_run does: slicing the stack in every step would copy the weights")
        return self.module

    def constrain_cache(self, cache: KVCache) -> KVCache:
        """The cache sharded by batch row and KV head (a no-op without a layout)."""
        return constrain_kv(self.layout, cache)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _init_boxed(self, rng, scanned: bool):
        tokens = jnp.zeros((1, 1), jnp.int32)
        return self.training_module(scanned).init(rng, tokens, mask_positions("causal", 1),
                                                  attention_mask("causal", 1))["params"]

    def _init(self, rng):
        params = nn.unbox(self._init_boxed(rng, False))
        return stack_layers(params, self.config) if self.config.scan_layers else params

    def init(self, rng):
        """Params in the training layout (stacked when `config.scan_layers`): the per-layer
        init, stacked, so a seed gives the same model in either layout."""
        return jax.jit(self._init)(rng)

    def logical_axes(self):
        """Pytree of PartitionSpecs of logical axis names, matching `init`'s params."""
        init = functools.partial(self._init_boxed, scanned=self.config.scan_layers)
        return nn.get_partition_spec(jax.eval_shape(init, jax.random.key(0)))

    def forward(self, params, tokens, mask: str = "causal", block_size: int = 0, segment_ids=None,
                block_ids=None):
        """Full-sequence logits and hidden states under `mask` (see `attention_mask`), from
        stacked or per-layer params."""
        t = tokens.shape[1]
        logits, hidden, _ = self.training_module(is_stacked(params)).apply(
            {"params": params}, tokens, mask_positions(mask, t),
            attention_mask(mask, t, block_size, segment_ids, block_ids))
        return logits, hidden

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.config
        return KVCache.zeros(c.n_layers, batch, max_len, c.n_kv_heads, c.resolved_head_dim,
                             jnp.dtype(c.dtype))

    def prefill(self, params, tokens, lengths, max_len: int, mask: str = "causal",
                block_size: int = 0, block_ids=None, logits_at=None):
        """`mask`, `block_size`, `block_ids` as in `forward`: a next-block model prefills
        block-causally (each row's length then a whole number of blocks, so no real token sees a
        padding slot); a diffusion sampler gives per-row `block_ids`. `logits_at` int32[B, K]:
        return the logits of those positions only ([B, K, V]; default all)."""
        b, t = tokens.shape
        if t > max_len:
            raise ValueError(f"prompt block of length {t} does not fit a KV cache of {max_len}")
        logits, hidden, (k, v) = self.decoding_module(params).apply(
            {"params": params}, tokens, mask_positions("causal", t),
            attention_mask(mask, t, block_size, block_ids=block_ids), logits_at=logits_at)
        cache = self.init_cache(b, max_len).write_prefix(k, v, lengths)
        return logits, hidden, self.constrain_cache(cache)

    def extend(self, params, cache: KVCache, tokens, parents):
        parents = jnp.broadcast_to(parents, tokens.shape).astype(jnp.int32)
        positions = cache.lengths[:, None] + node_depths(parents)
        logits, hidden, (k, v) = self.decoding_module(params).apply(
            {"params": params}, tokens, positions, cache=cache, parents=parents)
        return logits, hidden, after_forward(KVPending(k, v), logits)

    def commit(self, cache: KVCache, pending: KVPending, path, n_accepted) -> KVCache:
        return self.constrain_cache(commit_kv(cache, pending, path, n_accepted))
