"""Regions from probability maps: thresholding, hole filling, small components, modes, scores,
and the validation of bad maps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from backend.formats.regions import (
    Region,
    fill_mask_holes,
    mask_bbox,
    probabilities_to_regions,
    probability_to_regions,
)


def scene() -> np.ndarray:
    """0.9 in a 20x30 ring with a 6x6 hole, 0.7 in a 3x3 speck, 0.1 elsewhere (100 x 120)."""
    prob = np.full((100, 120), 0.1, np.float32)
    prob[10:30, 20:50] = 0.9
    prob[17:23, 32:38] = 0.2  # the hole
    prob[70:73, 90:93] = 0.7  # the speck
    return prob


def test_semantic_is_one_region_with_mean_score_and_bbox() -> None:
    (region,) = probability_to_regions(scene(), "cat", threshold=0.5)
    assert isinstance(region, Region) and region.label == "cat"
    assert region.mask.dtype == np.bool_ and region.mask.shape == (100, 120)
    assert region.area == 20 * 30 - 36 + 9
    expected = (0.9 * (600 - 36) + 0.7 * 9) / (600 - 36 + 9)
    assert region.score == pytest.approx(expected, rel=1e-6)
    assert region.bbox == (20, 10, 93 - 20, 73 - 10)  # x, y, w, h pixel extents


def test_instance_mode_splits_components_largest_first() -> None:
    regions = probability_to_regions(scene(), "cat", threshold=0.5, mode="instance")
    assert [r.area for r in regions] == [600 - 36, 9]
    assert regions[0].score == pytest.approx(0.9) and regions[1].score == pytest.approx(0.7)
    assert regions[1].bbox == (90, 70, 3, 3)
    assert not (regions[0].mask & regions[1].mask).any()


def test_diagonal_pixels_are_one_component() -> None:
    prob = np.zeros((5, 5), np.float32)
    prob[[0, 1, 2], [0, 1, 2]] = 1.0
    assert len(probability_to_regions(prob, "x", mode="instance")) == 1


def test_fill_holes_and_min_area() -> None:
    (region,) = probability_to_regions(scene(), "cat", fill_holes=True, min_area=10)
    assert region.area == 600  # hole filled, speck (9 px) dropped
    assert region.bbox == (20, 10, 30, 20)
    # percent of the image: 0.1% of 12,000 = 12 px drops the speck too
    (region,) = probability_to_regions(scene(), "cat", min_area_percent=0.1)
    assert region.area == 600 - 36
    assert probability_to_regions(scene(), "cat", min_area=10_000) == []


def test_fill_holes_leaves_border_background() -> None:
    mask = np.zeros((6, 6), bool)
    mask[:, 2] = True  # a wall splitting the image: both sides touch the border
    assert np.array_equal(fill_mask_holes(mask), mask)
    ring = np.zeros((5, 5), bool)
    ring[1:4, 1:4] = True
    ring[2, 2] = False
    assert fill_mask_holes(ring)[2, 2]


def test_fill_holes_fills_inside_an_8_connected_outline() -> None:
    """A diamond drawn with diagonal steps is closed for 8-connected foreground: its inside is a
    hole (background taken 4-connected), though 8-connected background would leak out."""
    outline = np.zeros((9, 9), np.uint8)
    cv2.polylines(outline, [np.array([[4, 0], [8, 4], [4, 8], [0, 4]], np.int32)], True, 1)
    outline = outline > 0
    yy, xx = np.mgrid[:9, :9]
    assert np.array_equal(fill_mask_holes(outline), np.abs(xx - 4) + np.abs(yy - 4) <= 4)


def test_min_area_percent_rounds_up_to_whole_pixels() -> None:
    def areas(prob: np.ndarray, percent: float) -> list[int]:
        regions = probability_to_regions(prob, "x", mode="instance", min_area_percent=percent)
        return [r.area for r in regions]

    # 100 x 120 = 12,000 px, the speck 9 px; 0.0751% is 9.012 px: the speck is under it
    # (rounding down would keep it); 0.075% is exactly 9 px: kept
    assert areas(scene(), 0.0751) == [564]
    assert areas(scene(), 0.075) == [564, 9]
    # 7% of 100 px computes as 7.000000000000001: a 7 px component is not under it
    small = np.zeros((5, 20), np.float32)
    small[1, 2:9] = 0.9
    assert areas(small, 7) == [7]


def test_threshold_is_strict_and_empty_map_gives_nothing() -> None:
    prob = np.full((4, 4), 0.5, np.float32)
    assert probability_to_regions(prob, "x", threshold=0.5) == []
    assert len(probability_to_regions(prob, "x", threshold=0.49)) == 1


def test_stack_exclusive_assigns_each_pixel_once() -> None:
    a = np.zeros((10, 10), np.float32)
    b = np.zeros((10, 10), np.float32)
    a[:, :6] = 0.8
    b[:, 4:] = 0.9
    both = probabilities_to_regions(np.stack([a, b]), ["a", "b"])
    assert [r.area for r in both] == [60, 60]
    excl = probabilities_to_regions(np.stack([a, b]), ["a", "b"], exclusive=True)
    assert [r.area for r in excl] == [40, 60]
    assert not (excl[0].mask & excl[1].mask).any()
    per_label = probabilities_to_regions(np.stack([a, b]), ["a", "b"], threshold=[0.85, 0.5])
    assert [r.label for r in per_label] == ["b"]
    # equal probabilities: the pixel goes to the first label only
    tie = probabilities_to_regions(np.stack([b, a, b]), ["b1", "a", "b2"], exclusive=True)
    assert [(r.label, r.area) for r in tie] == [("b1", 60), ("a", 40)]


def test_mask_bbox_of_empty_mask() -> None:
    assert mask_bbox(np.zeros((3, 3), bool)) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("prob", "message"),
    [
        (np.zeros((2, 3, 4), np.float32), "2-D"),
        (np.zeros(5, np.float32), "2-D"),
        (np.zeros((3, 3), np.uint8), "floating point"),
        (np.zeros((3, 3), bool), "floating point"),
        (np.array([[0.1, np.nan]], np.float32), "1 NaN"),
        (np.array([[0.1, 1.5]], np.float32), r"\[0, 1\]"),
        (np.array([[-0.1, 0.5]], np.float64), r"\[0, 1\]"),
        ([[0.1, 0.2]], "numpy array"),
        (np.zeros((0, 3), np.float32), "empty"),
    ],
)
def test_bad_maps_raise(prob, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        probability_to_regions(prob, "x")


def test_bad_arguments_raise() -> None:
    prob = scene()
    with pytest.raises(ValueError, match="mode"):
        probability_to_regions(prob, "x", mode="panoptic")
    with pytest.raises(ValueError, match="threshold"):
        probability_to_regions(prob, "x", threshold=1.5)
    with pytest.raises(ValueError, match="min_area"):
        probability_to_regions(prob, "x", min_area=-1)
    with pytest.raises(ValueError, match="2 labels"):
        probabilities_to_regions(np.stack([prob] * 3), ["a", "b"])
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        probabilities_to_regions(prob, ["a"])


def test_formats_package_imports_neither_torch_nor_clipseg() -> None:
    import subprocess
    import sys

    code = (
        "import sys, backend.formats; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'clipseg')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_region_built_from_a_mask_derives_its_bbox() -> None:
    """A caller that makes its own regions (the backend, tests) gives mask, score and label;
    bbox and area follow from the mask."""
    mask = np.zeros((40, 60), bool)
    mask[5:15, 10:40] = True
    region = Region(mask=mask, score=0.8, label="cat")
    assert region.bbox == (10, 5, 30, 10) == mask_bbox(mask) and region.area == 300
    assert Region(mask=np.zeros((4, 4), bool), score=0.0, label="cat").bbox == (0, 0, 0, 0)
