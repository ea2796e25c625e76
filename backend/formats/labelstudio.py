"""Label Studio results and masks: masks -> brushlabels, polygonlabels, rectanglelabels results,
and back (`brush_result_mask`, `polygon_result_mask`, `rectangle_result_mask`).

Pure conversions, one per result type; which one applies to a result or a control is decided
by its tag (`backend.controls`), not here.

Each result is a dict as the editor stores it:
    {"id", "from_name", "to_name", "type", "original_width", "original_height",
     "image_rotation": 0, "value": {...}, "score"}
Coordinates are in percent of the original width and height; polygons and rectangles use pixel
edges (pixel (i, j) is the square [i, i + 1] x [j, j + 1]), as the editor draws them.
"""

from __future__ import annotations

import math
import secrets
import string
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from backend.formats.brush import decode_brush_rle, encode_brush_rle
from backend.formats.masks import as_mask
from backend.formats.polygons import (
    DEFAULT_MAX_POINTS,
    DEFAULT_TOLERANCE,
    mask_to_polygons,
    polygon_to_percent,
    to_edge_coordinates,
)
from backend.formats.regions import mask_bbox

_ID_ALPHABET = string.ascii_letters + string.digits


def new_result_id(length: int = 10) -> str:
    """A short random id like the editor's (10 letters/digits)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _check_mask(mask: np.ndarray, original_width: int, original_height: int) -> np.ndarray:
    """The mask as bool (H, W) (`backend.formats.masks.as_mask`), checked to be at the result's
    original size."""
    region = as_mask(mask)
    if mask.shape != (int(original_height), int(original_width)):
        raise ValueError(
            f"mask of (height, width) {mask.shape} does not match original_height x "
            f"original_width {original_height} x {original_width}; resize the mask to the "
            "original image first"
        )
    return region


def _result(
    kind: str,
    value: dict[str, Any],
    *,
    from_name: str,
    to_name: str,
    original_width: int,
    original_height: int,
    score: float | None,
    result_id: str | None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": result_id or new_result_id(),
        "from_name": from_name,
        "to_name": to_name,
        "type": kind,
        "original_width": int(original_width),
        "original_height": int(original_height),
        "image_rotation": 0,
        "value": value,
    }
    if score is not None:
        result["score"] = float(score)
    return result


def brush_result(
    mask: np.ndarray,
    label: str,
    *,
    from_name: str,
    to_name: str,
    original_width: int,
    original_height: int,
    score: float | None = None,
    result_id: str | None = None,
) -> dict[str, Any]:
    """A brushlabels result of a mask at the original size: bool (H, W), or uint8 whose non-zero
    pixels are the region (0/1 and 0/255 alike; the RLE always holds 0/255, as the editor
    paints)."""
    mask = _check_mask(mask, original_width, original_height)
    value = {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [label]}
    return _result(
        "brushlabels",
        value,
        from_name=from_name,
        to_name=to_name,
        original_width=original_width,
        original_height=original_height,
        score=score,
        result_id=result_id,
    )


def polygon_results(
    mask: np.ndarray,
    label: str,
    *,
    from_name: str,
    to_name: str,
    original_width: int,
    original_height: int,
    score: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_points: int | None = DEFAULT_MAX_POINTS,
) -> list[dict[str, Any]]:
    """polygonlabels results, one per filled outline of the mask (`mask_to_polygons`, largest
    first). The mask is bool (H, W) at the original size, or uint8 whose non-zero pixels are
    the region.

    Label Studio polygons have no holes: holes, and islands inside them (which the outline's
    polygon covers), are left out (use a brush result to keep them). Degenerate parts (one pixel
    thick) give no polygon; an empty mask gives an empty list.
    """
    mask = _check_mask(mask, original_width, original_height)
    results = []
    for outline in mask_to_polygons(mask, tolerance=tolerance, max_points=max_points):
        points = polygon_to_percent(to_edge_coordinates(outline), original_width, original_height)
        value = {"points": points, "closed": True, "polygonlabels": [label]}
        results.append(
            _result(
                "polygonlabels",
                value,
                from_name=from_name,
                to_name=to_name,
                original_width=original_width,
                original_height=original_height,
                score=score,
                result_id=None,
            )
        )
    return results


def rectangle_result(
    mask: np.ndarray,
    label: str,
    *,
    from_name: str,
    to_name: str,
    original_width: int,
    original_height: int,
    score: float | None = None,
    result_id: str | None = None,
) -> dict[str, Any] | None:
    """A rectanglelabels result of the mask's bounding box (pixel edges, percent); None for an
    empty mask. The mask is bool (H, W) at the original size, or uint8 whose non-zero pixels
    are the region."""
    mask = _check_mask(mask, original_width, original_height)
    x, y, w, h = mask_bbox(mask)
    if w == 0:
        return None
    value = {
        "x": 100.0 * x / original_width,
        "y": 100.0 * y / original_height,
        "width": 100.0 * w / original_width,
        "height": 100.0 * h / original_height,
        "rotation": 0,
        "rectanglelabels": [label],
    }
    return _result(
        "rectanglelabels",
        value,
        from_name=from_name,
        to_name=to_name,
        original_width=original_width,
        original_height=original_height,
        score=score,
        result_id=result_id,
    )


def _frame(
    result: Mapping[str, Any], height: int | None, width: int | None
) -> tuple[Mapping[str, Any], tuple[int, int] | None, int, int]:
    """(value, original (height, width) or None, height, width) of a result to draw: the size
    to draw at defaults to the original size."""
    value = result.get("value")
    if not isinstance(value, Mapping):
        raise ValueError("result has no 'value' dict")
    has_size = all(result.get(k) is not None for k in ("original_height", "original_width"))
    original = original_size(result) if has_size else None
    if height is None or width is None:
        if original is None:
            raise ValueError("result has no original_height/original_width: pass height and width")
        height, width = original
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"height and width must be > 0, got {height} x {width}")
    return value, original, int(height), int(width)


def _what(result: Mapping[str, Any], kind: str) -> str:
    rid = result.get("id")
    return f"{kind} result" + ("" if rid is None else f" {rid!r}")


def brush_result_mask(
    result: Mapping[str, Any], *, height: int | None = None, width: int | None = None
) -> np.ndarray:
    """bool (height, width) of a brushlabels result: the RLE decoded exactly (alpha > 0) at the
    result's original size, holes kept, then resized (nearest neighbour) when (height, width)
    differs from it. ValueError for a malformed RLE or no size to draw at."""
    value, original, height, width = _frame(result, height, width)
    if value.get("format", "rle") != "rle" or "rle" not in value:
        raise ValueError("brushlabels value has no 'rle'")
    rle_height, rle_width = original or (height, width)
    try:
        mask = decode_brush_rle(value["rle"], rle_height, rle_width) > 0
    except (TypeError, IndexError) as exc:
        raise ValueError(f"malformed brushlabels rle: {exc!r}") from exc
    if mask.shape != (height, width):
        resized = cv2.resize(mask.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        mask = resized > 0
    return mask


def polygon_result_mask(
    result: Mapping[str, Any], *, height: int | None = None, width: int | None = None
) -> np.ndarray:
    """bool (height, width) of a polygonlabels result: the points (percent) scaled to pixels
    (percent * size / 100, as the editor does) and rasterised by pycocotools, the way COCO
    rasterises polygons (pixel edges). Points must lie within EXTENT_PERCENT ([-100%, 200%]:
    one image size around the image); ValueError for fewer than three points, one further out,
    or no size to draw at."""
    value, _, height, width = _frame(result, height, width)
    try:
        pts = np.asarray(value.get("points"), dtype=np.float64)  # (N, 2) percent
    except (TypeError, ValueError):
        pts = np.zeros((0,))
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
        raise ValueError("polygonlabels 'points' must be 3 or more [x%, y%] pairs")
    _check_extent(pts, f"{_what(result, 'polygonlabels')} has a point")
    return rasterize_polygon(pts * (np.array([width, height]) / 100.0), height, width)


def rectangle_result_mask(
    result: Mapping[str, Any], *, height: int | None = None, width: int | None = None
) -> np.ndarray:
    """bool (height, width) of a rectanglelabels result: the box, rotated clockwise about its
    top-left corner by ``rotation`` degrees in original pixels as the editor does, then scaled
    to (height, width) and rasterised as a polygon. Corners must lie within EXTENT_PERCENT;
    ValueError for a box without x/y/width/height, a corner further out, or no size."""
    value, original, height, width = _frame(result, height, width)
    ow, oh = (original[1], original[0]) if original is not None else (width, height)
    pts = _rectangle_corners(value, ow, oh) * (100.0 / np.array([ow, oh]))  # (4, 2) percent
    _check_extent(pts, f"{_what(result, 'rectanglelabels')} has a corner")
    return rasterize_polygon(pts * (np.array([width, height]) / 100.0), height, width)


def _rectangle_corners(value: Mapping[str, Any], width: int, height: int) -> np.ndarray:
    """(4, 2) x, y pixel edges at the original (width, height) of a rectanglelabels value: the
    box rotated clockwise (the y axis points down) by ``rotation`` degrees about its top-left
    corner, in original pixels as the editor and label_studio_sdk's converter
    (`convert_annotation_to_yolo_obb`) do; scaling comes after, so a rotated box keeps its
    shape on an image of another aspect."""
    try:
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        angle = math.radians(float(value.get("rotation", 0) or 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            "rectanglelabels value needs numbers x, y, width, height (percent) and optionally "
            f"rotation (degrees), got {dict(value)}"
        ) from exc
    if not all(math.isfinite(v) for v in (x, y, w, h, angle)) or w < 0 or h < 0:
        raise ValueError(f"bad rectangle {dict(value)}")
    x0, y0, w, h = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]])  # (4, 2) x, y relative to the corner
    c, s = math.cos(angle), math.sin(angle)
    with np.errstate(invalid="ignore"):  # a huge box: inf - inf; _check_extent refuses it
        return corners @ np.array([[c, s], [-s, c]]) + [x0, y0]  # x' = c x - s y, y' = s x + c y


#: The largest original_width x original_height a result may claim: masks are built at that
#: size, so an untrusted result must not make one allocate gigabytes (268 M pixels: 268 MB as
#: bool, far above any image Label Studio shows).
MAX_RESULT_PIXELS = 2**28


def original_size(result: Mapping[str, Any]) -> tuple[int, int]:
    """(original_height, original_width) of a result, checked to be positive integers whose
    product is at most `MAX_RESULT_PIXELS`.

    Raises:
        ValueError: naming the missing key, or the bad size.
    """
    for key in ("original_width", "original_height"):
        if result.get(key) is None:
            raise ValueError(f"result has no {key}")
    height, width = result["original_height"], result["original_width"]
    if not all(
        isinstance(v, (int, float)) and v > 0 and float(v).is_integer() for v in (width, height)
    ):
        raise ValueError(f"bad original size {width!r} x {height!r}")
    if int(width) * int(height) > MAX_RESULT_PIXELS:
        raise ValueError(
            f"original size {int(width)} x {int(height)} is over {MAX_RESULT_PIXELS} pixels: "
            "not an image Label Studio shows"
        )
    return int(height), int(width)


# Polygon points and rectangle corners may lie at most one image size outside the image (percent
# of the image's width / height). Further out is malformed, and dangerous: pycocotools' polygon
# rasteriser casts points to C int (a point at 1e10 % crashes the process) and allocates every
# point of each edge at 5x resolution (up to 120 bytes per pixel of outline: a point at 1e5 % of
# a 4000 x 3000 image took 360 MB).
EXTENT_PERCENT = (-100.0, 200.0)
# The outline length (pixels: the sum over edges of max(|dx|, |dy|)) given to pycocotools in one
# call, at most about 30 MB of its memory; longer outlines go in pieces (`rasterize_polygon`).
_OUTLINE_PIXELS_PER_CALL = 1 << 18


def _check_extent(points: np.ndarray, what: str) -> None:
    """Refuse (N, 2) x, y percent coordinates beyond EXTENT_PERCENT (or NaN), naming the region
    (`what`, e.g. "polygonlabels result 'abc' has a point")."""
    low, high = EXTENT_PERCENT
    outside = ~((points >= low) & (points <= high)).all(axis=1)
    if outside.any():
        x, y = points[np.flatnonzero(outside)[0]]
        raise ValueError(
            f"{what} at ({x:.6g}%, {y:.6g}%), more than one image size outside the image: "
            f"coordinates must lie within [{low:g}%, {high:g}%] of the image's width and height"
        )


def rasterize_polygon(
    points: np.ndarray, height: int, width: int, piece_pixels: int = _OUTLINE_PIXELS_PER_CALL
) -> np.ndarray:
    """bool (H, W) of a polygon of (N, 2) x, y pixel-edge coordinates, rasterised by pycocotools.

    pycocotools' memory grows with the outline's length, so a long outline goes in pieces of at
    most about `piece_pixels`: the fan [p0, p_i, ..., p_j] of consecutive edges closed through
    the first point. pycocotools' rasterisation is the parity of crossings of each column by
    the edges, and an edge's crossings depend only on its two end points, so the closing edges
    p_j -> p0 of one piece and p0 -> p_j of the next cancel and the pieces' XOR is exactly the
    whole polygon's mask.
    """
    mask = np.zeros((height, width), bool)
    for piece in _fan_pieces(points, piece_pixels):
        rle = mask_utils.frPyObjects([piece.ravel().tolist()], height, width)
        mask ^= mask_utils.decode(rle[0]).astype(bool)
    return mask


def _fan_pieces(points: np.ndarray, piece_pixels: int) -> list[np.ndarray]:
    """Split a closed polygon (N >= 3, 2) into fans [p0, p_i .. p_j] of about `piece_pixels`
    of outline each (a single polygon when it is short enough); each has 3 or more points."""
    n = len(points)
    length = np.abs(np.diff(points, axis=0)).max(axis=1)  # (N - 1,) edge i: p_i -> p_i+1
    part = np.cumsum(length) // max(piece_pixels, 1)  # (N - 1,) which piece edge i falls in
    # a piece ends at vertex i + 1 where edge i + 1 falls in the next part; the first piece
    # needs 3 points (i + 1 >= 2) and the last one an edge of its own (i + 1 < n - 1)
    ends = [int(i) + 1 for i in np.flatnonzero(np.diff(part)) if 2 <= i + 1 < n - 1]
    pieces, start = [], 0
    for end in [*ends, n - 1]:
        chosen = points[start : end + 1]
        pieces.append(chosen if start == 0 else np.concatenate((points[:1], chosen)))
        start = end
    return pieces
