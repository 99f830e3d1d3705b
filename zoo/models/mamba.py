"""Mamba2 and hybrid (attention + Mamba2) language models behind the decoding protocol.

`config.layers` lists the blocks: "m" is RMSNorm -> Mamba2 mixer -> residual, "a" the
transformer's attention + SwiGLU block. A pure Mamba2 LM is all "m". The cache holds K/V for the
attention layers and (conv window, SSM state) for the Mamba2 layers; `extend` runs a token tree
through tree attention and the SSM tree scan, `commit` compacts the accepted K/V and moves every
Mamba2 layer to the accepted node's state. Decoding code cannot tell this model from the
transformer.
"""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import flax.struct
import jax.numpy as jnp

from zoo_kernels.trees import node_depths
from zoo.layers.attention import attention_mask, mask_positions
from zoo.layers.kv_cache import KVCache, KVPending, commit_kv
from zoo.layers.mamba2 import Mamba2Mixer, extend_tree
from zoo.layers.params import rms_norm
from zoo.layers.ssm_cache import SSMCache, SSMPending, commit_ssm
from zoo.models.protocol import after_forward
from zoo.models.transformer import RESIDUAL, Block, Transformer, TransformerLM, constrain_kv
from zoo.parallel import constrain

SSM_CONV = ("batch", None, None)  # one layer's [B, w - 1, C]
SSM_STATE = ("batch", "ssm_heads", None, None)  # one layer's [B, H, P, N]


@flax.struct.dataclass
class HybridCache:
    kv: KVCache  # the attention layers' (none for a pure Mamba2 model); kv.lengths per row
    ssm: SSMCache  # the Mamba2 layers'

    @property
    def lengths(self):
        return self.kv.lengths


@flax.struct.dataclass
class HybridPending:
    kv: KVPending
    ssm: SSMPending


class MambaBlock(nn.Module):
    """Pre-norm Mamba2 mixer added to the residual stream (no MLP)."""

    config: object
    backend: str

    def setup(self):
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        self.norm = rms_norm(c.norm_eps, name="norm", **kw)
        self.mixer = Mamba2Mixer(c.d_model, c.ssm_heads, c.ssm_head_dim, c.ssm_state_dim,
                                 c.ssm_groups, c.ssm_conv_width, c.ssm_chunk_size, c.norm_eps,
                                 init_std=c.init_std, backend=self.backend, **kw)

    def __call__(self, x, positions=None, mask=None, lengths=None):
        """Whole sequences from a zero state (causal by construction: `positions` and `mask`,
        there to match `Block`, are unused); the cache is taken at `lengths`."""
        out, cache = self.mixer(self.norm(x), lengths)
        return x + out, cache

    def extend(self, x, conv_window, ssm_state, tree):
        out, pending = self.mixer.extend(self.norm(x), conv_window, ssm_state, tree)
        return x + out, pending


def _per_field(per_layer):
    """Per-layer tuples of pieces -> a tuple of pieces, each one entry per layer (None if no
    layer)."""
    return tuple(zip(*per_layer)) if per_layer else None


class HybridBackbone(Transformer):
    """The transformer's embedding and head around `config.layers`' mix of blocks."""

    def block_class(self, kind: str):
        return Block if kind == "a" else MambaBlock

    def __call__(self, tokens, positions, mask=None, lengths=None, cache=None, parents=None,
                 logits_at=None):
        """Returns (logits float32 [B, T, V], hidden [B, T, E], (attention, mamba)).

        Without `cache`: whole sequences (attention under `mask`; Mamba2 from a zero state, its
        cache taken at `lengths`); attention is (k, v) stacked [La, B, T, K, D], mamba is
        (conv window, state) stacked over Mamba2 layers. With `cache` (a HybridCache) and
        `parents`: the tokens are tree nodes; attention is the new (k, v), mamba the pending
        pieces of each Mamba2 layer. Each piece is a tuple with one entry per layer (attention
        is [B, T, K, D]); either is None when the model has no such layer.
        `logits_at`: see `Transformer.head`. Scanned: no cache, and None in place of both.
        """
        if self.scanned:
            return self.run_scanned(tokens, positions, mask, logits_at)
        x = constrain(self.layout, self.embed(tokens), RESIDUAL)
        attention, mamba = [], []
        if cache is not None and "m" in self.config.layers:
            tree = extend_tree(parents, self.config.ssm_conv_width)  # once, for every layer
        for kind, block in zip(self.config.layers, self.blocks):
            if kind == "a":
                i = len(attention)
                context = None if cache is None else (cache.kv.k[i], cache.kv.v[i],
                                                      cache.kv.lengths, parents)
                x, kv = block(x, positions, mask, context)
                attention.append(kv)
            elif cache is None:
                x, state = block(x, positions, mask, lengths)
                mamba.append(state)
            else:
                i = len(mamba)
                x, pending = block.extend(x, cache.ssm.conv[i], cache.ssm.state[i], tree)
                mamba.append(pending)
            x = constrain(self.layout, x, RESIDUAL)
        logits, hidden = self.head(x, logits_at)
        return logits, hidden, (_per_field(attention), _per_field(mamba))


