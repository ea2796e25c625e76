"""One adapter per Label Studio control type: does it match a control, and its result items.

An adapter turns the regions found for one label (`backend.formats.Region`: boolean masks at
the image's size, with a score each) into Label Studio result items of its control's type.
BrushLabels, PolygonLabels and RectangleLabels (their smart="true" variants included) get
results; other controls (KeyPointLabels, ...) match no adapter and are left alone.
"""

from __future__ import annotations

from typing import Any, Protocol

from backend.formats.brush import decode_brush_rle, encode_brush_rle
from backend.formats.labelstudio import brush_result, polygon_results, rectangle_result
from backend.formats.regions import Region
from backend.label_config import ControlSpec

__all__ = [
    "BrushAdapter",
    "ControlAdapter",
    "PolygonAdapter",
    "RectangleAdapter",
    "adapter_for",
    "decode_brush_rle",
    "encode_brush_rle",
    "make_adapters",
]


class ControlAdapter(Protocol):
    tag: str

    def matches(self, control: ControlSpec) -> bool: ...

    def results(self, control: ControlSpec, regions: list[Region]) -> list[dict[str, Any]]: ...


class _Adapter:
    tag = ""

    def matches(self, control: ControlSpec) -> bool:
        return control.tag.lower() == self.tag.lower()

    @staticmethod
    def _common(control: ControlSpec, region: Region) -> dict[str, Any]:
        height, width = region.mask.shape
        return {
            "from_name": control.name,
            "to_name": control.to_name,
            "original_width": int(width),
            "original_height": int(height),
            "score": float(region.score),
        }


class BrushAdapter(_Adapter):
    """BrushLabels: the region's mask as Label Studio's RLE of a 0/255 mask."""

    tag = "BrushLabels"

    def results(self, control: ControlSpec, regions: list[Region]) -> list[dict[str, Any]]:
        return [brush_result(r.mask, r.label, **self._common(control, r)) for r in regions]


class PolygonAdapter(_Adapter):
    """PolygonLabels: one polygon per outer contour of the region, in percent of the size."""

    tag = "PolygonLabels"

    def __init__(self, tolerance: float = 0.5) -> None:
        self.tolerance = tolerance

    def results(self, control: ControlSpec, regions: list[Region]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for r in regions:
            out += polygon_results(
                r.mask, r.label, **self._common(control, r), tolerance=self.tolerance
            )
        return out


class RectangleAdapter(_Adapter):
    """RectangleLabels: the region's bounding box, in percent of the image size."""

    tag = "RectangleLabels"

    def results(self, control: ControlSpec, regions: list[Region]) -> list[dict[str, Any]]:
        rects = (rectangle_result(r.mask, r.label, **self._common(control, r)) for r in regions)
        return [rect for rect in rects if rect is not None]


def make_adapters(polygon_tolerance: float = 0.5) -> tuple[ControlAdapter, ...]:
    return (BrushAdapter(), PolygonAdapter(polygon_tolerance), RectangleAdapter())


def adapter_for(
    control: ControlSpec, adapters: tuple[ControlAdapter, ...]
) -> ControlAdapter | None:
    """The adapter that answers `control`, or None (the control gets no results)."""
    return next((a for a in adapters if a.matches(control)), None)
