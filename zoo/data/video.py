"""TFDS builder for "moving sprites": tiny synthetic videos for next-block-prediction models.

A video model needs data whose next frame is fully determined by the past, so that what it
generates can be checked exactly (`zoo.data.video_score`), and small enough to train on a CPU.
Each clip holds 1 to 3 sprites moving at constant velocity and bouncing off the frame edges, drawn
on a background of level 0 with pixel levels 1..3. Nothing is downloaded: every clip is generated
from a seed derived from (split, index), so every machine builds the same records in the same
order. Reading needs no TensorFlow (array_record + `as_data_source`, as `code_corpus` does).

The world, precisely:

- Shapes (`SHAPES`, masks with no empty border row or column, so a sprite's bounding box is its
  shape's): `square` 3x3 filled, `plus` 3x3 cross, `ring` 4x4 hollow square, `bar` 2x4 filled.
- A sprite has a shape, a colour level in {1, 2, 3}, a position (the top-left corner of its
  bounding box, (row, column)) and a velocity with each axis in {-1, 0, +1} px per frame, never
  (0, 0): every sprite moves, so no frame of a clip repeats the one before it.
- Physics (`bounce_step`), per axis independently, from one frame to the next: if position +
  velocity would put any part of the sprite outside the frame, the velocity on that axis flips
  first; then position += velocity. A sprite therefore never leaves the frame, and the velocity
  seen between two frames (their position difference) is the velocity the next step starts from.
- No two sprites overlap or touch (8-neighbourhood) in any frame, so the connected components of
  a frame are exactly its sprites. Clips are rejection sampled: the sprite count is drawn first
  (uniform over 1..3), then each sprite is redrawn until its whole trajectory stays clear of the
  sprites drawn before it; a clip whose sprites cannot be placed in `_MAX_TRIES` draws is redrawn.
- Splits are disjoint by content: a clip goes to validation iff a hash of its pixels falls in the
  validation bucket (1 in `VALIDATION_BUCKETS`), and clip (split, index) is the first draw from
  its seed's stream that lands in its split's bucket. The same clip can never be in both splits.

Tokenizer: a 2x2 patch of 2-bit pixels is one token id in 0..255,
`id = p[0,0] | p[0,1] << 2 | p[1,0] << 4 | p[1,1] << 6`. A frame of H x W pixels is
(H/2) * (W/2) tokens in row-major patch order (16x16 px: 8x8 = 64 tokens), and a clip is its
frames' tokens concatenated in time (16 frames: 1024 tokens). Token t of a clip is frame
t // tokens_per_frame, patch row (t % tokens_per_frame) // (W/2), patch column
(t % tokens_per_frame) % (W/2). Decoding maps every id >= 256 (a model's special tokens) to a
background patch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import zlib

import numpy as np
import tensorflow_datasets as tfds

from zoo.data.code_corpus import _no_progress_bars

LEVELS = 4  # pixel levels 0..3; 0 is background
PATCH = 2  # a token covers PATCH x PATCH pixels
PATCH_VOCAB = LEVELS ** (PATCH * PATCH)  # 256 token ids
MAX_SPRITES = 3
VALIDATION_BUCKETS = 8  # a clip is in validation iff its pixel hash % 8 == 0
_MAX_TRIES = 100  # draws per sprite before the whole clip is redrawn
_CLIPS_FORMAT = 1  # bump when the tokenizer changes, to invalidate cached token arrays


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


SHAPES: dict[str, np.ndarray] = {
    "square": _mask(["###", "###", "###"]),
    "plus": _mask([".#.", "###", ".#."]),
    "ring": _mask(["####", "#..#", "#..#", "####"]),
    "bar": _mask(["####", "####"]),
}
SHAPE_NAMES = tuple(SHAPES)
MAX_SHAPE = 4  # every shape fits in 4x4
VELOCITIES = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))
SPLITS = ("train", "validation")


# --------------------------------------------------------------------------------------------
# Physics and generation


def bounce_step(
    position: tuple[int, int], velocity: tuple[int, int], size: tuple[int, int],
    extent: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """One frame of motion: (position, velocity) -> the next (position, velocity).

    Per axis: if `position + velocity` would put the sprite (of `size` pixels on that axis)
    outside [0, extent), the velocity flips; then the position moves by the velocity. The score
    rolls predictions forward with this same function.
    """
    new_pos, new_vel = [], []
    for p, v, s, n in zip(position, velocity, size, extent, strict=True):
        if p + v < 0 or p + v + s > n:
            v = -v
        new_pos.append(p + v)
        new_vel.append(v)
    return (new_pos[0], new_pos[1]), (new_vel[0], new_vel[1])


def trajectory(
    position: tuple[int, int], velocity: tuple[int, int], size: tuple[int, int],
    extent: tuple[int, int], steps: int,
) -> np.ndarray:
    """int32 [steps + 1, 2]: the start position and the positions after each `bounce_step`."""
    out = [position]
    for _ in range(steps):
        position, velocity = bounce_step(position, velocity, size, extent)
        out.append(position)
    return np.array(out, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class Sprite:
    """A sprite's initial state: at frame 0 it is at `position` and will step with `velocity`."""

    shape: str
    colour: int
    position: tuple[int, int]
    velocity: tuple[int, int]

    @property
    def mask(self) -> np.ndarray:
        return SHAPES[self.shape]


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """Clip geometry of a config: `frames` frames of `height` x `width` pixels."""

    frames: int
    height: int
    width: int

    @property
    def tokens_per_frame(self) -> int:
        return tokens_per_frame(self.height, self.width)

    @property
    def tokens_per_clip(self) -> int:
        return self.frames * self.tokens_per_frame