@dataclasses.dataclass(frozen=True)
class MambaLM(TransformerLM):
    """A Mamba2 or hybrid `HybridBackbone` as a DecodingModel (init, logical_axes and the
    training forward are the transformer's)."""

    backbone: ClassVar[type] = HybridBackbone

    def constrain_cache(self, cache: HybridCache) -> HybridCache:
        ssm = SSMCache(tuple(constrain(self.layout, c, SSM_CONV) for c in cache.ssm.conv),
                       tuple(constrain(self.layout, s, SSM_STATE) for s in cache.ssm.state))
        return HybridCache(constrain_kv(self.layout, cache.kv), ssm)

    def _counts(self):
        return self.config.layers.count("a"), self.config.layers.count("m")

    def _check_causal(self, mask: str):
        if mask != "causal":
            raise ValueError(f"a {self.config.family} model's Mamba2 layers are causal; mask "
                             f"{mask!r} needs an attention-only model")

    def forward(self, params, tokens, mask: str = "causal", block_size: int = 0, segment_ids=None,
                block_ids=None):
        self._check_causal(mask)
        return super().forward(params, tokens, mask, block_size, segment_ids, block_ids)

    def init_cache(self, batch: int, max_len: int) -> HybridCache:
        c = self.config
        n_attention, n_mamba = self._counts()
        kv = KVCache.zeros(n_attention, batch, max_len, c.n_kv_heads, c.resolved_head_dim,
                           jnp.dtype(c.dtype))
        conv_dim = c.ssm_heads * c.ssm_head_dim + 2 * c.ssm_groups * c.ssm_state_dim
        ssm = SSMCache.zeros(n_mamba, batch, c.ssm_conv_width, conv_dim, c.ssm_heads,
                             c.ssm_head_dim, c.ssm_state_dim, jnp.dtype(c.dtype))
        return HybridCache(kv, ssm)

    def prefill(self, params, tokens, lengths, max_len: int, mask: str = "causal",
                block_size: int = 0, block_ids=None, logits_at=None):
        self._check_causal(mask)
        b, t = tokens.shape
        if t > max_len:
            raise ValueError(f"prompt block of length {t} does not fit a KV cache of {max_len}")
        lengths = jnp.asarray(lengths, jnp.int32)
        logits, hidden, (attention, mamba) = self.decoding_module(params).apply(
            {"params": params}, tokens, mask_positions("causal", t), attention_mask("causal", t),
            lengths=lengths, logits_at=logits_at)
        cache = self.init_cache(b, max_len)
        kv = (cache.kv.replace(lengths=lengths) if attention is None
              else cache.kv.write_prefix(*attention, lengths))
        ssm = cache.ssm if mamba is None else SSMCache(
            tuple(c.astype(old.dtype) for c, old in zip(mamba[0], cache.ssm.conv)), mamba[1])
        return logits, hidden, self.constrain_cache(HybridCache(kv, ssm))

    def extend(self, params, cache: HybridCache, tokens, parents):
        parents = jnp.broadcast_to(parents, tokens.shape).astype(jnp.int32)
        positions = cache.lengths[:, None] + node_depths(parents)
        logits, hidden, (attention, mamba) = self.decoding_module(params).apply(
            {"params": params}, tokens, positions, cache=cache, parents=parents)
        if attention is None:
            attention = ((), ())
        ssm = None if mamba is None else SSMPending(*mamba)
        return logits, hidden, after_forward(HybridPending(KVPending(*attention), ssm), logits)

    def commit(self, cache: HybridCache, pending: HybridPending, path, n_accepted) -> HybridCache:
        kv = commit_kv(cache.kv, pending.kv, path, n_accepted)
        ssm = cache.ssm if pending.ssm is None else commit_ssm(cache.ssm, pending.ssm, path,
                                                              n_accepted)
        return self.constrain_cache(HybridCache(kv, ssm))
