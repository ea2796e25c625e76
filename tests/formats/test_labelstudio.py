"""Label Studio result builders, validated by label_studio_sdk's LabelInterface, and their
geometry checked against the mask."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter.brush import decode_rle as sdk_decode_rle
from label_studio_sdk.converter.utils import convert_annotation_to_yolo_obb
from label_studio_sdk.label_interface import LabelInterface
from pycocotools import mask as mask_utils

from backend.controls import region_to_results, result_to_mask
from backend.formats.brush import decode_brush_rle
from backend.formats.labelstudio import (
    EXTENT_PERCENT,
    brush_result,
    polygon_results,
    rasterize_polygon,
    rectangle_result,
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


def without_ids(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "id"} for r in results]


@pytest.mark.parametrize("scale", [1, 255])
def test_uint8_masks_are_their_non_zero_pixels_for_every_builder(scale: int) -> None:
    """bool, uint8 0/1 and uint8 0/255 give the same results (the brush RLE always 0/255)."""
    m = mask()
    m8 = m.astype(np.uint8) * np.uint8(scale)
    for build, name in ((brush_result, "brush"), (rectangle_result, "rect")):
        ours = build(m8, "cat", from_name=name, result_id="r1", **COMMON)
        assert ours == build(m, "cat", from_name=name, result_id="r1", **COMMON)
    polys = polygon_results(m8, "cat", from_name="poly", **COMMON)
    assert without_ids(polys) == without_ids(polygon_results(m, "cat", from_name="poly", **COMMON))
    brush = brush_result(m8, "cat", from_name="brush", **COMMON)
    alpha = sdk_decode_rle(brush["value"]["rle"]).reshape(H, W, 4)[:, :, 3]
    assert np.array_equal(alpha, m.astype(np.uint8) * 255)  # what the editor shows
    assert validate([brush, *polys]) == []


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
    # at non-integer factors (where linear interpolation would blur the outline): nearest
    for height, width in ((137, 171), (61, 97), (H, 2 * W + 3)):
        expected = cv2.resize(m.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(result_to_mask(r, height=height, width=width), expected > 0)


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


def coco_polygon(points_px: np.ndarray, height: int, width: int) -> np.ndarray:
    """pycocotools' rasterisation of one polygon of (N, 2) x, y pixel edges: the oracle."""
    rles = mask_utils.frPyObjects([np.asarray(points_px, float).ravel().tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rles)) > 0


@pytest.mark.parametrize(("height", "width"), [(2 * H, 2 * W), (H, 2 * W), (3 * H, W + 7)])
def test_result_to_mask_polygon_and_rectangle_at_another_size(height: int, width: int) -> None:
    """Drawn at (height, width), percent means percent of that size, as on the editor's canvas."""
    polys = polygon_results(mask(), "dog", from_name="poly", **COMMON)
    for r in polys:
        points = np.array(r["value"]["points"]) * [width / 100, height / 100]
        expected = coco_polygon(points, height, width)
        assert np.array_equal(result_to_mask(r, height=height, width=width), expected)
    m = np.zeros((H, W), bool)
    m[10:30, 100:120] = True
    rect = rectangle_result(m, "cat", from_name="rect", **COMMON)
    fx, fy = width / W, height / H
    expected = np.zeros((height, width), bool)
    # the box's pixel edges scaled: pixel centres inside [100 fx, 120 fx) x [10 fy, 30 fy)
    cols, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
    inside_x = (cols > 100 * fx) & (cols < 120 * fx)
    inside_y = (rows > 10 * fy) & (rows < 30 * fy)
    expected[np.ix_(inside_y, inside_x)] = True
    assert np.array_equal(result_to_mask(rect, height=height, width=width), expected)


def test_rotated_rectangle_rotates_in_original_pixels() -> None:
    """A 40 x 10 box at (30, 10) on a 100 x 100 image turned 90 degrees clockwise covers x 20-30,
    y 10-50; on the image loaded at 200 x 100 that is x 40-60, y 10-50 (rotating after scaling
    would give x 50-60, y 10-90)."""
    value = {"x": 30, "y": 10, "width": 40, "height": 10, "rotation": 90, "rectanglelabels": ["a"]}
    r = {"type": "rectanglelabels", "original_width": 100, "original_height": 100, "value": value}
    ys, xs = np.nonzero(result_to_mask(r))
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (20, 30, 10, 50)
    ys, xs = np.nonzero(result_to_mask(r, height=100, width=200))
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (40, 60, 10, 50)
    # any angle, any aspect: label_studio_sdk's corners (fractions of the original size)
    for rotation in (17.5, 90, 133, 251):
        for height, width in ((100, 200), (260, 90)):
            turned = {**r, "original_width": 120, "value": {**value, "rotation": rotation}}
            label = {**turned["value"], "original_width": 120, "original_height": 100}
            corners = np.array(convert_annotation_to_yolo_obb(label)) * [width, height]
            got = result_to_mask(turned, height=height, width=width)
            assert np.array_equal(got, coco_polygon(corners, height, width)), (rotation, width)


