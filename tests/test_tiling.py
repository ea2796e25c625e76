"""Tiled prediction (`clipseg.tiling`, `Predictor.segment_tiled`): tiles cover the image with the
overlap asked for, the merge hides seams, one tile is exactly the untiled path, and the demo model
finds small objects in large scenes that it cannot see whole."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipseg import Predictor
from clipseg.demo.large_scenes import make_large_scene
from clipseg.tiling import TileMerger, check_tiling, tile_boxes, tile_starts


@pytest.fixture(scope="module")
def demo() -> Predictor:
    return Predictor.from_pretrained("demo", device="cpu")


# -- tiles -------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 5000),
    tile=st.integers(8, 1024),
    overlap=st.floats(0.0, 0.89),
)
def test_tile_starts_cover_the_axis_with_the_overlap_asked_for(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] + tile == length  # the last tile ends at the border, inside the image
    shared = [a + tile - b for a, b in zip(starts, starts[1:], strict=False)]
    assert min(shared) >= int(overlap * tile) - 1  # rounding of the even spread
    # the fewest tiles: one fewer would need a stride above tile * (1 - overlap)
    stride = max(1, int(tile * (1 - overlap)))
    assert len(starts) - 2 < (length - tile) / stride


def test_tile_boxes_cover_every_pixel_row_by_row():
    boxes = tile_boxes(1000, 700, 256, 0.25)
    covered = np.zeros((700, 1000), int)
    for x0, y0, x1, y1 in boxes:
        assert x1 - x0 == 256 and y1 - y0 == 256
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    assert boxes == sorted(boxes, key=lambda b: (b[1], b[0]))
    # a side shorter than a tile is spanned by one tile of that length
    assert tile_boxes(1000, 100, 256, 0.25)[0] == (0, 0, 256, 100)


@pytest.mark.parametrize(
    ("tile_size", "overlap", "message"),
    [
        (4, 0.25, "below the model's patch size"),
        (-1, 0.25, r"0 \(off\) or positive"),
        (256, 0.9, r"\[0, 0.9\)"),
        (256, -0.1, r"\[0, 0.9\)"),
        (25.5, 0.25, "whole number"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(tile_size, overlap, message):
    with pytest.raises(ValueError, match=message):
        check_tiling(tile_size, overlap, 8)


def test_good_settings_pass():
    check_tiling(0, 0.0, 16)
    check_tiling(16, 0.89, 16)


# -- merging -----------------------------------------------------------------------------------


def _merge(field: np.ndarray, tile: int, overlap: float) -> np.ndarray:
    """Merge the tiles of a known (K, H, W) map cut by `tile_boxes`."""
    k, h, w = field.shape
    merger = TileMerger(k, h, w, tile, overlap)
    for x0, y0, x1, y1 in merger.boxes():
        merger.add((x0, y0, x1, y1), field[:, y0:y1, x0:x1])
    return merger.result()


def test_tiles_that_agree_merge_to_their_common_map():
    rng = np.random.default_rng(0)
    field = rng.random((3, 301, 457), dtype=np.float32)
    np.testing.assert_allclose(_merge(field, 100, 0.3), field, rtol=1e-5, atol=1e-6)


def test_a_seam_is_blended_gradually_not_cut():
    """Two tiles that disagree (0 against 1) hand over linearly across their overlap: no step."""
    merger = TileMerger(1, 10, 175, 100, 0.25)
    (left, right) = merger.boxes()
    merger.add(left, np.zeros((1, 10, 100), np.float32))
    merger.add(right, np.ones((1, 10, 100), np.float32))
    row = merger.result()[0, 0]
    overlap = slice(right[0], left[2])  # the 25 px both tiles cover
    assert (row[: right[0]] == 0).all() and (row[left[2] :] == 1).all()
    assert np.all(np.diff(row[overlap]) > 0)
    assert np.abs(np.diff(row)).max() < 0.1  # a 25 px ramp, not a jump of 1


def test_the_whole_image_view_keeps_what_the_tiles_miss():
    field = np.zeros((2, 50, 120), np.float32)
    whole = np.zeros_like(field)
    whole[1, 10:40, 20:100] = 0.8  # a large object only the whole view sees
    merged = TileMerger(2, 50, 120, 50, 0.25)
    for box in merged.boxes():
        x0, y0, x1, y1 = box
        merged.add(box, field[:, y0:y1, x0:x1] + 0.1)
    out = merged.result(lambda k: whole[k])
    assert np.allclose(out[0], 0.1) and np.allclose(out[1][10:40, 20:100], 0.8)
    assert np.allclose(out[1][:10], 0.1)


def test_what_the_whole_view_finds_it_decides_and_tiles_add_only_what_it_misses():
    """Rule 2: tiles take a large object for "b" where the whole view sees it as "a": that tile
    region goes; a small object only the tiles see stays."""
    h, w = 60, 160
    tiles = np.zeros((2, h, w), np.float32)
    tiles[1, 10:50, 20:90] = 0.9  # "b" on the large object, as close-up tiles see it
    tiles[1, 20:26, 130:136] = 0.9  # a small "b" the whole view misses
    whole = np.zeros_like(tiles)
    whole[0, 12:48, 22:88] = 0.8  # the whole view: the large object is "a"
    merger = TileMerger(2, h, w, 60, 0.25, found_threshold=0.3)
    for box in merger.boxes():
        x0, y0, x1, y1 = box
        merger.add(box, tiles[:, y0:y1, x0:x1])
    out = merger.result(lambda k: whole[k])
    assert (out[1][10:50, 20:90] < 0.3).all(), "the tiles' 'b' on the whole view's object stays"
    assert (out[1][20:26, 130:136] > 0.8).all(), "the small object only tiles see is lost"
    np.testing.assert_allclose(out[0], whole[0])


def test_a_missing_tile_or_view_is_an_error_not_a_hole():
    merger = TileMerger(1, 50, 120, 50, 0.25)
    merger.add(merger.boxes()[0], np.zeros((1, 50, 50), np.float32))
    with pytest.raises(RuntimeError, match="covered by no tile"):
        merger.result()
    merger = TileMerger(2, 40, 40, 50, 0.25)
    merger.add(merger.boxes()[0], np.zeros((2, 40, 40), np.float32))
    with pytest.raises(ValueError, match=r"view of label 0 is \(40, 39\), not the image's"):
        merger.result(lambda k: np.zeros((40, 39), np.float32))


# -- the Predictor -----------------------------------------------------------------------------


def test_an_image_that_fits_in_one_tile_gives_the_untiled_maps(demo):
    image = make_large_scene(3, width=300, height=200, num_objects=3).image
    prompts = ["red circle", "blue object", "star"]
    untiled = demo.segment(image, prompts)
    np.testing.assert_array_equal(demo.segment_tiled(image, prompts, tile_size=300), untiled)
    np.testing.assert_array_equal(demo.segment_tiled(image, prompts, tile_size=0), untiled)


def test_prompts_are_embedded_once_and_embeddings_are_accepted(demo):
    scene = make_large_scene(4, width=700, height=500, num_objects=4)
    prompts = ["red object", "blue object"]
    by_text = demo.segment_tiled(scene.image, prompts, tile_size=256)
    by_embedding = demo.segment_tiled(scene.image, demo.embed_prompts(prompts), tile_size=256)
    np.testing.assert_array_equal(by_text, by_embedding)
    assert by_text.shape == (2, 500, 700) and by_text.dtype == np.float32
    assert demo.is_image_set  # the whole image is the current one afterwards


def test_bad_tile_settings_are_refused_by_the_predictor(demo):
    with pytest.raises(ValueError, match="patch size"):
        demo.segment_tiled(np.zeros((64, 64, 3), np.uint8), ["red circle"], tile_size=4)


def _found(scene, probs, labels, threshold=0.3):
    """Objects matched one-to-one by a connected region of their own label at IoU > 0.5."""
    found = 0
    for k, label in enumerate(labels):
        truths = [o.mask for o in scene.objects if o.name == label]
        count, components = cv2.connectedComponents((probs[k] > threshold).astype(np.uint8))
        for c in range(1, count):
            region = components == c
            for i, truth in enumerate(truths):
                if truth is not None and (region & truth).sum() > 0.5 * (region | truth).sum():
                    found += 1
                    truths[i] = None
                    break
    return found


def test_the_demo_model_finds_small_objects_in_a_large_scene_only_with_tiles(demo):
    """1920 x 1440 with 10 shapes of 14-24 px radius: whole, each is 2 px at 128; in 256 px
    tiles each is the size the model was trained on (measured: 0 of 30 untiled, 27 of 30 tiled,
    seeds 0-2)."""
    found_tiled = found_untiled = total = 0
    for seed in range(2):
        scene = make_large_scene(seed)
        labels = sorted({o.name for o in scene.objects})
        total += len(scene.objects)
        found_tiled += _found(scene, demo.segment_tiled(scene.image, labels, tile_size=256), labels)
        found_untiled += _found(scene, demo.segment(scene.image, labels), labels)
    assert found_untiled <= 0.1 * total
    assert found_tiled >= 0.75 * total


def test_an_object_cut_by_a_tile_border_is_one_region(demo):
    """A 60 px red square centred on the border of the first two tiles: one connected region."""
    image = np.full((256, 512, 3), 128, np.uint8)
    boxes = tile_boxes(512, 256, 256, 0.0)
    assert len(boxes) == 2 and boxes[1][0] == 256
    image[98:158, 226:286] = (220, 30, 30)
    probs = demo.segment_tiled(image, ["red object"], tile_size=256, tile_overlap=0.0)
    count, components = cv2.connectedComponents((probs[0] > 0.3).astype(np.uint8))
    assert count - 1 == 1
    truth = np.zeros((256, 512), bool)
    truth[98:158, 226:286] = True
    region = components == 1
    assert (region & truth).sum() / (region | truth).sum() > 0.5
