"""Draft heads on a frozen target (shared ALGORITHMS.md §8): Medusa, Hydra and Falcon.

All read the target's final-normed hidden state h_t (the `hidden` that `forward`, `prefill` and
`extend` return) and predict tokens further ahead than the target's own LM head, which gives
t+1: head k (k = 1..K) gives token t+k+1. They are tiny next to the target, so a speculative
step drafts a whole tree from one hidden state for the price of K small matmuls.

- **Medusa**: head k is `h + SiLU(W h)` (`num_layers` times) followed by an LM head. The heads
  are independent of each other and of the drafted tokens, so one call gives every depth's
  candidates, and a static tree picks them by rank.
- **Hydra**: head k also sees the embeddings of the tokens at t+1..t+k (the target's next token,
  then the drafted path), through the target's frozen input embedding: its input is
  `h + P_k [e(x_{t+1}); ...; e(x_{t+k})]`, then the same residual blocks and LM head. Candidates
  depend on the parent path, so a tree is drafted depth by depth.
- **Falcon** (semi-autoregressive, Gao et al. 2024): a tiny transformer (`num_layers` decoder
  layers shaped like the target's) over a short sequence of slots, every slot
  `h + W e(token)`. Context slots hold the root x_{t+1} and the drafted path (depths 0..m),
  causal among themselves; then one block of `block_size` query slots, each the last context
  slot plus a learned offset, which see the whole context and each other (the "coupled" block)
  and give the tokens at depths m+1..m+k in one forward. Blocks follow each other
  autoregressively, so a tree is drafted a block of depths at a time.

The LM head is the target's own (frozen, shared: nothing to train but the small W's) or, with
`shared_lm_head: false`, one projection per head initialised from it. The W's start at zero
(as in Medusa), so an untrained head is the identity and starts from the target's own
next-token guess rather than from noise; Falcon's residual stream likewise starts at h, its
layers adding small random updates to it.

Only the heads' own weights are parameters here; the target's embedding and LM head are read
from the target's params at call time, so they are never trained or copied.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.config import HeadsConfig, ModelConfig
from zoo.layers.params import dense
from zoo.models.transformer import Block


def _dtypes(model: ModelConfig) -> dict:
    return dict(dtype=jnp.dtype(model.dtype), param_dtype=jnp.dtype(model.param_dtype))


def target_embedding(target_params) -> jnp.ndarray:
    """The target's input embedding table [V, E]."""
    return target_params["embed"]["embedding"]


def target_unembedding(model: ModelConfig, target_params) -> jnp.ndarray:
    """The target's LM head as a matrix [E, V] (the embedding's transpose when tied)."""
    if model.tie_embeddings:
        return target_params["embed"]["embedding"].T
    return target_params["lm_head"]["kernel"]


def _zeros(axes):
    return nn.with_logical_partitioning(nn.initializers.zeros, axes)


def _lm_head(heads: HeadsConfig, model: ModelConfig, x, unembedding):
    """x [..., E] -> logits float32 [..., V] through the target's frozen LM head, or (with
    `shared_lm_head: false`) the calling head's own `lm_head`, created in its scope."""
    kw = _dtypes(model)
    if heads.shared_lm_head:
        logits = x @ unembedding.astype(kw["dtype"])
    else:
        logits = dense(model.vocab_size, ("embed", "vocab"), init_std=model.init_std,
                       name="lm_head", **kw)(x)
    return logits.astype(jnp.float32)


class _Residual(nn.Module):
    """`num_layers` blocks x + SiLU(W x), W zero-initialised (the block starts as the identity)."""

    model: ModelConfig
    num_layers: int

    @nn.compact
    def __call__(self, x):
        c = self.model
        for i in range(self.num_layers):
            w = nn.Dense(c.d_model, use_bias=False, kernel_init=_zeros(("embed", "mlp")),
                         name=f"res_{i}", **_dtypes(c))
            x = x + nn.silu(w(x))
        return x