@settings(deadline=None, max_examples=60)
@given(
    st.integers(3, 40),
    st.integers(3, 40),
    st.lists(st.tuples(st.floats(-100, 200), st.floats(-100, 200)), min_size=3, max_size=25),
    st.integers(1, 200),
)
def test_polygons_partly_outside_rasterise_as_pycocotools(
    height: int, width: int, points: list, piece_pixels: int
) -> None:
    """Points up to one image size outside the image are kept as they are (no clipping, which
    would move the outline's pixels at 5x resolution), and an outline drawn in pieces gives
    exactly pycocotools' mask of the whole polygon."""
    size = {"original_width": width, "original_height": height}
    r = {"type": "polygonlabels", **size, "value": {"points": points, "polygonlabels": ["a"]}}
    pixels = np.array(points) * [width / 100, height / 100]
    expected = coco_polygon(pixels, height, width)
    assert np.array_equal(result_to_mask(r), expected)
    assert np.array_equal(rasterize_polygon(pixels, height, width, piece_pixels), expected)


def test_coordinates_beyond_one_image_size_are_refused_at_the_bound() -> None:
    low, high = EXTENT_PERCENT
    assert (low, high) == (-100.0, 200.0)
    base = {"type": "polygonlabels", "id": "p7", "original_width": 40, "original_height": 30}
    for x in (low, high):
        result_to_mask({**base, "value": {"points": [[x, 10], [50, 20], [50, 60]]}})
    for x in (low - 0.01, high + 0.01):
        with pytest.raises(ValueError, match=r"polygonlabels result 'p7' has a point at .*200%\]"):
            result_to_mask({**base, "value": {"points": [[50, 20], [x, 10], [50, 60]]}})
    rect = {**base, "type": "rectanglelabels", "id": "r3"}
    value = {"x": 90, "y": 10, "width": 110, "height": 20, "rotation": 0}
    assert result_to_mask({**rect, "value": value})[3:9, 36:].all()  # right edge at 200%
    with pytest.raises(ValueError, match="rectanglelabels result 'r3' has a corner at"):
        result_to_mask({**rect, "value": {**value, "width": 110.5}})


FAR_OUT = textwrap.dedent(
    """
    import resource
    import numpy as np
    from backend.formats import labelstudio_to_coco, result_to_mask

    vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize"))
    limit = (vm + 256 * 1024) * 1024  # 256 MB more address space than the imports took
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def poly(points, width=100, height=80):
        return {"id": "p", "type": "polygonlabels", "original_width": width,
                "original_height": height, "value": {"points": points, "polygonlabels": ["a"]}}

    def rect(width, height=20, rotation=0):
        value = {"x": 10, "y": 10, "width": width, "height": height, "rotation": rotation,
                 "rectanglelabels": ["a"]}
        return {"id": "r", "type": "rectanglelabels", "original_width": 100,
                "original_height": 80, "value": value}

    far = [
        poly([[10, 10], [1e10, 10], [10, 50]]),  # segfaulted in pycocotools
        poly([[10, 10], [1e5, 10], [10, 50]], 4000, 3000),  # 360 MB
        poly([[-1e300, -1e300], [1e300, 10], [10, 1e300]]),
        rect(1e9),
        rect(1e308, 1e308, rotation=30),  # corners at inf and NaN
    ]
    for result in far:
        try:
            result_to_mask(result)
        except ValueError as exc:
            assert "outside the image" in str(exc), exc
        else:
            raise AssertionError(f"no error for {result}")
    problems = []
    task = {"id": 1, "data": {"image": "a.png"}, "annotations": [{"result": [far[0]]}]}
    assert labelstudio_to_coco([task], errors="skip", problems=problems)["images"] == []
    assert problems[0].result_id == "p" and "outside the image" in problems[0].message
    # within the bounds but a long outline: 1000 edges of 3000 px would take pycocotools
    # 360 MB in one call
    zigzag = [[-100.0 if i % 2 else 200.0, i / 10] for i in range(1000)]
    m = result_to_mask(poly(zigzag, 1000, 1000))
    assert m.shape == (1000, 1000) and 0 < m.sum() < m.size
    print("ok")
    """
)


def test_far_out_coordinates_fail_cleanly_in_bounded_memory() -> None:
    """Untrusted results (webhooks, exports): far-out points give a ValueError and long outlines
    a mask, never a crash or gigabytes. In a child process under a 256 MB address-space rise, so
    that a regression fails this test instead of killing pytest."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/status")
    run = subprocess.run(
        [sys.executable, "-c", FAR_OUT], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", (run.returncode, run.stderr[-2000:])


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
        "far polygon point": (
            {**poly, "value": {**poly["value"], "points": [[1, 1], [2, 2], [1e10, 3]]}},
            "outside the image",
        ),
        "far rectangle": ({**rect, "value": {**rect["value"], "y": -250}}, "outside the image"),
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


def test_a_result_claiming_a_gigantic_original_size_is_refused_before_any_allocation():
    from backend.formats.labelstudio import MAX_RESULT_PIXELS, original_size

    side = 1 << 15  # 32768 x 32768 = 2**30 pixels: a 1 GB mask
    assert side * side > MAX_RESULT_PIXELS
    brush = {
        "type": "brushlabels",
        "original_width": side,
        "original_height": side,
        "value": {"format": "rle", "rle": [0] * 8, "brushlabels": ["x"]},
    }
    with pytest.raises(ValueError, match="over 268435456 pixels"):
        result_to_mask(brush)
    assert original_size({"original_width": 1 << 14, "original_height": 1 << 14}) == (16384, 16384)
