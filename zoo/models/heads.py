"""Draft heads on a frozen target (shared ALGORITHMS.md §8): Medusa and Hydra.

Both read the target's final-normed hidden state h_t (the `hidden` that `forward`, `prefill` and
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

The LM head is the target's own (frozen, shared: nothing to train but the small W's) or, with
`shared_lm_head: false`, one projection per head initialised from it. The W's start at zero
(as in Medusa), so an untrained head is the identity and starts from the target's own
next-token guess rather than from noise.

Only the heads' own weights are parameters here; the target's embedding and LM head are read
from the target's params at call time, so they are never trained or copied.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.config import HeadsConfig, ModelConfig
from zoo.layers.params import dense


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
        if self.heads.shared_lm_head:
            logits = x @ unembedding.astype(kw["dtype"])
        else:
            logits = dense(c.vocab_size, ("embed", "vocab"), init_std=c.init_std,
                           name="lm_head", **kw)(x)
        return logits.astype(jnp.float32)


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


@dataclasses.dataclass(frozen=True)
class DraftHeads:
    """Medusa or Hydra heads for a target of config `model`, as pure functions of
    (head params, target params, arrays). Hashable, so it can be a static jit argument."""

    config: HeadsConfig
    model: ModelConfig

    def __post_init__(self):
        if self.config.kind not in ("medusa", "hydra"):
            raise ValueError(f"heads.kind must be 'medusa' or 'hydra', got {self.config.kind!r}")

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    @property
    def module(self) -> nn.Module:
        cls = MedusaModule if self.kind == "medusa" else HydraModule
        return cls(self.config, self.model)

    def _init_boxed(self, rng):
        c, k = self.model, self.num_heads
        hidden = jnp.zeros((1, c.d_model), jnp.dtype(c.dtype))
        unembedding = jnp.zeros((c.d_model, c.vocab_size), jnp.dtype(c.dtype))
        args = (hidden, unembedding) if self.kind == "medusa" else (
            hidden, jnp.zeros((1, k, c.d_model), jnp.dtype(c.dtype)), unembedding)
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
        # One copy per head: the train state is donated, and buffers must not be shared.
        return {name: {**head, "lm_head": {"kernel": jnp.array(
            unembedding, head["lm_head"]["kernel"].dtype, copy=True)}}
            for name, head in params.items()}

    def logical_axes(self):
        """Pytree of PartitionSpecs of logical axis names, matching `init`'s params."""
        return nn.get_partition_spec(jax.eval_shape(self._init_boxed, jax.random.key(0)))

    def _frozen(self, target_params):
        return None if not self.config.shared_lm_head else target_unembedding(
            self.model, target_params)

    def _embed(self, target_params, tokens):
        return jnp.take(target_embedding(target_params), tokens, axis=0)

    def logits(self, params, target_params, hidden, tokens=None):
        """Every head's logits float32 [..., K, V] from the target's hidden state [..., E].

        Hydra also needs `tokens` int32 [..., K]: the tokens at t+1..t+K (in training the
        target's own greedy continuation; head k sees the first k of them). Medusa ignores them.
        """
        variables = {"params": params}
        if self.kind == "medusa":
            return self.module.apply(variables, hidden, self._frozen(target_params))
        if tokens is None or tokens.shape[-1] != self.num_heads:
            raise ValueError(f"Hydra heads need tokens [..., {self.num_heads}] (t+1..t+K), got "
                             f"{None if tokens is None else tokens.shape}")
        return self.module.apply(variables, hidden, self._embed(target_params, tokens),
                                 self._frozen(target_params))

    def head_logits(self, params, target_params, hidden, tokens):
        """Hydra head k = tokens.shape[-1] alone: logits float32 [..., V] for token t+k+1 given
        hidden [..., E] and the tokens t+1..t+k [..., k]."""
        if self.kind != "hydra":
            raise ValueError("head_logits is for Hydra heads; Medusa heads need no tokens: "
                             "use logits()")
        if not 1 <= tokens.shape[-1] <= self.num_heads:
            raise ValueError(f"tokens [..., k] must have 1 <= k <= {self.num_heads}, got shape "
                             f"{tokens.shape}")
        return self.module.apply({"params": params}, hidden, self._embed(target_params, tokens),
                                 self._frozen(target_params), method=HydraModule.one)


def build_heads(config: HeadsConfig, model: ModelConfig) -> DraftHeads:
    """Draft heads of `config.kind` for a target of config `model`."""
    return DraftHeads(config, model)
