"""The target sampling distribution: temperature, then top-k, then top-p; greedy at temperature 0.

The same `Sampler` defines both what AR decoding samples and what speculative verification must
reproduce, so both paths share `Sampler.logprobs`.

A `Sampler` is a pytree: passed to a jitted decoder as an argument, its temperature, top-k and
top-p are traced values, so a new temperature (or k, or p) reuses the compiled decode loop. What
changes the program is static: greedy or not, top-k on or off, top-p on or off.
"""

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Sampler:
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "_switches", (self.temperature == 0, self.top_k > 0,
                                               self.top_p < 1))

    def tree_flatten(self):
        return (self.temperature, self.top_k, self.top_p), self._switches

    @classmethod
    def tree_unflatten(cls, switches, values):
        sampler = object.__new__(cls)  # values may be tracers: no validation, switches given
        for name, value in zip(("temperature", "top_k", "top_p"), values):
            object.__setattr__(sampler, name, value)
        object.__setattr__(sampler, "_switches", switches)
        return sampler

    @property
    def greedy(self) -> bool:
        return self._switches[0]

    def logprobs(self, logits: jnp.ndarray) -> jnp.ndarray:
        """Log-probabilities of the sampling distribution (-inf outside its support)."""
        greedy, use_top_k, use_top_p = self._switches
        if greedy:
            return jnp.log(jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1]))
        logits = logits.astype(jnp.float32) / self.temperature
        if use_top_k or use_top_p:
            ordered = jnp.sort(logits, axis=-1)[..., ::-1]  # best first
        if use_top_k:
            k = jnp.clip(jnp.asarray(self.top_k), 1, logits.shape[-1])
            kth = jnp.take(ordered, k - 1, axis=-1)[..., None]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
            ordered = jnp.where(ordered < kth, -jnp.inf, ordered)
        if use_top_p:
            probs = jax.nn.softmax(ordered, axis=-1)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
            cutoff = jnp.min(jnp.where(mass_before < self.top_p, ordered, jnp.inf), -1,
                             keepdims=True)
            logits = jnp.where(logits < cutoff, -jnp.inf, logits)
        return jax.nn.log_softmax(logits, axis=-1)

    def sample(self, rng, logits: jnp.ndarray) -> jnp.ndarray:
        """One token per row of `logits` [..., V] as int32."""
        if self.greedy:
            return jnp.argmax(logits, -1).astype(jnp.int32)
        return jax.random.categorical(rng, self.logprobs(logits)).astype(jnp.int32)
