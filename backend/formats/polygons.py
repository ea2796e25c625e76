"""Polygons from masks with OpenCV: outer contours and their holes, simplified and capped.

Two coordinate conventions, both x, y floats:
- pixel indices (what `mask_to_polygons` / `mask_to_contours` return, OpenCV's convention): a
  vertex is the index of a boundary pixel, so `cv2.fillPoly` of the rounded points, which fills
  the boundary pixels too, gives the mask back.
- pixel edges (what Label Studio and COCO polygons mean): pixel (i, j) is the unit square
  [i, i + 1] x [j, j + 1]; a 3 x 2 block at the origin is the polygon (0,0) (3,0) (3,2) (0,2).
  pycocotools rasterises polygons this way and the Label Studio editor draws them this way
  (percent * size / 100 on its canvas). `to_edge_coordinates` moves index contours half a pixel
  outward from the object (holes shrink), otherwise a small blob would lose half a pixel all
  around its border (a 200-pixel blob about 12% of its area).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from backend.formats.masks import as_mask

logger = logging.getLogger(__name__)

DEFAULT_MAX_POINTS = 1000  # Label Studio's editor slows down with many thousands of vertices
# 0.5 px keeps polygons of 200-pixel blobs at IoU >= 0.95 with their mask (1 px drops concave
# ones to about 0.9); large masks are bounded by max_points instead.
DEFAULT_TOLERANCE = 0.5


@dataclass(frozen=True, eq=False)
class Contour:
    """An outer contour and the holes inside it, each (N, 2) float64 x, y pixel indices."""

    outer: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)


def simplify(points: np.ndarray, tolerance: float, max_points: int | None) -> np.ndarray:
    """Douglas-Peucker simplification of a closed contour (N, 1, 2) int32 -> (M, 2) float64.

    `tolerance` is the largest distance in pixels a dropped point may lie from the result; if
    more than `max_points` vertices remain, the tolerance grows by half until they fit.
    """
    _check_simplification(tolerance, max_points)
    out = cv2.approxPolyDP(points, tolerance, True) if tolerance > 0 else points
    eps = max(tolerance, 0.5)
    while max_points is not None and len(out) > max_points:
        eps *= 1.5
        smaller = cv2.approxPolyDP(points, eps, True)
        if len(smaller) < 3:  # collapsed to a segment: take max_points evenly spaced vertices
            keep = np.linspace(0, len(out), max_points, endpoint=False).astype(int)
            out = out[keep]
            break
        out = smaller
    return out.reshape(-1, 2).astype(np.float64)


def _check_simplification(tolerance: float, max_points: int | None) -> None:
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if max_points is not None and max_points < 3:
        raise ValueError(f"max_points must be at least 3 (a triangle), got {max_points}")


def _valid(poly: np.ndarray) -> bool:
    return len(poly) >= 3 and cv2.contourArea(poly.astype(np.float32)) > 0


def mask_to_contours(
    mask: np.ndarray,
    tolerance: float = DEFAULT_TOLERANCE,
    max_points: int | None = DEFAULT_MAX_POINTS,
    holes: bool = True,
) -> list[Contour]:
    """Outer contours of a mask's 8-connected components with their holes (cv2.RETR_CCOMP).

    Args:
        mask: bool or uint8 (H, W); non-zero is the object.
        tolerance: simplification tolerance in pixels (0: only collinear points are dropped).
        max_points: cap on the vertices of each contour (None: no cap).
        holes: False for filled outlines only (cv2.RETR_EXTERNAL): no holes, and no islands
            inside holes (a filled outline covers them already). Much faster on speckled masks,
            whose many pinholes are otherwise traced and simplified one by one.

    Returns:
        Contours in pixel-index coordinates, largest outer area first. Degenerate contours
        (fewer than 3 points or zero area, e.g. lines one pixel thick) are dropped, so such
        parts of a mask are only representable as RLE.
    """
    m = np.ascontiguousarray(as_mask(mask), dtype=np.uint8)  # what cv2.findContours takes
    _check_simplification(tolerance, max_points)
    mode = cv2.RETR_CCOMP if holes else cv2.RETR_EXTERNAL
    contours, hierarchy = cv2.findContours(m, mode, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]  # per contour: next, previous, first child, parent
    result = []
    for i, c in enumerate(contours):
        if hierarchy[i][3] != -1:  # a hole: handled with its parent
            continue
        outer = simplify(c, tolerance, max_points)
        if not _valid(outer):
            continue
        inner = []
        child = hierarchy[i][2]
        while child != -1:
            hole = simplify(contours[child], tolerance, max_points)
            if _valid(hole):
                inner.append(hole)
            child = hierarchy[child][0]
        result.append(Contour(outer=outer, holes=inner))
    result.sort(key=lambda c: -cv2.contourArea(c.outer.astype(np.float32)))
    return result


def mask_to_polygons(
    mask: np.ndarray,
    tolerance: float = DEFAULT_TOLERANCE,
    max_points: int | None = DEFAULT_MAX_POINTS,
) -> list[np.ndarray]:
    """Filled outlines of a mask, as Label Studio draws polygons: each (N, 2) float64 x, y pixel
    indices, largest first; holes, and islands inside them, left out (see `mask_to_contours`
    with ``holes=False``)."""
    return [c.outer for c in mask_to_contours(mask, tolerance, max_points, holes=False)]


def to_edge_coordinates(points: np.ndarray, hole: bool = False) -> np.ndarray:
    """Move a pixel-index contour (N, 2) to pixel-edge coordinates (N, 2).

    Each vertex moves to the pixel centre (+0.5) and then half a pixel away from the object
    along the miter of its two edges: an outer contour grows, a hole (`hole=True`) shrinks.
    An axis-aligned block becomes exactly its pixel squares' outline; diagonal edges land within
    a quarter pixel of the staircase. The miter is capped at one pixel for spiky vertices.
    """
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        return pts + 0.5
    x, y = pts[:, 0], pts[:, 1]
    signed_area = 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
    edge = np.roll(pts, -1, axis=0) - pts  # edge i goes from vertex i to vertex i + 1
    length = np.hypot(edge[:, 0], edge[:, 1])
    length[length == 0] = 1.0
    # the normal pointing away from the polygon's interior: (dy, -dx) for positive area
    normal = np.stack((edge[:, 1], -edge[:, 0]), axis=1) / length[:, None]
    if signed_area < 0:
        normal = -normal
    if hole:
        normal = -normal  # away from the object = into the hole
    prev = np.roll(normal, 1, axis=0)  # normal of the edge arriving at vertex i
    denom = 1.0 + np.sum(prev * normal, axis=1)
    miter = (prev + normal) / np.maximum(denom, 1e-9)[:, None]
    norm = np.hypot(miter[:, 0], miter[:, 1])
    scale = np.where(norm > 2.0, 2.0 / np.maximum(norm, 1e-12), 1.0)  # cap at 1 px (0.5 * 2)
    return pts + 0.5 + 0.5 * miter * scale[:, None]


def polygon_to_percent(points: np.ndarray, width: int, height: int) -> list[list[float]]:
    """Pixel-edge polygon (N, 2) -> Label Studio's [[x%, y%], ...], clipped to [0, 100]."""
    pct = np.asarray(points, dtype=np.float64) * (100.0 / np.array([width, height]))
    return np.clip(pct, 0.0, 100.0).tolist()


def polygon_to_coco(points: np.ndarray, width: int, height: int) -> list[float]:
    """Pixel-edge polygon (N, 2) -> COCO's flat [x0, y0, x1, y1, ...] in pixels, clipped to the
    image."""
    pts = np.clip(np.asarray(points, dtype=np.float64), 0.0, [width, height])
    return pts.ravel().tolist()
