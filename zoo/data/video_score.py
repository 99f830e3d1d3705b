"""Consistency score for generated moving-sprites frames: does the video obey the physics?

A clip of `zoo.data.video` is fully determined by its first two frames, so a video model's
continuation can be judged exactly, without a learned metric: parse the sprites of the
conditioning frames, roll the generator's own physics (`video.bounce_step`) forward, and check
each generated frame against the prediction.

Parsing. A sprite is a connected component (8-connectivity) of pixels of one colour level; the
generator keeps sprites from touching, so components are sprites. A sprite's shape is its pixel
mask relative to its bounding box, its position the box's top-left corner. Only the last two
conditioning frames are read: they must hold the same number of sprites, matched one to one with
the same colour and shape at most 1 px apart per axis. Sprites move at most 1 px per frame per
axis and two sprites of the same colour and shape are at least 3 px apart, so in a real clip each
sprite has exactly one such partner, the nearest one. The matched position difference is the
sprite's velocity. Conditioning that fails this (noise, a frame with
no sprites, sprites that appear, vanish, change or jump) has no defined continuation: every
generated frame counts as inconsistent and the score is 0 (`predict_sprites` raises
`UnparseableConditioning` saying what failed).

Consistency. A generated frame is consistent when its sprites are exactly the predicted ones:
the same number, each predicted sprite present with the same colour and shape within `tolerance`
px per axis of its predicted position (a one-to-one matching), and no other non-background pixel
(every such pixel belongs to some component, so an extra component fails the count). The default
tolerance is 0, exact physics; `tolerance=1` forgives an off-by-one position but then also
accepts a frozen copy of the last conditioning frame as the first generated frame (each sprite
moves only 1 px per frame), so it scores frozen video at about 1/G rather than 0.

The prediction assumes sprites stay apart, as they do in every clip the generator makes; past the
end of a generated clip they might touch, and a frame where they do can never be consistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from zoo.data.video import LEVELS, bounce_step


class UnparseableConditioning(ValueError):
    """The conditioning frames do not show sprites moving under the physics."""


class FrameSprite(NamedTuple):
    """A connected component of one colour: `shape` is its mask in its bounding box, as rows of
    0/1, and (row, col) the box's top-left corner."""

    colour: int
    row: int
    col: int
    shape: tuple[tuple[int, ...], ...]


_NEIGHBOURS = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))


def _check_frames(frames: np.ndarray, name: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"{name} must be [frames, height, width], got shape {frames.shape}")
    if not np.issubdtype(frames.dtype, np.integer):
        raise ValueError(f"{name} must hold integer pixel levels, got dtype {frames.dtype}")
    if frames.size and (frames.min() < 0 or frames.max() >= LEVELS):
        raise ValueError(f"{name} pixel levels must lie in 0..{LEVELS - 1}, "
                         f"got {frames.min()}..{frames.max()}")
    return frames.astype(np.int32)


