"""One adapter per Label Studio control type: does it match a control, and its result items.

An adapter turns the regions found for one label (boolean masks at the image's size, with a
score each) into Label Studio result items of its control's type. BrushLabels, PolygonLabels
and RectangleLabels (their smart="true" variants included) get results; other controls
(KeyPointLabels, ...) match no adapter and are left alone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from backend.label_config import ControlSpec

try:  # helper C's backend.formats
    from backend.formats import decode_brush_rle, encode_brush_rle, mask_to_polygons
except ImportError:  # interim until backend.formats lands: label-studio-sdk's brush RLE, OpenCV
    import cv2
    from label_studio_sdk.converter.brush import decode_rle as _sdk_decode_rle
    from label_studio_sdk.converter.brush import mask2rle as encode_brush_rle

    def decode_brush_rle(rle, height, width):  # type: ignore[no-redef]
        rgba = np.asarray(_sdk_decode_rle(rle), np.uint8).reshape(height, width, 4)
        return rgba[:, :, 3]

    def mask_to_polygons(mask, tolerance=1.0):  # type: ignore[no-redef]
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        return [cv2.approxPolyDP(c, tolerance, True).reshape(-1, 2) for c in contours]


@dataclass
class Region:
    """One predicted region of a label: its mask (H, W) bool and its score (mean probability)."""

    label: str
    mask: np.ndarray
    score: float


class ControlAdapter(Protocol):
    tag: str

    def matches(self, control: ControlSpec) -> bool: ...

    def results(self, control: ControlSpec, regions: list[Region]) -> list[dict[str, Any]]: ...


def _base(control: ControlSpec, kind: str, region: Region) -> dict[str, Any]:
    height, width = region.mask.shape
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": control.name,
        "to_name": control.to_name,
        "type": kind,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": float(region.score),
    }


class _Adapter:
    tag = ""

    def matches(self, control: ControlSpec) -> bool:
        return control.tag.lower() == self.tag.lower()


class BrushAdapter(_Adapter):
    """BrushLabels: the region's mask as Label Studio's RLE of a 0/255 mask."""

    tag = "BrushLabels"

    def results(self, control: ControlSpec, regions: list[Region]) -> list[dict[str, Any]]:
        out = []
        for region in regions:
            item = _base(control, "brushlabels", region)
            rle = encode_brush_rle(region.mask.astype(np.uint8) * 255)
            item["value"] = {"format": "rle", "rle": [int(v) for v in rle]}
            item["value"]["brushlabels"] = [region.label]
            out.append(item)
        return out


class PolygonAdapter(_Adapter):
    """PolygonLabels: the region's outer contours, in percent of the image size."""

    tag = "PolygonLabels"

    def __init__(self, tolerance: float = 1.0) -> None:
        self.tolerance = tolerance

    def results(self, control: ControlSpec, regions: list[Region]) -> list[dict[str, Any]]:
        out = []
        for region in regions:
            height, width = region.mask.shape
            for poly in mask_to_polygons(region.mask, tolerance=self.tolerance):
                if len(poly) < 3:
                    continue
                item = _base(control, "polygonlabels", region)
                points = [
                    [float(x) * 100.0 / width, float(y) * 100.0 / height]
                    for x, y in np.asarray(poly)
                ]
                item["value"] = {"points": points, "closed": True, "polygonlabels": [region.label]}
                out.append(item)
        return out


class RectangleAdapter(_Adapter):
    """RectangleLabels: the region's bounding box, in percent of the image size."""

    tag = "RectangleLabels"

    def results(self, control: ControlSpec, regions: list[Region]) -> list[dict[str, Any]]:
        out = []
        for region in regions:
            ys, xs = np.nonzero(region.mask)
            if xs.size == 0:
                continue
            height, width = region.mask.shape
            x0, x1 = int(xs.min()), int(xs.max()) + 1
            y0, y1 = int(ys.min()), int(ys.max()) + 1
            item = _base(control, "rectanglelabels", region)
            item["value"] = {
                "x": x0 * 100.0 / width,
                "y": y0 * 100.0 / height,
                "width": (x1 - x0) * 100.0 / width,
                "height": (y1 - y0) * 100.0 / height,
                "rotation": 0,
                "rectanglelabels": [region.label],
            }
            out.append(item)
        return out


def make_adapters(polygon_tolerance: float = 1.0) -> tuple[ControlAdapter, ...]:
    return (BrushAdapter(), PolygonAdapter(polygon_tolerance), RectangleAdapter())


def adapter_for(
    control: ControlSpec, adapters: tuple[ControlAdapter, ...]
) -> ControlAdapter | None:
    """The adapter that answers `control`, or None (the control gets no results)."""
    return next((a for a in adapters if a.matches(control)), None)
