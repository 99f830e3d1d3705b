"""The target sampling distribution: temperature, then top-k, then top-p; greedy at temperature 0.

The same `Sampler` defines both what AR decoding samples and (later) what speculative
verification must reproduce, so both paths share `Sampler.logprobs`.
"""

import dataclasses

import jax
import jax.numpy as jnp


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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def logprobs(self, logits: jnp.ndarray) -> jnp.ndarray:
        """Log-probabilities of the sampling distribution (-inf outside its support)."""
        if self.greedy:
            return jnp.log(jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1]))
        logits = logits.astype(jnp.float32) / self.temperature
        if self.top_k:
            kth = jax.lax.top_k(logits, min(self.top_k, logits.shape[-1]))[0][..., -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        if self.top_p < 1:
            ordered = jnp.sort(logits, axis=-1)[..., ::-1]
            probs = jax.nn.softmax(ordered, axis=-1)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
            cutoff = jnp.min(jnp.where(mass_before < self.top_p, ordered, jnp.inf), -1, keepdims=True)
            logits = jnp.where(logits < cutoff, -jnp.inf, logits)
        return jax.nn.log_softmax(logits, axis=-1)

    def sample(self, rng, logits: jnp.ndarray) -> jnp.ndarray:
        """One token per row of `logits` [..., V] as int32."""
        if self.greedy:
            return jnp.argmax(logits, -1).astype(jnp.int32)
        return jax.random.categorical(rng, self.logprobs(logits)).astype(jnp.int32)
