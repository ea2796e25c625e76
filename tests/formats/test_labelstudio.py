"""Label Studio result builders, validated by label_studio_sdk's LabelInterface, and their
geometry checked against the mask."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface
from pycocotools import mask as mask_utils

from backend.formats.brush import decode_brush_rle
from backend.formats.labelstudio import (
    brush_result,
    polygon_results,
    rectangle_result,
    region_to_results,
    result_to_mask,
)
from backend.formats.regions import probability_to_regions

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">
    <Label value="cat"/><Label value="dog"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image">
    <Label value="cat"/><Label value="dog"/>
  </PolygonLabels>
  <RectangleLabels name="rect" toName="image">
    <Label value="cat"/><Label value="dog"/>
  </RectangleLabels>
</View>
"""
H, W = 90, 130
COMMON = {"to_name": "image", "original_width": W, "original_height": H}


def mask() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    m = (xx - 40) ** 2 + (yy - 45) ** 2 <= 25**2
    m |= (xx >= 100) & (xx < 120) & (yy >= 10) & (yy < 30)
    return m


def validate(results: list[dict]) -> list[str]:
    return LabelInterface(CONFIG).validate_prediction(
        {"result": results, "score": 0.5}, return_errors=True
    )


def test_results_validate_against_label_interface() -> None:
    m = mask()
    results = [
        brush_result(m, "cat", from_name="brush", score=0.8, **COMMON),
        *polygon_results(m, "dog", from_name="poly", score=0.7, **COMMON),
        rectangle_result(m, "cat", from_name="rect", score=0.6, **COMMON),
    ]
    assert len(results) == 4  # two polygons
    assert validate(results) == []
    for r in results:
        assert r["original_width"] == W and r["original_height"] == H
        assert r["image_rotation"] == 0 and isinstance(r["id"], str) and len(r["id"]) >= 6
    assert len({r["id"] for r in results}) == 4
    # the interface does catch a bad one: a label outside the config
    bad = brush_result(m, "zebra", from_name="brush", **COMMON)
    assert validate([bad])


def test_brush_value_decodes_to_the_mask() -> None:
    m = mask()
    r = brush_result(m, "cat", from_name="brush", **COMMON)
    assert r["type"] == "brushlabels" and r["value"]["format"] == "rle"
    assert r["value"]["brushlabels"] == ["cat"] and "score" not in r
    assert np.array_equal(decode_brush_rle(r["value"]["rle"], H, W) > 0, m)


def test_polygons_are_percent_and_rasterise_back() -> None:
    m = mask()
    results = polygon_results(m, "dog", from_name="poly", **COMMON)
    polys = []
    for r in results:
        v = r["value"]
        assert v["closed"] is True and v["polygonlabels"] == ["dog"]
        pts = np.array(v["points"])
        assert pts.min() >= 0 and pts.max() <= 100
        polys.append((pts * [W, H] / 100).ravel().tolist())
    back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, H, W))) > 0
    assert (back & m).sum() / (back | m).sum() >= 0.97


def test_rectangle_is_the_bounding_box_in_percent() -> None:
    m = np.zeros((H, W), bool)
    m[10:30, 100:120] = True
    v = rectangle_result(m, "cat", from_name="rect", **COMMON)["value"]
    assert v["x"] == pytest.approx(100 * 100 / W) and v["y"] == pytest.approx(100 * 10 / H)
    assert v["width"] == pytest.approx(100 * 20 / W) and v["height"] == pytest.approx(100 * 20 / H)
    assert v["rotation"] == 0 and v["rectanglelabels"] == ["cat"]
    assert rectangle_result(np.zeros((H, W), bool), "cat", from_name="rect", **COMMON) is None


def test_region_to_results() -> None:
    prob = mask().astype(np.float32) * 0.9
    regions = probability_to_regions(prob, "cat", mode="instance")
    out = [
        r
        for reg in regions
        for r in region_to_results(reg, "polygonlabels", from_name="poly", to_name="image")
    ]
    assert len(out) == 2 and out[0]["score"] == pytest.approx(0.9)
    assert validate(out) == []
    with pytest.raises(ValueError, match="result type"):
        region_to_results(regions[0], "keypointlabels", from_name="kp", to_name="image")


@pytest.mark.parametrize(
    ("m", "message"),
    [
        (np.zeros((H, W + 1), bool), "does not match original_height x original_width"),
        (np.zeros((W, H), bool), "does not match"),
        (np.zeros((H, W, 3), bool), "2-D"),
        (np.zeros((H, W), np.float32), "dtype float32"),
    ],
)
def test_bad_masks_raise(m, message: str) -> None:
    for build in (brush_result, polygon_results, rectangle_result):
        with pytest.raises(ValueError, match=message):
            build(m, "cat", from_name="x", **COMMON)


