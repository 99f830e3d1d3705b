"""Pictures of moving-sprites clips: animated GIFs and PNG grids of conditioning vs generated.

A score says how often a video model breaks the physics; a picture shows how. Pixel levels map
to a fixed palette (`PALETTE`: dark background, then red, green, blue), so the same level looks
the same in every picture, and pixels are scaled up by whole numbers (nearest neighbour) so
single pixels stay sharp.

Grid layout (`grid_image`), for tiles of `height * scale` x `width * scale` px and
`gap = max(1, scale // 4)` px: one row per clip; each row is its conditioning frames, a
`scale`-px-wide light separator bar, then its generated frames; every tile and the separator are
surrounded by `gap` px of grey, so a row of C + G frames is
`gap + (C + G) * (width * scale + gap) + scale + gap` px wide, and N rows are
`gap + N * (height * scale + gap)` px tall. Shorter rows are padded with grey on the right.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from zoo.data.video import LEVELS

PALETTE = np.array([
    [24, 24, 32],  # 0: background
    [230, 75, 60],  # 1: red
    [90, 200, 80],  # 2: green
    [70, 140, 240],  # 3: blue
], dtype=np.uint8)
GAP_COLOUR = np.array([96, 96, 104], dtype=np.uint8)
SEPARATOR_COLOUR = np.array([240, 240, 240], dtype=np.uint8)


def _check_clip(clip: np.ndarray, name: str) -> np.ndarray:
    clip = np.asarray(clip)
    if clip.ndim != 3 or 0 in clip.shape:
        raise ValueError(f"{name} must be a non-empty [frames, height, width] array, "
                         f"got shape {clip.shape}")
    if not np.issubdtype(clip.dtype, np.integer) or clip.min() < 0 or clip.max() >= LEVELS:
        raise ValueError(f"{name} must hold pixel levels 0..{LEVELS - 1}, got dtype "
                         f"{clip.dtype} with values {clip.min()}..{clip.max()}")
    return clip.astype(np.uint8)


def _check_scale(scale: int) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")


def _upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(frames, scale, axis=-2), scale, axis=-1)


def frames_rgb(clip: np.ndarray, scale: int = 1) -> np.ndarray:
    """uint8 [F, H * scale, W * scale, 3]: the clip's frames in palette colours."""
    _check_scale(scale)
    return PALETTE[_upscale(_check_clip(clip, "clip"), scale)]


def save_gif(clip: np.ndarray, path: str | os.PathLike, scale: int = 8, fps: float = 4) -> None:
    """Writes `clip` [F, H, W] as a looping GIF of `fps` frames per second, pixels `scale`x.

    Pillow merges a frame identical to the one before into it (adding up their durations), so a
    clip that stands still for a while reads back with fewer, longer frames.
    """
    clip = _check_clip(clip, "clip")
    _check_scale(scale)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    frames = _upscale(clip, scale)
    images = []
    for frame in frames:
        image = Image.frombytes("P", (frame.shape[1], frame.shape[0]), frame.tobytes())
        image.putpalette(PALETTE.reshape(-1).tolist())
        images.append(image)
    images[0].save(os.fspath(path), format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)


def grid_image(rows: Sequence[tuple[np.ndarray, np.ndarray]], scale: int = 8) -> np.ndarray:
    """uint8 [height, width, 3]: the grid of `rows` of (conditioning, generated) clips laid out
    as in the module docstring."""
    _check_scale(scale)
    if not rows:
        raise ValueError("a grid needs at least one (conditioning, generated) row")
    checked = [(_check_clip(c, f"rows[{i}] conditioning"), _check_clip(g, f"rows[{i}] generated"))
               for i, (c, g) in enumerate(rows)]
    size = checked[0][0].shape[1:]
    for i, (c, g) in enumerate(checked):
        if c.shape[1:] != size or g.shape[1:] != size:
            raise ValueError(f"rows[{i}] has frames of {c.shape[1:]} and {g.shape[1:]}; every "
                             f"frame of the grid must be {size}")
    gap = max(1, scale // 4)
    th, tw = size[0] * scale, size[1] * scale
    width = max(gap + (len(c) + len(g)) * (tw + gap) + scale + gap for c, g in checked)
    image = np.empty((gap + len(checked) * (th + gap), width, 3), dtype=np.uint8)
    image[:] = GAP_COLOUR
    for i, (cond, gen) in enumerate(checked):
        top = gap + i * (th + gap)
        x = gap
        for frame in frames_rgb(cond, scale):
            image[top : top + th, x : x + tw] = frame
            x += tw + gap
        image[top : top + th, x : x + scale] = SEPARATOR_COLOUR
        x += scale + gap
        for frame in frames_rgb(gen, scale):
            image[top : top + th, x : x + tw] = frame
            x += tw + gap
    return image


def save_grid(rows: Sequence[tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
              scale: int = 8) -> None:
    """Writes `grid_image(rows, scale)` as a PNG: one row per clip, conditioning frames | a
    separator | generated frames."""
    Image.fromarray(grid_image(rows, scale)).save(os.fspath(path), format="PNG")