def _check_spec(spec: VideoSpec) -> None:
    if spec.frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got frames={spec.frames}")
    for name in ("height", "width"):
        value = getattr(spec, name)
        if value < 2 * MAX_SHAPE or value % PATCH:
            raise ValueError(
                f"{name}={value}: frames must be even-sized (2x2 patches) and at least "
                f"{2 * MAX_SHAPE} px so that sprites of up to {MAX_SHAPE} px can move"
            )


def sprite_positions(sprite: Sprite, spec: VideoSpec) -> np.ndarray:
    """int32 [frames, 2]: the sprite's top-left corner in every frame of the clip."""
    return trajectory(sprite.position, sprite.velocity, sprite.mask.shape,
                      (spec.height, spec.width), spec.frames - 1)


def _touching_offsets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """bool [2M+3, 2M+3]: entry (dr + M + 1, dc + M + 1) says whether mask `b` placed at offset
    (dr, dc) from mask `a` overlaps or touches it (8-neighbourhood), M = MAX_SHAPE."""
    r = MAX_SHAPE + 1
    table = np.zeros((2 * r + 1, 2 * r + 1), dtype=bool)
    pa, pb = np.argwhere(a), np.argwhere(b)
    # b's pixel q at offset d sits at q + d; it touches a's pixel p when |p - q - d| <= 1.
    diff = (pa[:, None, :] - pb[None, :, :]).reshape(-1, 1, 2)  # p - q, every pixel pair
    d = (diff + np.array(VELOCITIES + ((0, 0),))).reshape(-1, 2)  # p - q + {-1, 0, 1}^2
    table[d[:, 0] + r, d[:, 1] + r] = True
    return table


_TOUCHING = {(x, y): _touching_offsets(SHAPES[x], SHAPES[y]) for x in SHAPES for y in SHAPES}


def _clear_of(path: np.ndarray, shape: str, others: list[tuple[np.ndarray, str]]) -> bool:
    """Whether a sprite of `shape` along `path` stays apart from every (path, shape) in `others`
    in every frame (no shared or 8-adjacent pixel)."""
    r = MAX_SHAPE + 1
    for other_path, other_shape in others:
        d = path - other_path  # offset of this sprite from the other one, per frame
        near = np.all(np.abs(d) <= r, axis=1)
        if near.any():
            dn = d[near] + r
            if _TOUCHING[other_shape, shape][dn[:, 0], dn[:, 1]].any():
                return False
    return True


def _draw_sprite(rng: np.random.Generator, spec: VideoSpec) -> Sprite:
    shape = SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))]
    h, w = SHAPES[shape].shape
    return Sprite(
        shape=shape,
        colour=int(rng.integers(1, LEVELS)),
        position=(int(rng.integers(spec.height - h + 1)), int(rng.integers(spec.width - w + 1))),
        velocity=VELOCITIES[rng.integers(len(VELOCITIES))],
    )


def _draw_clip(rng: np.random.Generator, spec: VideoSpec) -> list[Sprite]:
    """One rejection-sampled set of 1..MAX_SPRITES sprites that never touch."""
    while True:
        count = int(rng.integers(1, MAX_SPRITES + 1))
        placed: list[tuple[Sprite, np.ndarray]] = []
        for _ in range(count):
            for _ in range(_MAX_TRIES):
                sprite = _draw_sprite(rng, spec)
                path = sprite_positions(sprite, spec)
                if _clear_of(path, sprite.shape, [(p, s.shape) for s, p in placed]):
                    placed.append((sprite, path))
                    break
            else:
                break  # this sprite found no room: redraw the clip
        if len(placed) == count:
            return [s for s, _ in placed]


