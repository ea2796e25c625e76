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
