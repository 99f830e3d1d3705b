"""Rotary position embeddings (RoPE), rotate-half layout as in Llama / Hugging Face, with the
frequency scalings of transformers' `modeling_rope_utils` (rope_type "linear", "dynamic",
"llama3"; the same maths, in float32).

Scaling only changes the inverse frequencies, so every attention path (training, prefill, tree
extend through the kernels, which take q and k already rotated) rotates the same way.

Dynamic (NTK) scaling is the one that depends on length: transformers recomputes the base from
the longest position of each forward call once that exceeds max_position_embeddings. A KV cache
cannot follow that without re-rotating the keys it holds, so zoo gives each token the
frequencies of its own length, position + 1. A cached key then never changes, prefill + extend
equals a full forward, and it is exactly what transformers computes when it generates one token
at a time; within max_position_embeddings it is plain RoPE everywhere. Only a single forward
call running past max_position_embeddings differs from transformers' (which rotates all of that
call's tokens with the base of its last position).
"""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Rope:
    """RoPE's frequencies: the base theta and a scaling (`model.rope_*`)."""

    theta: float = 10000.0
    scaling: str = "none"  # none | linear | dynamic | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_len: int = 8192  # llama3: pretraining context; dynamic: where stretching starts

    @classmethod
    def of(cls, config) -> "Rope":
        """A ModelConfig's RoPE (dynamic stretches past `max_positions`)."""
        c = config
        original = c.max_positions if c.rope_scaling == "dynamic" else c.rope_original_max_len
        return cls(c.rope_theta, c.rope_scaling, c.rope_factor, c.rope_low_freq_factor,
                   c.rope_high_freq_factor, original)

    def inv_freq(self, d: int) -> jnp.ndarray:
        """float32 [D/2]: the inverse frequency of each rotated pair (dynamic: before stretching);
        NumPy, a constant of the config."""
        inv = (1.0 / self.theta ** (np.arange(0, d, 2) / d)).astype(np.float32)
        if self.scaling == "linear":
            return inv / self.factor
        if self.scaling != "llama3":
            return inv
        # Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between.
        wavelen = 2 * math.pi / inv
        low_wavelen = self.original_max_len / self.low_freq_factor
        high_wavelen = self.original_max_len / self.high_freq_factor
        scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
        smooth = ((self.original_max_len / wavelen - self.low_freq_factor)
                  / (self.high_freq_factor - self.low_freq_factor))
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)

    def angles(self, positions: jnp.ndarray, d: int) -> jnp.ndarray:
        """float32 [B, T, D/2] (B of positions [B, T]): each position's rotation angle per pair;
        NumPy when the positions are (`apply_rope`)."""
        xp = np if isinstance(positions, np.ndarray) else jnp
        pos = positions[..., None].astype(np.float32)
        if self.scaling != "dynamic":
            return pos * self.inv_freq(d)
        # NTK: base theta * (factor * L / L0 - (factor - 1))^(D / (D - 2)) at length L = pos + 1
        length = xp.maximum(pos + 1, self.original_max_len)
        base = self.theta * (self.factor * length / self.original_max_len
                             - (self.factor - 1)) ** (d / (d - 2))
        return pos * (1.0 / base ** (np.arange(0, d, 2, dtype=np.float32) / d))


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, rope: Rope) -> jnp.ndarray:
    """Rotate pairs (x[..., i], x[..., i + D/2]) by `rope`'s angle for their position.

    x: [B, T, H, D]; positions: int[B or 1, T]. Computed in float32, returned in x's dtype.
    Positions known before tracing (a NumPy array: a whole sequence's, `mask_positions`) give
    cos and sin as NumPy constants. Traced ones are computed in the graph, where XLA:CPU
    recomputes them inside the rotation for every head of every element: code_ref's bfloat16
    train step 0.339 s that way, 0.309 s with constants (bench/train_step.py, timed in turns).
    """
    xp = np if isinstance(positions, np.ndarray) else jnp
    angles = rope.angles(positions, x.shape[-1])  # [B, T, D/2]
    cos = xp.cos(angles)[:, :, None, :]
    sin = xp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
