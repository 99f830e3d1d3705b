import os

import numpy as np
import pytest
from PIL import Image

from zoo.data import video, video_images, video_score
from zoo.data.video import VideoSpec, bounce_step, clip_to_tokens, tokens_to_clip

CONFIG = "sprites_small"
SPEC = VideoSpec(frames=16, height=16, width=16)
COND = 4  # conditioning frames for the score tests


@pytest.fixture(scope="module")
def clips(data_dir) -> dict[str, np.ndarray]:
    return {split: video.sprite_clips(CONFIG, data_dir, split) for split in video.SPLITS}


def _dilate(mask: np.ndarray) -> np.ndarray:
    """8-neighbourhood dilation of bool [..., H, W]."""
    h, w = mask.shape[-2:]
    padded = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
    return np.any([padded[..., 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
                   for dr in (-1, 0, 1) for dc in (-1, 0, 1)], axis=0)


# ------------------------------------------------------------------------------------------
# Builder


def test_build_is_deterministic(clips, tmp_path_factory):
    other = str(tmp_path_factory.mktemp("sprites_again"))
    for split in video.SPLITS:
        again = video.sprite_clips(CONFIG, other, split)
        assert again.dtype == np.uint8 and again.shape == clips[split].shape
        np.testing.assert_array_equal(again, clips[split])
        # Record i is the clip generated from the seed (split, i).
        for i in (0, len(again) - 1):
            np.testing.assert_array_equal(again[i], video.generate_clip(split, i, SPEC))


def test_config_sizes(clips):
    assert video.video_spec(CONFIG) == SPEC == video.video_spec("sprites")
    assert SPEC.tokens_per_frame == 64 and SPEC.tokens_per_clip == 1024
    assert clips["train"].shape == (256, 16, 16, 16)
    assert clips["validation"].shape == (64, 16, 16, 16)
    with pytest.raises(ValueError, match="'nope'.*sprites_small"):
        video.video_spec("nope")


def test_splits_differ_and_are_disjoint(clips):
    train = {c.tobytes() for c in clips["train"]}
    validation = {c.tobytes() for c in clips["validation"]}
    assert len(validation) > 1 and len(train) > 1
    assert not train & validation
    assert not any(map(video.is_validation_clip, clips["train"]))
    assert all(map(video.is_validation_clip, clips["validation"]))


def test_clips_are_their_sprites_and_sprites_never_touch(clips):
    counts = set()
    for split in video.SPLITS:
        for index, clip in enumerate(clips[split]):
            sprites = video.clip_sprites(split, index, SPEC)
            counts.add(len(sprites))
            drawn = np.zeros_like(clip)
            occupancy = []
            for s in sprites:
                assert s.velocity != (0, 0) and s.colour in (1, 2, 3)
                occ = np.zeros(clip.shape, dtype=bool)
                h, w = s.mask.shape
                for f, (r, c) in enumerate(video.sprite_positions(s, SPEC)):
                    assert 0 <= r <= SPEC.height - h and 0 <= c <= SPEC.width - w
                    occ[f, r : r + h, c : c + w] = s.mask
                occupancy.append(occ)
                drawn[occ] = s.colour
            np.testing.assert_array_equal(drawn, clip)
            for i, a in enumerate(occupancy):
                for b in occupancy[i + 1 :]:
                    assert not (_dilate(a) & b).any(), f"{split} clip {index}: sprites touch"
            # So every frame's connected components are exactly its sprites.
            labels = video_score.label_components(clip)
            assert all(len(np.unique(f[f > 0])) == len(sprites) for f in labels)
    assert counts == {1, 2, 3}


def test_bounce_step_flips_before_moving():
    extent, size = (16, 16), (3, 4)
    assert bounce_step((5, 6), (1, -1), size, extent) == ((6, 5), (1, -1))
    # Would leave at the top / left: flip, then move away from the edge.
    assert bounce_step((0, 0), (-1, -1), size, extent) == ((1, 1), (1, 1))
    # Touching the bottom / right edge (13 + 3 = 16, 12 + 4 = 16): flip, then move back.
    assert bounce_step((13, 12), (1, 1), size, extent) == ((12, 11), (-1, -1))
    # One step short of the edge: still moves onto it.
    assert bounce_step((12, 11), (1, 1), size, extent) == ((13, 12), (1, 1))
    assert bounce_step((0, 7), (0, 1), size, extent) == ((0, 8), (0, 1))


# ------------------------------------------------------------------------------------------
# Tokenizer


def test_token_layout():
    clip = np.zeros((2, 16, 16), np.uint8)
    clip[0, :2, :2] = [[1, 2], [3, 0]]
    clip[1, 3, 5] = 2  # frame 1, patch (1, 2), bottom-right pixel of the patch
    tokens = clip_to_tokens(clip)
    assert tokens.dtype == np.int32 and tokens.shape == (128,)
    expected = np.zeros(128, np.int32)
    expected[0] = 1 | 2 << 2 | 3 << 4
    expected[64 + 1 * 8 + 2] = 2 << 6
    np.testing.assert_array_equal(tokens, expected)
    assert video.tokens_per_frame(16, 16) == 64 and video.tokens_per_frame(8, 12) == 24


def test_token_round_trip(clips):
    real = clips["validation"]
    tokens = clip_to_tokens(real)
    assert tokens.shape == (64, 1024) and 0 <= tokens.min() and tokens.max() < 256
    np.testing.assert_array_equal(tokens_to_clip(tokens, 16, 16), real)
    np.testing.assert_array_equal(tokens_to_clip(tokens[3], 16, 16), real[3])
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 4, (3, 5, 8, 12)).astype(np.uint8)
    np.testing.assert_array_equal(tokens_to_clip(clip_to_tokens(noise), 8, 12), noise)
    # Every id 0..255 decodes to a patch that encodes back to it: 256 distinct patches.
    ids = np.arange(256)
    np.testing.assert_array_equal(clip_to_tokens(tokens_to_clip(ids, 32, 32)), ids)