def label_components(frames: np.ndarray) -> np.ndarray:
    """int32 [..., H, W]: 0 on background, else a label shared by exactly the pixels of one
    8-connected component of one colour level (labels are unique within a frame).

    Every non-background pixel starts with its own label and repeatedly takes the largest label
    among its same-colour neighbours until nothing changes: each component ends with its largest
    starting label. Frames are tiny, so this plain propagation is fast enough.
    """
    frames = np.asarray(frames, dtype=np.int32)
    h, w = frames.shape[-2:]
    on = frames > 0
    labels = np.where(on, np.arange(1, h * w + 1, dtype=np.int32).reshape(h, w), 0)
    pad = [(0, 0)] * (frames.ndim - 2) + [(1, 1), (1, 1)]
    colour = np.pad(frames, pad)  # padding is background, which matches no sprite pixel
    same = [colour[..., 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] == frames
            for dr, dc in _NEIGHBOURS]
    while True:
        padded = np.pad(labels, pad)
        new = labels
        for (dr, dc), s in zip(_NEIGHBOURS, same):
            neighbour = padded[..., 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
            new = np.maximum(new, np.where(s & on, neighbour, 0))
        if np.array_equal(new, labels):
            return labels
        labels = new


def find_sprites(frame: np.ndarray) -> list[FrameSprite]:
    """The connected components of one frame [H, W], sorted by (colour, row, col, shape)."""
    frame = _check_frames(np.asarray(frame)[None], "frame")[0]
    labels = label_components(frame)
    found = []
    for label in np.unique(labels[labels > 0]):
        rows, cols = np.nonzero(labels == label)
        r0, c0 = rows.min(), cols.min()
        mask = labels[r0 : rows.max() + 1, c0 : cols.max() + 1] == label
        found.append(FrameSprite(int(frame[rows[0], cols[0]]), int(r0), int(c0),
                                 tuple(tuple(int(x) for x in row) for row in mask)))
    return sorted(found)


def _match(wanted: Sequence[FrameSprite], found: Sequence[FrameSprite], tolerance: int,
           ) -> list[int] | None:
    """A one-to-one matching of `wanted` to `found` (same colour and shape, position within
    `tolerance` per axis): found index for each wanted sprite, or None if there is none."""
    if len(wanted) != len(found):
        return None
    candidates = [
        [j for j, f in enumerate(found)
         if f.colour == s.colour and f.shape == s.shape
         and abs(f.row - s.row) <= tolerance and abs(f.col - s.col) <= tolerance]
        for s in wanted
    ]
    owner: dict[int, int] = {}  # found index -> wanted index

    def assign(i: int, seen: set[int]) -> bool:  # augmenting path (Kuhn's algorithm)
        for j in candidates[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or assign(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    if not all(assign(i, set()) for i in range(len(wanted))):
        return None
    result = [0] * len(wanted)
    for j, i in owner.items():
        result[i] = j
    return result


def predict_sprites(conditioning: np.ndarray, steps: int) -> list[list[FrameSprite]]:
    """The sprites of the `steps` frames after `conditioning` [C >= 2, H, W] under the physics.

    Raises `UnparseableConditioning` (naming what failed) when the last two conditioning frames
    do not show the same sprites moving at most 1 px per axis; see the module docstring.
    """
    conditioning = _check_frames(conditioning, "conditioning")
    if conditioning.shape[0] < 2:
        raise ValueError(f"need at least 2 conditioning frames to see velocities, "
                         f"got {conditioning.shape[0]}")
    c, h, w = conditioning.shape
    before, last = find_sprites(conditioning[-2]), find_sprites(conditioning[-1])
    if not last:
        raise UnparseableConditioning(f"conditioning frame {c - 1} holds no sprites")
    if len(before) != len(last):
        raise UnparseableConditioning(
            f"conditioning frames {c - 2} and {c - 1} hold {len(before)} and {len(last)} "
            "components; sprites neither appear nor vanish"
        )
    match = _match(last, before, tolerance=1)
    if match is None:
        raise UnparseableConditioning(
            f"the {len(last)} components of conditioning frame {c - 1} do not each match one "
            f"of frame {c - 2} with the same colour and shape at most 1 px away"
        )
    states = []
    for sprite, j in zip(last, match):
        velocity = (sprite.row - before[j].row, sprite.col - before[j].col)
        states.append((sprite, (sprite.row, sprite.col), velocity))
    predicted = []
    for _ in range(steps):
        frame_sprites = []
        for k, (sprite, position, velocity) in enumerate(states):
            size = (len(sprite.shape), len(sprite.shape[0]))
            position, velocity = bounce_step(position, velocity, size, (h, w))
            states[k] = (sprite, position, velocity)
            frame_sprites.append(sprite._replace(row=position[0], col=position[1]))
        predicted.append(frame_sprites)
    return predicted


def frame_consistency(conditioning: np.ndarray, generated: np.ndarray, *,
                      tolerance: int = 0) -> np.ndarray:
    """bool [G]: whether each generated frame holds exactly the predicted sprites (module
    docstring); all False when the conditioning cannot be parsed."""
    if tolerance not in (0, 1):
        raise ValueError(f"tolerance must be 0 or 1 px, got {tolerance!r}")
    conditioning = _check_frames(conditioning, "conditioning")
    generated = _check_frames(generated, "generated")
    if generated.shape[1:] != conditioning.shape[1:]:
        raise ValueError(f"generated frames are {generated.shape[1:]}, conditioning frames "
                         f"{conditioning.shape[1:]}; they must be the same size")
    try:
        predicted = predict_sprites(conditioning, generated.shape[0])
    except UnparseableConditioning:
        return np.zeros(generated.shape[0], dtype=bool)
    return np.array([_match(want, find_sprites(frame), tolerance) is not None
                     for want, frame in zip(predicted, generated)], dtype=bool)


def consistency_score(conditioning: np.ndarray, generated: np.ndarray, *,
                      tolerance: int = 0) -> float:
    """The fraction in [0, 1] of generated frames [G, H, W] consistent with the physics rolled
    forward from `conditioning` [C >= 2, H, W]; 0 when the conditioning cannot be parsed."""
    ok = frame_consistency(conditioning, generated, tolerance=tolerance)
    if ok.size == 0:
        raise ValueError("no generated frames to score")
    return float(ok.mean())


def mean_consistency(conditioning: Sequence[np.ndarray] | np.ndarray,
                     generated: Sequence[np.ndarray] | np.ndarray, *,
                     tolerance: int = 0) -> float:
    """The mean `consistency_score` over clips: conditioning [N, C, H, W] (or N arrays) paired
    with generated [N, G, H, W] (or N arrays)."""
    if len(conditioning) != len(generated):
        raise ValueError(f"{len(conditioning)} conditioning clips but {len(generated)} "
                         "generated ones")
    if len(conditioning) == 0:
        raise ValueError("no clips to score")
    return float(np.mean([consistency_score(c, g, tolerance=tolerance)
                          for c, g in zip(conditioning, generated)]))
