"""Label Studio result builders: masks -> brushlabels, polygonlabels, rectanglelabels results.

Each result is a dict as the editor stores it:
    {"id", "from_name", "to_name", "type", "original_width", "original_height",
     "image_rotation": 0, "value": {...}, "score"}
Coordinates are in percent of the original width and height; polygons and rectangles use pixel
edges (pixel (i, j) is the square [i, i + 1] x [j, j + 1]), as the editor draws them.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

import numpy as np

from backend.formats.brush import encode_brush_rle
from backend.formats.polygons import (
    DEFAULT_MAX_POINTS,
    DEFAULT_TOLERANCE,
    mask_to_contours,
    polygon_to_percent,
    to_edge_coordinates,
)
from backend.formats.regions import Region, mask_bbox

RESULT_TYPES = ("brushlabels", "polygonlabels", "rectanglelabels")
_ID_ALPHABET = string.ascii_letters + string.digits


def new_result_id(length: int = 10) -> str:
    """A short random id like the editor's (10 letters/digits)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _check_mask(mask: np.ndarray, original_width: int, original_height: int) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"mask must be a numpy array, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype != np.bool_ and mask.dtype != np.uint8:
        raise ValueError(f"mask must be bool or uint8 0/255, got dtype {mask.dtype}")
    if mask.shape != (int(original_height), int(original_width)):
        raise ValueError(
            f"mask of (height, width) {mask.shape} does not match original_height x "
            f"original_width {original_height} x {original_width}; resize the mask to the "
            "original image first"
        )
    return mask


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
    """A brushlabels result of a bool or 0/255 uint8 (H, W) mask at the original size."""
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
    """polygonlabels results, one per outer contour of the mask (largest first).

    Label Studio polygons have no holes: holes are left out (use a brush result to keep them).
    Degenerate parts (one pixel thick) give no polygon; an empty mask gives an empty list.
    """
    mask = _check_mask(mask, original_width, original_height)
    results = []
    for contour in mask_to_contours(mask, tolerance=tolerance, max_points=max_points):
        points = polygon_to_percent(
            to_edge_coordinates(contour.outer), original_width, original_height
        )
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
    empty mask."""
    mask = _check_mask(mask, original_width, original_height)
    x, y, w, h = mask_bbox(mask != 0)
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


def region_to_results(
    region: Region, kind: str, *, from_name: str, to_name: str, **kwargs
) -> list[dict[str, Any]]:
    """Results of one `Region` for a control of type `kind` (one of RESULT_TYPES), scored with
    the region's score; the original size is the mask's. kwargs go to the polygon builder."""
    height, width = region.mask.shape
    common = dict(
        from_name=from_name,
        to_name=to_name,
        original_width=width,
        original_height=height,
        score=region.score,
    )
    if kind == "brushlabels":
        return [brush_result(region.mask, region.label, **common)]
    if kind == "polygonlabels":
        return polygon_results(region.mask, region.label, **common, **kwargs)
    if kind == "rectanglelabels":
        rect = rectangle_result(region.mask, region.label, **common)
        return [] if rect is None else [rect]
    raise ValueError(f"result type must be one of {RESULT_TYPES}, got {kind!r}")