def test_special_ids_decode_as_background():
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 256, 2 * 64)
    special = rng.random(tokens.shape) < 0.3
    tokens[special] = rng.integers(256, 300, special.sum())
    decoded = tokens_to_clip(tokens, 16, 16)
    again = clip_to_tokens(decoded)
    assert (again[special] == 0).all()
    np.testing.assert_array_equal(again[~special], tokens[~special])


def test_tokenizer_errors():
    with pytest.raises(ValueError, match="levels must lie in 0..3"):
        clip_to_tokens(np.full((1, 16, 16), 4, np.uint8))
    with pytest.raises(ValueError, match="15x16"):
        clip_to_tokens(np.zeros((1, 15, 16), np.uint8))
    with pytest.raises(ValueError, match="65 tokens"):
        tokens_to_clip(np.zeros(65, np.int32), 16, 16)
    with pytest.raises(ValueError, match="non-negative"):
        tokens_to_clip(np.full(64, -1), 16, 16)


def test_load_clips_caches_tokens(clips, data_dir, monkeypatch):
    tokens = video.load_clips(CONFIG, data_dir, "validation")
    assert tokens.dtype == np.int32 and tokens.shape == (64, 1024)
    np.testing.assert_array_equal(tokens, clip_to_tokens(clips["validation"]))
    data_path = str(video.build_sprites(CONFIG, data_dir).data_dir)
    cached = [n for n in os.listdir(data_path) if n.endswith("_validation.npy")]
    assert len(cached) == 1

    def no_reads(*args):
        raise AssertionError("read the TFDS records although the cache exists")

    monkeypatch.setattr(video, "sprite_clips", no_reads)
    np.testing.assert_array_equal(video.load_clips(CONFIG, data_dir, "validation"), tokens)
    with pytest.raises(ValueError, match="plain split name"):
        video.load_clips(CONFIG, data_dir, "train[:10]")


# ------------------------------------------------------------------------------------------
# Consistency score


