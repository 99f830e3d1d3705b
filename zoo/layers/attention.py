"""Grouped-query self-attention with RoPE, for training/prefill and for tree `extend`; optional
q/k/v biases (Qwen2) and per-head q/k RMSNorm before RoPE (Qwen3).

Training and prefill run over a whole sequence with a causal, bidirectional or block-causal mask
(`zoo.layers.masked_attention`). `extend` runs T new tokens on top of a committed KV cache with a
tree structure through `zoo_kernels.tree_attention` and returns the new K/V without committing them.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from zoo_kernels.tree_attention import tree_attention
from zoo.layers.masked_attention import masked_attention
from zoo.layers.params import dense, rms_norm
from zoo.layers.rope import Rope, apply_rope

MASK_KINDS = ("causal", "bidirectional", "block_causal", "block_diffusion")


def attention_mask(kind: str, length: int, block_size: int = 0, segment_ids=None,
                   block_ids=None) -> jnp.ndarray:
    """Boolean [B or 1, 1, T, T] mask; True where query i may attend to key j.

    block_causal: bidirectional inside blocks of `block_size`, causal across blocks; or, with
      `block_ids` (int[B, T], non-decreasing per row), inside and across those blocks instead.
    block_diffusion: block diffusion training (BD3-LM) over T = 2L tokens, the noised sequence
      then the clean one at the same positions: a noised block sees itself and the clean blocks
      before it, a clean block sees the clean blocks up to itself (block-causal), and nothing
      sees a noised token from outside its block.
    segment_ids (int[B, T], optional): also forbid attention across packed documents.
    """
    i = jnp.arange(length)[:, None]
    j = jnp.arange(length)[None, :]
    if kind in ("block_causal", "block_diffusion") and block_ids is None and block_size <= 0:
        raise ValueError(f"{kind} attention needs block_size > 0, got {block_size}")
    if kind == "causal":
        mask = j <= i
    elif kind == "bidirectional":
        mask = jnp.ones((length, length), bool)
    elif kind == "block_causal" and block_ids is not None:
        mask = block_ids[:, None, None, :] <= block_ids[:, None, :, None]
    elif kind == "block_causal":
        mask = j // block_size <= i // block_size
    elif kind == "block_diffusion":
        if length % 2:
            raise ValueError(f"block_diffusion attention takes noised + clean halves, got "
                             f"an odd length {length}")
        half = length // 2
        clean_i, clean_j = i >= half, j >= half
        bi, bj = (i % half) // block_size, (j % half) // block_size
        mask = jnp.where(clean_i, clean_j & (bj <= bi),
                         jnp.where(clean_j, bj < bi, bj == bi))
    else:
        raise ValueError(f"unknown attention mask kind {kind!r}; choose one of {MASK_KINDS}")
    if mask.ndim == 2:
        mask = mask[None, None]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    return mask


def mask_positions(kind: str, length: int) -> np.ndarray:
    """int32[1, T] position ids a full-sequence mask kind implies (every row alike): 0..T-1, or
    for block_diffusion's two halves 0..L-1 twice (a clean token sits where its noised one does).
    NumPy, not traced: RoPE's cos and sin of it are then constants (`apply_rope`)."""
    pos = np.arange(length, dtype=np.int32)
    if kind == "block_diffusion":
        pos = pos % (length // 2)
    return pos[None]


class Attention(nn.Module):
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    rope: Rope
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    init_std: float
    backend: str = "auto"  # zoo_kernels.tree_attention backend used by `extend`
    qkv_bias: bool = False
    qk_norm: bool = False
    norm_eps: float = 1e-6  # of the q/k norms

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, init_std=self.init_std)
        self.q_proj = dense((self.n_heads, self.head_dim), ("embed", "heads", "head_dim"),
                            name="q", bias=self.qkv_bias, **kw)
        self.k_proj = dense((self.n_kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"),
                            name="k", bias=self.qkv_bias, **kw)
        self.v_proj = dense((self.n_kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"),
                            name="v", bias=self.qkv_bias, **kw)
        self.o_proj = dense(self.d_model, ("heads", "head_dim", "embed"), in_axes=2, name="o",
                            **kw)
        if self.qk_norm:  # one scale over head_dim, shared by the heads
            norm_kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
            self.q_norm = rms_norm(self.norm_eps, name="q_norm", **norm_kw)
            self.k_norm = rms_norm(self.norm_eps, name="k_norm", **norm_kw)

    def _qkv(self, x, positions):
        """q [B, T, H, D] and k [B, T, K, D] normed (qk_norm) then rotated; v [B, T, K, D]."""
        q, k = self.q_proj(x), self.k_proj(x)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, positions, self.rope), apply_rope(k, positions, self.rope)
        return q, k, self.v_proj(x)

    def __call__(self, x, positions, mask):
        """x [B, T, E], positions int[B, T], mask bool[B|1, 1, T, T] -> (out, (k, v))."""
        q, k, v = self._qkv(x, positions)
        out = masked_attention(q, k, v, mask)
        return self.o_proj(out), (k, v)

    def extend(self, x, positions, k_cache, v_cache, cache_len, parents):
        """New tokens over the committed cache; returns (out, (k_new, v_new)) uncommitted."""
        q, k, v = self._qkv(x, positions)
        out = tree_attention(q, k_cache, v_cache, cache_len, k, v, parents, backend=self.backend)
        return self.o_proj(out), (k, v)
