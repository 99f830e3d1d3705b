"""Continuing video clips: condition on a clip's first frames, generate the rest of it.

The run's objective picks the decoder: a next-block model emits a block (a frame, or some rows of
one) per forward through `next_block.generate`; a next-token model one patch token per forward
through `ar.generate`. Both see the same conditioning tokens and produce the same number of
frames, so their speed and the consistency of their frames compare directly.
"""

import dataclasses
import time

import jax
import numpy as np

from zoo.data.tokenizer import PAD_ID
from zoo.decode import ar, next_block
from zoo.decode.sampling import Sampler


@dataclasses.dataclass
class Continuation:
    tokens: np.ndarray  # int32[N, generated frames * tokens per frame]
    forwards: int  # model forwards of the whole batch (prefill included)
    seconds: float  # wall time of the decode, compiled beforehand


def continue_clips(model, params, objective, clips: np.ndarray, given_frames: int,
                   frame_tokens: int, *, sampler: Sampler = Sampler(), rng=None,
                   warmup: bool = True) -> Continuation:
    """Generate frames `given_frames`.. of `clips` (int32[N, frames * frame_tokens]) from their
    first `given_frames`; `objective` is the run's `ObjectiveConfig`. With `warmup` the decode
    runs once untimed first, so `seconds` excludes compilation."""
    clips = np.asarray(clips)
    total_frames = clips.shape[1] // frame_tokens
    if not 1 <= given_frames < total_frames:
        raise ValueError(f"given_frames={given_frames} must be in [1, {total_frames - 1}] for "
                         f"clips of {total_frames} frames")
    new = (total_frames - given_frames) * frame_tokens
    prompts = [row[: given_frames * frame_tokens].tolist() for row in clips]
    rng = jax.random.key(0) if rng is None else rng
    kw = dict(max_new_tokens=new, sampler=sampler, rng=rng, eos_id=-1, pad_id=PAD_ID)
    if objective.kind == "next_block":
        run = lambda: next_block.generate(model, params, prompts,  # noqa: E731
                                          block_size=objective.block_size, **kw)
    else:
        run = lambda: ar.generate(model, params, prompts, **kw)  # noqa: E731
    if warmup:
        run()
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    forwards = getattr(out, "forwards", new)  # AR: the prefill and one extend per later token
    return Continuation(np.asarray(out.tokens[:, :new]), forwards, seconds)