def test_label_components_match_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 4, (20, 16, 16)) * (rng.random((20, 16, 16)) < 0.6)
    labels = video_score.label_components(frames)
    for frame, lab in zip(frames, labels):
        assert ((lab > 0) == (frame > 0)).all()
        expected = np.zeros_like(lab)
        for level in (1, 2, 3):
            got, n = ndimage.label(frame == level, structure=np.ones((3, 3)))
            expected[got > 0] = got[got > 0] + level * 1000
        # Same partition: a pixel pair shares a label in one exactly when it does in the other.
        on = frame > 0
        a, b = lab[on], expected[on]
        np.testing.assert_array_equal(a[:, None] == a[None], b[:, None] == b[None])


def test_find_sprites_reads_shape_colour_position():
    frame = np.zeros((16, 16), np.uint8)
    frame[5:8, 9:12][video.SHAPES["plus"]] = 2
    frame[0:4, 0:4][video.SHAPES["ring"]] = 3
    frame[12, 12], frame[13, 13] = 1, 1  # diagonal neighbours: one component
    found = video_score.find_sprites(frame)
    assert found == sorted([
        video_score.FrameSprite(2, 5, 9, ((0, 1, 0), (1, 1, 1), (0, 1, 0))),
        video_score.FrameSprite(3, 0, 0, ((1, 1, 1, 1), (1, 0, 0, 1), (1, 0, 0, 1),
                                          (1, 1, 1, 1))),
        video_score.FrameSprite(1, 12, 12, ((1, 0), (0, 1))),
    ])


def test_every_real_clip_is_consistent_frame_by_frame(clips):
    for split in video.SPLITS:
        for clip in clips[split]:
            # Two conditioning frames: the physics predicts all 14 others exactly.
            ok = video_score.frame_consistency(clip[:2], clip[2:])
            assert ok.shape == (14,) and ok.all()


def _shuffled(generated: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    for _ in range(20):
        out = generated[rng.permutation(len(generated))]
        if not np.array_equal(out, generated):
            return out
    return None


def test_score_separates_real_from_broken_video(clips):
    val = clips["validation"]
    cond, gen = val[:, :COND], val[:, COND:]
    rng = np.random.default_rng(3)
    real = video_score.mean_consistency(cond, gen)
    pairs = [(c, s) for c, g in zip(cond, gen) if (s := _shuffled(g, rng)) is not None]
    assert len(pairs) == len(val)  # sprites always move, so every clip's frames all differ
    shuffled = video_score.mean_consistency([c for c, _ in pairs], [s for _, s in pairs])
    frozen = video_score.mean_consistency(cond, np.repeat(cond[:, -1:], gen.shape[1], axis=1))
    noise = video_score.mean_consistency(cond, rng.integers(0, 4, gen.shape))
    assert real >= 0.95, real
    assert shuffled < 0.3 and frozen < 0.3 and noise < 0.3, (shuffled, frozen, noise)


def test_unparseable_conditioning_scores_zero(clips):
    clip = clips["validation"][0]
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 4, (COND, 16, 16))
    with pytest.raises(video_score.UnparseableConditioning):
        video_score.predict_sprites(noise, 3)
    assert video_score.consistency_score(noise, clip[COND:]) == 0.0
    empty = np.zeros((COND, 16, 16), np.uint8)
    assert video_score.consistency_score(empty, empty) == 0.0
    jump = np.zeros((2, 16, 16), np.uint8)
    jump[0, 5:8, 5:8] = jump[1, 5:8, 8:11] = 1  # a square jumps 3 px in one frame
    with pytest.raises(video_score.UnparseableConditioning, match="at most 1 px"):
        video_score.predict_sprites(jump, 3)


