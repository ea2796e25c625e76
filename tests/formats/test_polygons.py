"""Polygons from masks: holes, simplification and its cap, degenerate contours, and the
pixel conventions checked by rasterising back (cv2.fillPoly for pixel indices, pycocotools for
pixel edges as COCO and Label Studio mean them)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from backend.formats.polygons import (
    mask_to_contours,
    mask_to_polygons,
    polygon_to_coco,
    polygon_to_percent,
    to_edge_coordinates,
)
from backend.formats.regions import fill_mask_holes

H, W = 64, 72


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def fill_indices(polys: list[np.ndarray], shape=(H, W)) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [np.round(p).astype(np.int32) for p in polys], 1)
    return out > 0


def rasterise_edges(polys: list[list[float]], shape=(H, W)) -> np.ndarray:
    """pycocotools' polygon rasteriser: pixel (i, j) is the square [i, i+1] x [j, j+1]."""
    rles = mask_utils.frPyObjects(polys, *shape)
    return mask_utils.decode(mask_utils.merge(rles)) > 0


def blob(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    cx, cy = rng.uniform(25, 45), rng.uniform(25, 38)
    if kind == "disk":
        r = rng.uniform(8.5, 14)
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if kind == "ellipse":
        a, b, t = rng.uniform(10, 18), rng.uniform(7, 10), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == "crescent":
        r = rng.uniform(12, 16)
        bite = rng.uniform(0.5, 0.7) * r
        d = r - bite + rng.uniform(1.5, 3)
        return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) & ~(
            (xx - cx - d) ** 2 + (yy - cy) ** 2 <= bite * bite
        )
    # a star: concave, sharp vertices
    n = int(rng.integers(5, 8))
    ang = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + rng.uniform(0, np.pi)
    r = np.where(np.arange(2 * n) % 2 == 0, rng.uniform(14, 18), rng.uniform(7, 9))
    pts = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1).round().astype(np.int32)
    out = np.zeros((H, W), np.uint8)
    cv2.fillPoly(out, [pts], 1)
    return out > 0