def render_clip(sprites: list[Sprite], spec: VideoSpec) -> np.ndarray:
    """uint8 [frames, height, width]: the sprites drawn in every frame on background 0."""
    clip = np.zeros((spec.frames, spec.height, spec.width), dtype=np.uint8)
    for sprite in sprites:
        h, w = sprite.mask.shape
        for f, (r, c) in enumerate(sprite_positions(sprite, spec)):
            clip[f, r : r + h, c : c + w][sprite.mask] = sprite.colour
    return clip


def is_validation_clip(clip: np.ndarray) -> bool:
    """Split by content: a hash of the clip's pixels picks 1 clip in VALIDATION_BUCKETS."""
    digest = hashlib.sha1(np.ascontiguousarray(clip, dtype=np.uint8).tobytes()).digest()
    return int.from_bytes(digest[:8], "big") % VALIDATION_BUCKETS == 0


def clip_sprites(split: str, index: int, spec: VideoSpec) -> list[Sprite]:
    """The sprites of clip `index` of `split`: the first draw from the seed (split, index) whose
    clip belongs to `split` (see `is_validation_clip`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"clip index must be non-negative, got {index}")
    _check_spec(spec)
    # crc32 of the split name is stable everywhere (Python's hash() of a str is salted).
    rng = np.random.default_rng([zlib.crc32(split.encode()), index])
    want_validation = split == "validation"
    while True:
        sprites = _draw_clip(rng, spec)
        if is_validation_clip(render_clip(sprites, spec)) == want_validation:
            return sprites


def generate_clip(split: str, index: int, spec: VideoSpec) -> np.ndarray:
    """uint8 [frames, height, width]: record `index` of `split` for clips of `spec`."""
    return render_clip(clip_sprites(split, index, spec), spec)


# --------------------------------------------------------------------------------------------
# Tokenizer


def tokens_per_frame(height: int, width: int) -> int:
    """Tokens of one frame: one per 2x2 patch."""
    if height <= 0 or width <= 0 or height % PATCH or width % PATCH:
        raise ValueError(f"frame size {height}x{width} must be positive and even (2x2 patches)")
    return (height // PATCH) * (width // PATCH)


def clip_to_tokens(clip: np.ndarray) -> np.ndarray:
    """uint8 [..., F, H, W] levels 0..3 -> int32 [..., F*H*W/4] patch ids (module docstring)."""
    clip = np.asarray(clip)
    if clip.ndim < 3:
        raise ValueError(f"clip must be [..., frames, height, width], got shape {clip.shape}")
    *lead, f, h, w = clip.shape
    tokens_per_frame(h, w)
    if not np.issubdtype(clip.dtype, np.integer):
        raise ValueError(f"clip must hold integer pixel levels, got dtype {clip.dtype}")
    if clip.size and (clip.min() < 0 or clip.max() >= LEVELS):
        raise ValueError(
            f"clip pixel levels must lie in 0..{LEVELS - 1}, got {clip.min()}..{clip.max()}"
        )
    p = clip.astype(np.int32).reshape(*lead, f, h // PATCH, PATCH, w // PATCH, PATCH)
    ids = p[..., 0, :, 0] | p[..., 0, :, 1] << 2 | p[..., 1, :, 0] << 4 | p[..., 1, :, 1] << 6
    return ids.reshape(*lead, -1)


def tokens_to_clip(tokens: np.ndarray, height: int, width: int) -> np.ndarray:
    """int [..., T] patch ids -> uint8 [..., T / tokens_per_frame, height, width].

    Ids >= 256 (special tokens: BOS, PAD, MASK, ...) decode as a background patch, so a model's
    raw output can always be drawn and scored.
    """
    tokens = np.asarray(tokens)
    per_frame = tokens_per_frame(height, width)
    if tokens.ndim < 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be an integer array [..., T], got {tokens.dtype} "
                         f"of shape {tokens.shape}")
    if tokens.shape[-1] % per_frame:
        raise ValueError(
            f"{tokens.shape[-1]} tokens is not a whole number of {height}x{width} frames "
            f"({per_frame} tokens each)"
        )
    if tokens.size and tokens.min() < 0:
        raise ValueError(f"token ids must be non-negative, got {tokens.min()}")
    *lead, t = tokens.shape
    ids = np.where(tokens < PATCH_VOCAB, tokens, 0).astype(np.int32)
    ids = ids.reshape(*lead, t // per_frame, height // PATCH, width // PATCH)
    frames = t // per_frame
    px = np.empty((*lead, frames, height // PATCH, PATCH, width // PATCH, PATCH), np.uint8)
    px[..., 0, :, 0] = ids & 3
    px[..., 0, :, 1] = ids >> 2 & 3
    px[..., 1, :, 0] = ids >> 4 & 3
    px[..., 1, :, 1] = ids >> 6 & 3
    return px.reshape(*lead, frames, height, width)


# --------------------------------------------------------------------------------------------
# TFDS builder


class MovingSpritesConfig(tfds.core.BuilderConfig):
    """A corpus variant: clip geometry (frames, height, width) and the number of clips per split."""

    def __init__(self, *, frames: int, height: int, width: int, num_train: int,
                 num_validation: int, **kwargs):
        super().__init__(**kwargs)
        self.frames, self.height, self.width = frames, height, width
        self.num_train, self.num_validation = num_train, num_validation

    @property
    def spec(self) -> VideoSpec:
        return VideoSpec(self.frames, self.height, self.width)


class MovingSprites(tfds.core.GeneratorBasedBuilder):
    """Clips of bouncing sprites as {clip: uint8 [frames, height, width]}, levels 0..3."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        MovingSpritesConfig(
            name="sprites", frames=16, height=16, width=16, num_train=4096, num_validation=256,
            description="4096 train and 256 validation clips of 16 frames of 16x16 px.",
        ),
        MovingSpritesConfig(
            name="sprites_small", frames=16, height=16, width=16, num_train=256,
            num_validation=64,
            description="256 train and 64 validation clips (the first of `sprites`), for tests.",
        ),
    ]
    code_path = None  # nothing is downloaded; see CodeCorpus.code_path

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description="Synthetic moving sprites: 1-3 sprites bouncing at constant velocity. "
            + cfg.description,
            features=tfds.features.FeaturesDict({
                "clip": tfds.features.Tensor(shape=(cfg.frames, cfg.height, cfg.width),
                                             dtype=np.uint8),
            }),
            metadata=tfds.core.MetadataDict(frames=cfg.frames, height=cfg.height,
                                            width=cfg.width),
            disable_shuffling=True,  # record i is clip i of its split
        )

    def _split_generators(self, dl_manager):
        """One generator per split; `dl_manager` is unused since nothing is downloaded."""
        del dl_manager
        cfg = self.builder_config
        _check_spec(cfg.spec)
        counts = {"train": cfg.num_train, "validation": cfg.num_validation}
        return {split: self._generate_examples(split, n) for split, n in counts.items()}

    def _generate_examples(self, split: str, count: int):
        spec = self.builder_config.spec
        for index in range(count):
            yield index, {"clip": generate_clip(split, index, spec)}