def test_score_flags_each_kind_of_error(clips):
    clip = clips["validation"][1]
    cond, gen = clip[:COND], clip[COND:].copy()
    assert video_score.consistency_score(cond, gen) == 1.0
    # Every sprite moved right or down, in a frame with room for it: off by 1 px, only
    # tolerance=1 forgives it; off by 2 px, nothing does.
    for axis in (0, 1):
        for by, tolerated in ((1, True), (2, False)):
            k = next(i for i, f in enumerate(gen) if not np.take(f, [-2, -1], axis=axis).any())
            shifted = gen.copy()
            shifted[k] = np.roll(gen[k], by, axis=axis)
            assert not video_score.frame_consistency(cond, shifted)[k]
            assert video_score.frame_consistency(cond, shifted, tolerance=1)[k] == tolerated
    # A stray pixel away from every sprite.
    stray = gen.copy()
    r, c = np.argwhere(~_dilate(gen[k] > 0))[0]
    stray[k, r, c] = 1
    ok = video_score.frame_consistency(cond, stray, tolerance=1)
    assert not ok[k] and ok.sum() == len(gen) - 1
    # A sprite in the wrong colour.
    recoloured = gen.copy()
    level = int(gen[k].max())
    recoloured[k][gen[k] == level] = level % 3 + 1
    assert not video_score.frame_consistency(cond, recoloured)[k]
    # A missing sprite.
    missing = gen.copy()
    missing[k][gen[k] == level] = 0
    assert not video_score.frame_consistency(cond, missing)[k]


def test_score_argument_errors(clips):
    clip = clips["validation"][0]
    with pytest.raises(ValueError, match="at least 2 conditioning"):
        video_score.consistency_score(clip[:1], clip[1:])
    with pytest.raises(ValueError, match="same size"):
        video_score.consistency_score(clip[:4], clip[4:, :8])
    with pytest.raises(ValueError, match="tolerance"):
        video_score.consistency_score(clip[:4], clip[4:], tolerance=2)
    with pytest.raises(ValueError, match="levels must lie in 0..3"):
        video_score.consistency_score(clip[:4], clip[4:] + 4)
    with pytest.raises(ValueError, match="3 conditioning clips but 2"):
        video_score.mean_consistency([clip[:4]] * 3, [clip[4:]] * 2)


# ------------------------------------------------------------------------------------------
# Images


def test_save_gif(clips, tmp_path):
    clip = clips["validation"][0]
    path = tmp_path / "clip.gif"
    video_images.save_gif(clip, path, scale=8, fps=4)
    want = video_images.frames_rgb(clip, 8)
    with Image.open(path) as image:
        assert image.format == "GIF" and image.size == (128, 128)
        assert image.n_frames == 16
        assert image.info["duration"] == 250 and image.info["loop"] == 0
        for i in range(16):
            image.seek(i)
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), want[i])
    assert len({tuple(c) for c in video_images.PALETTE}) == 4


def test_save_grid(clips, tmp_path):
    val = clips["validation"]
    rows = [(c[:COND], c[COND:]) for c in val[:3]] + [(val[3, :2], val[3, 2:5])]
    path = tmp_path / "grid.png"
    video_images.save_grid(rows, path, scale=4)
    gap, tile = 1, 16 * 4
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (gap + 16 * (tile + gap) + 4 + gap, gap + 4 * (tile + gap))
        pixels = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(pixels, video_images.grid_image(rows, scale=4))
    # Row 1: its last conditioning frame, the separator, its first generated frame.
    top = gap + (tile + gap)
    x = gap + (COND - 1) * (tile + gap)
    np.testing.assert_array_equal(pixels[top : top + tile, x : x + tile],
                                  video_images.frames_rgb(val[1, COND - 1 : COND], 4)[0])
    x += tile + gap
    assert (pixels[top : top + tile, x : x + 4] == video_images.SEPARATOR_COLOUR).all()
    x += 4 + gap
    np.testing.assert_array_equal(pixels[top : top + tile, x : x + tile],
                                  video_images.frames_rgb(val[1, COND : COND + 1], 4)[0])
    # The short last row is padded with the gap colour.
    assert (pixels[-gap - tile :, -(11 * (tile + gap)) :] == video_images.GAP_COLOUR).all()
    with pytest.raises(ValueError, match=r"rows\[1\] generated"):
        video_images.save_grid([rows[0], (val[0, :2], val[0, 2:] + 4)], tmp_path / "bad.png")