class MedusaModule(nn.Module):
    """K parallel heads with stacked weights ([K, ...], logical axis "draft_heads"), so all
    heads run as one batched matmul."""

    heads: HeadsConfig
    model: ModelConfig

    @nn.compact
    def __call__(self, hidden, unembedding):
        """hidden [..., E] -> logits float32 [..., K, V]; `unembedding` [E, V] is the target's."""
        c, k = self.model, self.heads.num_heads
        kw = _dtypes(c)
        x = jnp.broadcast_to(hidden[..., None, :], (*hidden.shape[:-1], k, c.d_model))
        x = x.astype(kw["dtype"])
        for i in range(self.heads.num_layers):
            w = self.param(f"res_{i}", _zeros(("draft_heads", "embed", "mlp")),
                           (k, c.d_model, c.d_model), kw["param_dtype"])
            x = x + nn.silu(jnp.einsum("...ke,kef->...kf", x, w.astype(kw["dtype"])))
        if self.heads.shared_lm_head:
            logits = x @ unembedding.astype(kw["dtype"])
        else:
            w = self.param("lm_head", nn.with_logical_partitioning(
                nn.initializers.normal(c.init_std), ("draft_heads", "embed", "vocab")),
                (k, c.d_model, c.vocab_size), kw["param_dtype"])
            logits = jnp.einsum("...ke,kev->...kv", x, w.astype(kw["dtype"]))
        return logits.astype(jnp.float32)


class HydraHead(nn.Module):
    """Hydra head `depth`: conditions on h and the embeddings of the `depth` tokens after it."""

    heads: HeadsConfig
    model: ModelConfig
    depth: int

    @nn.compact
    def __call__(self, hidden, token_embeds, unembedding):
        """hidden [..., E], token_embeds [..., depth, E] -> logits float32 [..., V]."""
        c, kw = self.model, _dtypes(self.model)
        mix = dense(c.d_model, ("draft_inputs", "embed", "mlp"), in_axes=2, init_std=c.init_std,
                    name="inputs", **kw)
        x = _Residual(c, self.heads.num_layers, name="residual")(
            hidden.astype(kw["dtype"]) + mix(token_embeds.astype(kw["dtype"])))
        return _lm_head(self.heads, c, x, unembedding)


class HydraModule(nn.Module):
    heads: HeadsConfig
    model: ModelConfig

    def setup(self):
        self.layers = [HydraHead(self.heads, self.model, k, name=f"head_{k}")
                       for k in range(1, self.heads.num_heads + 1)]

    def __call__(self, hidden, token_embeds, unembedding):
        """Teacher-forced: token_embeds [..., K, E] (tokens t+1..t+K) -> logits [..., K, V]."""
        return jnp.stack([head(hidden, token_embeds[..., : head.depth, :], unembedding)
                          for head in self.layers], axis=-2)

    def one(self, hidden, token_embeds, unembedding):
        """Only head `depth = token_embeds.shape[-2]`: what drafting one tree depth needs."""
        return self.layers[token_embeds.shape[-2] - 1](hidden, token_embeds, unembedding)


def falcon_slots(block_size: int, context: int, first_depth: int, queries: int):
    """(positions int32[S], mask bool[S, S]) of one Falcon forward over S = context + queries
    slots: context slot j holds the token at depth j (causal among themselves); query q predicts
    depth first_depth + q and sees the context up to its block's boundary (depth m, the last
    multiple of `block_size` below it) and every query of its block. A slot's position is the
    depth it holds or predicts, so a block run alone (drafting) and all blocks run at once under
    this mask (training) compute the same thing."""
    depths = np.arange(first_depth, first_depth + queries)
    start = (depths - 1) // block_size * block_size  # each query's block boundary
    if queries < 1 or start.max() >= context:
        raise ValueError(f"queries for depths {depths.tolist()} need the context up to depth "
                         f"{start.max()}, got {context} context slots")
    positions = np.concatenate([np.arange(context), depths]).astype(np.int32)
    mask = np.zeros((context + queries,) * 2, bool)
    mask[:context, :context] = np.tril(np.ones((context, context), bool))
    mask[context:, :context] = np.arange(context)[None, :] <= start[:, None]
    mask[context:, context:] = start[:, None] == start[None, :]
    return positions, mask