# -- results -> masks --------------------------------------------------------------------------


def test_result_to_mask_brush_is_exact_and_resizes_nearest() -> None:
    m = mask()
    m[40:50, 35:45] = False  # a hole, kept
    r = brush_result(m, "cat", from_name="brush", **COMMON)
    back = result_to_mask(r)
    assert back.dtype == np.bool_ and np.array_equal(back, m)
    # at twice the size (an image loaded larger than the original): each pixel a 2 x 2 block
    double = result_to_mask(r, height=2 * H, width=2 * W)
    assert np.array_equal(double, np.repeat(np.repeat(m, 2, axis=0), 2, axis=1))


def test_result_to_mask_polygon_round_trips_and_rasterises_pixel_edges() -> None:
    m = mask()
    polys = polygon_results(m, "dog", from_name="poly", **COMMON)
    back = np.logical_or.reduce([result_to_mask(r) for r in polys])
    assert (back & m).sum() / (back | m).sum() >= 0.97
    # a square with corners on pixel edges covers exactly the pixels inside them
    square = {"x": 100 * 20 / W, "y": 100 * 10 / H, "w": 100 * 50 / W, "h": 100 * 30 / H}
    points = [
        [square["x"], square["y"]],
        [square["w"], square["y"]],
        [square["w"], square["h"]],
        [square["x"], square["h"]],
    ]
    r = {"type": "polygonlabels", **COMMON, "value": {"points": points, "polygonlabels": ["c"]}}
    expected = np.zeros((H, W), bool)
    expected[10:30, 20:50] = True
    assert np.array_equal(result_to_mask(r), expected)


def test_result_to_mask_rectangle_plain_and_rotated() -> None:
    m = np.zeros((H, W), bool)
    m[10:30, 100:120] = True
    r = rectangle_result(m, "cat", from_name="rect", **COMMON)
    assert np.array_equal(result_to_mask(r), m)
    # rotated 90 degrees about its top-left corner (as the editor does): the box swings left
    turned = {**r, "value": {**r["value"], "rotation": 90}}
    ys, xs = np.nonzero(result_to_mask(turned))
    # 20 x 20 px box at x = 100, y = 10: after the turn x in [80, 100), y in [10, 30)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (80, 99, 10, 29)


def malformed_results() -> dict[str, tuple[dict, str]]:
    brush = brush_result(mask(), "cat", from_name="brush", **COMMON)
    poly = polygon_results(mask(), "cat", from_name="poly", **COMMON)[0]
    rect = rectangle_result(mask(), "cat", from_name="rect", **COMMON)
    assert rect is not None
    return {
        "truncated rle": (
            {**brush, "value": {**brush["value"], "rle": brush["value"]["rle"][:20]}},
            "truncated",
        ),
        "brush without rle": ({**brush, "value": {"brushlabels": ["cat"]}}, "has no 'rle'"),
        "two points": (
            {**poly, "value": {**poly["value"], "points": [[1, 1], [2, 2]]}},
            "3 or more",
        ),
        "ragged points": (
            {**poly, "value": {**poly["value"], "points": [[1, 1], [2], [3, 3]]}},
            "3 or more",
        ),
        "rectangle without width": (
            {**rect, "value": {k: v for k, v in rect["value"].items() if k != "width"}},
            "needs numbers x, y, width, height",
        ),
        "rectangle with text": ({**rect, "value": {**rect["value"], "x": "left"}}, "numbers"),
        "negative rectangle": ({**rect, "value": {**rect["value"], "width": -1}}, "bad rect"),
        "no value": ({k: v for k, v in rect.items() if k != "value"}, "no 'value' dict"),
        "keypoint": ({**rect, "type": "keypointlabels"}, "has no mask; supported"),
        "no size": (
            {k: v for k, v in poly.items() if k != "original_width"},
            "pass height and width",
        ),
        "bad size": ({**poly, "original_width": 12.5}, "bad original size"),
        "rle of another size": ({**brush, "original_width": W + 1}, "do not match"),
    }


@pytest.mark.parametrize("name", list(malformed_results()))
def test_result_to_mask_malformed_raises_value_error(name: str) -> None:
    result, message = malformed_results()[name]
    with pytest.raises(ValueError, match=message):
        result_to_mask(result)


def test_result_to_mask_without_original_size_uses_the_given_size() -> None:
    m = mask()
    r = brush_result(m, "cat", from_name="brush", **COMMON)
    del r["original_width"], r["original_height"]
    assert np.array_equal(result_to_mask(r, height=H, width=W), m)
