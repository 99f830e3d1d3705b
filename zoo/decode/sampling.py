"""The target sampling distribution: temperature, then top-k, then top-p; greedy at temperature 0.

The same `Sampler` defines both what AR decoding samples and what speculative verification must
reproduce, so both paths share `Sampler.logprobs`.

A `Sampler` is a pytree: passed to a jitted decoder as an argument, its temperature, top-k and
top-p are traced values, so a new temperature (or k, or p) reuses the compiled decode loop. What
changes the program is static: greedy or not, top-k on or off, top-p on or off.

Neither filter sorts the vocabulary (152k entries for Qwen, every step). Both are thresholds on
the logits found by bisection over their float32 bit patterns, in 32 passes of compare-and-reduce
that vectorise on any accelerator: top-k keeps the logits >= the k-th largest; top-p keeps a
logit exactly when the probability of the strictly larger ones is below p, which is the smallest
best-first prefix whose mass reaches p (ties kept together). `reference_logprobs` is the sorting
definition beside it, for tests.
"""

import dataclasses

import jax
import jax.numpy as jnp

_BISECTION_STEPS = 32  # one per bit of a float32 key


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
        if use_top_k:
            k = jnp.clip(jnp.asarray(self.top_k), 1, logits.shape[-1])
            keys = _order_keys(logits)
            # The k-th largest key: the largest t with at least k keys >= t.
            kth = _largest(lambda t: jnp.sum(keys >= t[..., None], -1) >= k, keys.shape[:-1])
            logits = jnp.where(keys >= kth[..., None], logits, -jnp.inf)
        if use_top_p:
            probs, keys = jax.nn.softmax(logits, axis=-1), _order_keys(logits)
            # The largest t whose strictly larger keys hold mass >= top_p; keep the keys above it.
            cut = _largest(lambda t: jnp.sum(jnp.where(keys > t[..., None], probs, 0.0), -1)
                           >= self.top_p, keys.shape[:-1])
            logits = jnp.where(keys > cut[..., None], logits, -jnp.inf)
        return jax.nn.log_softmax(logits, axis=-1)

    def sample(self, rng, logits: jnp.ndarray) -> jnp.ndarray:
        """One token per row of `logits` [..., V] as int32."""
        if self.greedy:
            return jnp.argmax(logits, -1).astype(jnp.int32)
        return jax.random.categorical(rng, self.logprobs(logits)).astype(jnp.int32)


def _order_keys(x: jnp.ndarray) -> jnp.ndarray:
    """uint32 keys ordered as the float32 values x are (-inf lowest, +inf highest)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _largest(holds, shape) -> jnp.ndarray:
    """The largest uint32 t (per row of `shape`) for which `holds(t)` is true, where `holds` is
    true at 0 and true below any t where it is true: bisection, one bit per step."""
    def step(_, bounds):
        lo, hi = bounds
        gap = hi - lo
        mid = lo + (gap >> 1) + (gap & 1)  # the upper middle, without overflow
        ok = holds(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, hi = jnp.zeros(shape, jnp.uint32), jnp.full(shape, 0xFFFFFFFF, jnp.uint32)
    return jax.lax.fori_loop(0, _BISECTION_STEPS, step, (lo, hi))[0]


def reference_logprobs(sampler: Sampler, logits: jnp.ndarray) -> jnp.ndarray:
    """`Sampler.logprobs` by its definition: sort the vocabulary best first, keep the top k, then
    the smallest prefix whose mass reaches top_p (at least the top token)."""
    greedy, use_top_k, use_top_p = sampler._switches
    if greedy:
        return jnp.log(jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1]))
    logits = logits.astype(jnp.float32) / sampler.temperature
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    if use_top_k:
        k = jnp.clip(jnp.asarray(sampler.top_k), 1, logits.shape[-1])
        kth = jnp.take(ordered, k - 1, axis=-1)[..., None]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
        ordered = jnp.where(ordered < kth, -jnp.inf, ordered)
    if use_top_p:
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(mass_before < sampler.top_p, ordered, jnp.inf), -1,
                         keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.nn.log_softmax(logits, axis=-1)