def video_spec(config_name: str) -> VideoSpec:
    """The clip geometry of the builder config `config_name`."""
    for cfg in MovingSprites.BUILDER_CONFIGS:
        if cfg.name == config_name:
            return cfg.spec
    known = [c.name for c in MovingSprites.BUILDER_CONFIGS]
    raise ValueError(f"unknown moving_sprites config {config_name!r}; known: {known}")


def build_sprites(config_name: str, data_dir: str) -> MovingSprites:
    """Returns the builder for `config_name` under `data_dir`, preparing it on first use only."""
    video_spec(config_name)  # a clear error for an unknown name
    builder = MovingSprites(config=config_name, data_dir=os.path.expanduser(os.fspath(data_dir)))
    if not builder.is_prepared():
        with _no_progress_bars():
            builder.download_and_prepare()
    return builder


def sprite_clips(config_name: str, data_dir: str, split: str) -> np.ndarray:
    """uint8 [N, frames, height, width]: the clips of `split`, in record order."""
    source = build_sprites(config_name, data_dir).as_data_source(split)
    records = source.__getitems__(list(range(len(source))))  # one batched read
    return np.stack([r["clip"] for r in records]).astype(np.uint8)


def load_clips(config_name: str, data_dir: str, split: str) -> np.ndarray:
    """int32 [N, tokens per clip]: the tokenized clips of `split`, cached as .npy beside the
    TFDS files."""
    if not re.fullmatch(r"\w+", split):
        raise ValueError(f"split must be a plain split name such as 'train', got {split!r}")
    builder = build_sprites(config_name, data_dir)
    path = os.path.join(os.fspath(builder.data_dir), f"tokens_v{_CLIPS_FORMAT}_{split}.npy")
    if not os.path.exists(path):
        tokens = clip_to_tokens(sprite_clips(config_name, data_dir, split)).astype(np.int32)
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, tokens)
        os.replace(tmp, path)  # atomic: a reader never sees a half-written cache
    return np.load(path)