class FalconModule(nn.Module):
    """Falcon's semi-autoregressive drafter: decoder layers over context and query slots."""

    heads: HeadsConfig
    model: ModelConfig

    @nn.compact
    def __call__(self, hidden, context_embeds, query_embeds, unembedding, first_depth: int = 1):
        """hidden [..., E]; context_embeds [..., C, E] (the tokens at depths 0..C-1); query_embeds
        [..., Q, E] (each query's input token) -> logits float32 [..., Q, V] for the depths
        first_depth..first_depth+Q-1."""
        c, kw, k = self.model, _dtypes(self.model), self.heads.block_size
        n_ctx, n_q = context_embeds.shape[-2], query_embeds.shape[-2]
        positions, mask = falcon_slots(k, n_ctx, first_depth, n_q)
        mix = dense(c.d_model, ("embed", "mlp"), init_std=c.init_std, name="inputs", **kw)
        offsets = self.param("offsets", nn.with_logical_partitioning(
            nn.initializers.normal(c.init_std), ("draft_inputs", "embed")), (k, c.d_model),
            kw["param_dtype"])
        slot = (np.arange(first_depth, first_depth + n_q) - 1) % k  # index inside the block
        h = hidden[..., None, :].astype(kw["dtype"])
        x = jnp.concatenate([h + mix(context_embeds.astype(kw["dtype"])),
                             h + mix(query_embeds.astype(kw["dtype"]))
                             + offsets[slot].astype(kw["dtype"])], axis=-2)
        lead = x.shape[:-2]
        x = x.reshape(-1, *x.shape[-2:])  # [N, S, E]: every leading dim is a batch of slots
        positions = jnp.broadcast_to(jnp.asarray(positions), x.shape[:2])
        for i in range(self.heads.num_layers):
            x, _ = Block(c, "auto", name=f"layer_{i}")(x, positions, jnp.asarray(mask)[None, None])
        x = x[:, n_ctx:].reshape(*lead, n_q, c.d_model)
        return _lm_head(self.heads, c, x, unembedding)


_MODULES = {"medusa": MedusaModule, "hydra": HydraModule, "falcon": FalconModule}