def moved(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The mask moved by (dx, dy) pixels, cut at the border (no wrap-around)."""
    ys, xs = np.nonzero(mask)
    ys, xs = ys + dy, xs + dx
    keep = (ys >= 0) & (ys < mask.shape[0]) & (xs >= 0) & (xs < mask.shape[1])
    out = np.zeros_like(mask)
    out[ys[keep], xs[keep]] = True
    return out


DISPLACEMENTS = st.tuples(st.integers(-30, 30), st.integers(-25, 25))  # blobs lie around the centre


@st.composite
def scenes(draw: st.DrawFn) -> np.ndarray:
    """1 to 3 blobs of any kind, moved anywhere (so cut by the border, or overlapping), some
    with a hole of radius 2.5 to 5 px."""
    mask = np.zeros((H, W), bool)
    yy, xx = np.mgrid[:H, :W]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["disk", "ellipse", "crescent", "star"]))
        part = moved(blob(kind, draw(st.integers(0, 10_000))), *draw(DISPLACEMENTS))
        ys, xs = np.nonzero(part)
        if len(ys) and draw(st.booleans()):
            r = draw(st.floats(2.5, 5))
            part &= (xx - xs.mean()) ** 2 + (yy - ys.mean()) ** 2 > r * r
        mask |= part
    return mask


@settings(deadline=None, max_examples=80)
@given(scenes())
def test_polygons_rasterise_back_to_the_mask(mask: np.ndarray) -> None:
    contours = mask_to_contours(mask)
    # Douglas-Peucker at the default 0.5 px tolerance moves an outline by at most half a pixel
    # and to_edge_coordinates a diagonal by a quarter pixel, so the pixels that change are
    # bounded by the outlines' length (an IoU floor would fail on thin shapes)
    outline = sum(
        cv2.arcLength(p.astype(np.float32).reshape(-1, 1, 2), True)
        for c in contours
        for p in (c.outer, *c.holes)
    )
    filled = fill_mask_holes(mask)  # what polygons without holes (Label Studio's) cover

    def assert_close(got: np.ndarray, want: np.ndarray) -> None:
        changed = int(np.logical_xor(got, want).sum())
        assert changed <= 0.5 * outline, (changed, outline, iou(got, want))

    # pixel indices through cv2.fillPoly
    assert_close(fill_indices(mask_to_polygons(mask)), filled)
    # pixel edges through pycocotools (COCO's and Label Studio's convention), holes cut out
    got = np.zeros((H, W), bool)
    for c in contours:
        holes = [polygon_to_coco(to_edge_coordinates(h, hole=True), W, H) for h in c.holes]
        outer = rasterise_edges([polygon_to_coco(to_edge_coordinates(c.outer), W, H)])
        got |= outer & ~rasterise_edges(holes) if holes else outer
    assert_close(got, mask)
    # Label Studio: percent, converted back to pixels as the editor does (pct * size / 100)
    back = [
        (np.array(polygon_to_percent(to_edge_coordinates(p), W, H)) * [W / 100, H / 100])
        .ravel()
        .tolist()
        for p in mask_to_polygons(mask)
    ]
    assert_close(rasterise_edges(back) if back else np.zeros((H, W), bool), filled)


def test_tolerance_zero_is_exact_for_blocks_and_holes() -> None:
    mask = np.zeros((H, W), bool)
    mask[10:40, 10:50] = True
    mask[20:30, 20:30] = False  # a hole
    mask[50:53, 60:70] = True  # a second component
    (big, small) = mask_to_contours(mask, tolerance=0)
    assert len(big.holes) == 1 and not small.holes
    # pixel indices: fillPoly of the outer minus fillPoly of the hole's interior
    outer = to_edge_coordinates(big.outer)
    hole = to_edge_coordinates(big.holes[0], hole=True)
    assert sorted(map(tuple, outer)) == sorted([(10, 10), (50, 10), (50, 40), (10, 40)])
    # OpenCV traces a hole along the 8-connected object pixels, cutting its corners: the hole
    # polygon is the 10 x 10 square less a quarter pixel at each corner (COCO takes holes as RLE)
    assert cv2.contourArea(hole.astype(np.float32)) == pytest.approx(100 - 4 * 0.25, abs=1e-4)
    assert hole.min(axis=0).tolist() == [20, 20] and hole.max(axis=0).tolist() == [30, 30]
    assert np.array_equal(
        rasterise_edges([polygon_to_coco(to_edge_coordinates(small.outer), W, H)]),
        mask & (np.arange(H)[:, None] >= 50),
    )


def test_max_points_caps_vertices() -> None:
    yy, xx = np.mgrid[:400, :400]
    disk = (xx - 200) ** 2 + (yy - 200) ** 2 <= 180**2
    full = mask_to_polygons(disk, tolerance=0, max_points=None)[0]
    assert len(full) > 40
    for cap in (40, 12, 3):
        (capped,) = mask_to_polygons(disk, tolerance=0.5, max_points=cap)
        assert 3 <= len(capped) <= cap
    (capped,) = mask_to_polygons(disk, max_points=40)
    assert iou(fill_indices([capped], disk.shape), disk) > 0.98


def test_filled_outlines_leave_out_holes_and_the_islands_inside_them() -> None:
    """A ring with an island in its hole, and a speckled block: Label Studio polygons are filled,
    so one outline each covers everything; the contours with holes still report both."""
    mask = np.zeros((H, W), bool)
    mask[5:45, 5:45] = True
    mask[15:35, 15:35] = False  # the hole
    mask[22:28, 22:28] = True  # an island inside it
    mask[50:60, 50:70] = True
    mask[52:58:2, 52:68:2] = False  # pinholes
    polygons = mask_to_polygons(mask, tolerance=0)
    assert len(polygons) == 2
    filled = rasterise_edges([polygon_to_coco(to_edge_coordinates(p), W, H) for p in polygons])
    expected = np.zeros((H, W), bool)
    expected[5:45, 5:45] = expected[50:60, 50:70] = True
    assert np.array_equal(filled, expected)
    with_holes = mask_to_contours(mask, tolerance=0)
    assert len(with_holes) == 3  # the ring, the block, the island
    assert sorted(len(c.holes) for c in with_holes) == [0, 1, 24]


def test_degenerate_contours_are_dropped() -> None:
    mask = np.zeros((20, 20), bool)
    mask[2, 2] = True  # one pixel
    mask[5, 3:15] = True  # a line one pixel thick: zero area
    mask[10:13, 10:13] = True  # a real 3x3 block
    (block,) = mask_to_contours(mask, tolerance=0)
    assert cv2.contourArea(to_edge_coordinates(block.outer).astype(np.float32)) == 9
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_percent_and_coco_are_clipped_to_the_image() -> None:
    mask = np.ones((10, 20), bool)
    (poly,) = mask_to_polygons(mask)
    edge = to_edge_coordinates(poly)
    assert sorted(map(tuple, polygon_to_percent(edge, 20, 10))) == sorted(
        [(0.0, 0.0), (100.0, 0.0), (100.0, 100.0), (0.0, 100.0)]
    )
    assert max(polygon_to_coco(edge, 20, 10)) == 20.0
    # a diamond touching all four borders: its tips move half a pixel along the miter, 0.21 px
    # out of the image, and are clipped back onto the border
    yy, xx = np.mgrid[:11, :11]
    diamond = np.abs(xx - 5) + np.abs(yy - 5) <= 5
    (poly,) = mask_to_polygons(diamond, tolerance=0)
    edge = to_edge_coordinates(poly)
    assert edge.min() < -0.2 and edge.max() > 11.2  # before clipping
    pct = np.array(polygon_to_percent(edge, 11, 11))
    assert pct.min() == 0.0 and pct.max() == 100.0
    coco = np.array(polygon_to_coco(edge, 11, 11)).reshape(-1, 2)
    assert coco.min() == 0.0 and coco.max() == 11.0
    assert np.array_equal(rasterise_edges([coco.ravel().tolist()], (11, 11)), diamond)
    # x to the width and y to the height: the diamond on the right of a wider image
    wide = np.pad(diamond, ((0, 0), (4, 0)))  # (11, 15)
    edge = to_edge_coordinates(mask_to_polygons(wide, tolerance=0)[0])
    coco = np.array(polygon_to_coco(edge, 15, 11)).reshape(-1, 2)
    assert coco[:, 1].min() == 0.0
    assert coco.max(axis=0).tolist() == [15.0, 11.0]
    assert np.array_equal(rasterise_edges([coco.ravel().tolist()], (11, 15)), wide)
    assert np.array(polygon_to_percent(edge, 15, 11)).max(axis=0).tolist() == [100.0, 100.0]


def pixel_centres(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.stack([xs, ys], axis=1) + 0.5


@pytest.mark.parametrize(("shape", "tolerance"), [("wedge", 0.5), ("wedge", 0), ("spike", 1.0)])
def test_miter_is_capped_at_one_pixel_on_spiky_vertices(shape: str, tolerance: float) -> None:
    """A vertex moves at most one pixel from the centre of its boundary pixel: without the cap
    the sharp tip of a narrow wedge moves 10 px out along its miter (a spike simplified at 1 px,
    4 px), far off the object."""
    mask = np.zeros((40, 70), np.uint8)
    if shape == "wedge":  # a 5-degree wedge
        cv2.fillPoly(mask, [np.array([[3, 20], [66, 17], [66, 23]], np.int32)], 1)
    else:  # a block with a one-pixel spike
        mask[10:30, 10:30] = 1
        mask[19, 30:38] = 1
    centres = pixel_centres(mask > 0)
    for poly in mask_to_polygons(mask > 0, tolerance=tolerance):
        for vertex in to_edge_coordinates(poly):
            assert np.hypot(*(centres - vertex).T).min() <= 1.0 + 1e-9, vertex


@pytest.mark.parametrize(
    ("mask", "kwargs", "message"),
    [
        (np.zeros((3, 3, 3), bool), {}, "2-D"),
        (np.zeros((3, 3), np.float32), {}, "dtype float32"),
        (np.zeros((3, 3), bool), {"tolerance": -1}, "tolerance"),
        (np.ones((3, 3), bool), {"max_points": 2}, "max_points"),
    ],
)
def test_bad_input_raises(mask, kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mask_to_contours(mask, **kwargs)