@dataclasses.dataclass(frozen=True)
class DraftHeads:
    """Medusa, Hydra or Falcon heads for a target of config `model`, as pure functions of
    (head params, target params, arrays). Hashable, so it can be a static jit argument."""

    config: HeadsConfig
    model: ModelConfig

    def __post_init__(self):
        if self.config.kind not in _MODULES:
            raise ValueError(f"heads.kind must be one of {list(_MODULES)}, got "
                             f"{self.config.kind!r}")

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    @property
    def block_size(self) -> int:
        """Falcon: depths drafted per forward."""
        return self.config.block_size

    @property
    def context_size(self) -> int:
        """Falcon: context slots of the teacher-forced forward, depths 0 up to the last block's
        boundary."""
        return (math.ceil(self.num_heads / self.block_size) - 1) * self.block_size + 1

    @property
    def module(self) -> nn.Module:
        return _MODULES[self.kind](self.config, self.model)

    def _init_boxed(self, rng):
        c, k = self.model, self.num_heads
        hidden = jnp.zeros((1, c.d_model), jnp.dtype(c.dtype))
        unembedding = jnp.zeros((c.d_model, c.vocab_size), jnp.dtype(c.dtype))
        embeds = lambda n: jnp.zeros((1, n, c.d_model), jnp.dtype(c.dtype))  # noqa: E731
        args = {"medusa": (hidden, unembedding),
                "hydra": (hidden, embeds(k), unembedding),
                "falcon": (hidden, embeds(self.context_size), embeds(k), unembedding)}[self.kind]
        return self.module.init(rng, *args)["params"]

    def init(self, rng, target_params=None):
        """Fresh head params. With `target_params` and `shared_lm_head: false`, each head's own
        LM head starts as a copy of the target's (Medusa-1), so training starts from the
        target's predictions rather than from noise."""
        params = nn.unbox(jax.jit(self._init_boxed)(rng))
        if self.config.shared_lm_head or target_params is None:
            return params
        unembedding = target_unembedding(self.model, target_params)
        if self.kind == "medusa":
            return {**params, "lm_head": jnp.broadcast_to(
                unembedding, params["lm_head"].shape).astype(params["lm_head"].dtype)}
        own = lambda p: {**p, "lm_head": {"kernel": jnp.array(  # noqa: E731
            unembedding, p["lm_head"]["kernel"].dtype, copy=True)}}
        if self.kind == "falcon":
            return own(params)
        # One copy per head: the train state is donated, and buffers must not be shared.
        return {name: own(head) for name, head in params.items()}

    def logical_axes(self):
        """Pytree of PartitionSpecs of logical axis names, matching `init`'s params."""
        return nn.get_partition_spec(jax.eval_shape(self._init_boxed, jax.random.key(0)))

    def _frozen(self, target_params):
        return None if not self.config.shared_lm_head else target_unembedding(
            self.model, target_params)

    def _embed(self, target_params, tokens):
        return jnp.take(target_embedding(target_params), tokens, axis=0)

    def logits(self, params, target_params, hidden, tokens=None, glanced=None):
        """Every head's logits float32 [..., K, V] from the target's hidden state [..., E].

        Hydra and Falcon also need `tokens` int32 [..., K]: the tokens at t+1..t+K (in training
        the target's own greedy continuation; head k sees the first k of them, Falcon's block
        the ones up to its boundary). Medusa ignores them. `glanced` bool[..., K] (Falcon
        training only): query k reads token t+k, the true token before it, instead of its
        block's last context token.
        """
        variables = {"params": params}
        if glanced is not None and self.kind != "falcon":
            raise ValueError(f"glanced is for Falcon's training; {self.kind} heads read no "
                             "query inputs")
        if self.kind == "medusa":
            return self.module.apply(variables, hidden, self._frozen(target_params))
        if tokens is None or tokens.shape[-1] != self.num_heads:
            raise ValueError(f"{self.kind.capitalize()} heads need tokens [..., "
                             f"{self.num_heads}] (t+1..t+K), got "
                             f"{None if tokens is None else tokens.shape}")
        embeds = self._embed(target_params, tokens)
        if self.kind == "hydra":
            return self.module.apply(variables, hidden, embeds, self._frozen(target_params))
        k = self.block_size
        start = np.arange(self.num_heads) // k * k  # each query's block boundary (depth)
        queries = embeds[..., start, :]
        if glanced is not None:
            if glanced.shape != tokens.shape:
                raise ValueError(f"glanced must be bool{list(tokens.shape)} like tokens, got "
                                 f"{glanced.shape}")
            queries = jnp.where(glanced[..., None], embeds, queries)
        return self.module.apply(variables, hidden, embeds[..., : self.context_size, :], queries,
                                 self._frozen(target_params))

    def head_logits(self, params, target_params, hidden, tokens):
        """Hydra head k = tokens.shape[-1] alone: logits float32 [..., V] for token t+k+1 given
        hidden [..., E] and the tokens t+1..t+k [..., k]."""
        if self.kind != "hydra":
            raise ValueError(f"head_logits is for Hydra heads; {self.kind} heads do not run "
                             "one depth at a time")
        if not 1 <= tokens.shape[-1] <= self.num_heads:
            raise ValueError(f"tokens [..., k] must have 1 <= k <= {self.num_heads}, got shape "
                             f"{tokens.shape}")
        return self.module.apply({"params": params}, hidden, self._embed(target_params, tokens),
                                 self._frozen(target_params), method=HydraModule.one)

    def block_logits(self, params, target_params, hidden, tokens):
        """Falcon's block after the tokens at depths 0..m [..., m+1] (m a multiple of the block
        size): logits float32 [..., n, V] for the depths m+1..m+n, n = min(block, K - m)."""
        if self.kind != "falcon":
            raise ValueError(f"block_logits is for Falcon heads, not {self.kind} heads")
        m, k = tokens.shape[-1] - 1, self.block_size
        if m % k or not 0 <= m < self.num_heads:
            raise ValueError(f"tokens [..., m+1] must end at a block boundary m (a multiple of "
                             f"{k} below {self.num_heads}), got shape {tokens.shape}")
        embeds = self._embed(target_params, tokens)
        n = min(k, self.num_heads - m)
        queries = jnp.broadcast_to(embeds[..., -1:, :], (*embeds.shape[:-2], n, embeds.shape[-1]))
        return self.module.apply({"params": params}, hidden, embeds, queries,
                                 self._frozen(target_params), m + 1)


def build_heads(config: HeadsConfig, model: ModelConfig) -> DraftHeads:
    """Draft heads of `config.kind` for a target of config `model`."""
    return DraftHeads(config, model)
