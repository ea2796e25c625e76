"""Which Label Studio controls get pre-annotations, and how a control's regions become results.

A BrushLabels, PolygonLabels or RectangleLabels control (their smart="true" variants included)
is answered by the `ControlAdapter` of its result type, which turns the regions found for one
label (`backend.formats.Region`: boolean masks at the image's size, with a score each) into result
items with `backend.formats.region_to_results`. Other controls (KeyPointLabels, ...) match no
adapter and are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.formats.labelstudio import RESULT_TYPES, region_to_results
from backend.formats.regions import Region
from backend.label_config import ControlSpec

__all__ = ["ControlAdapter", "adapter_for", "make_adapters"]


@dataclass
class ControlAdapter:
    """The controls whose results have type ``kind`` (one of `RESULT_TYPES`, the control tag in
    lower case: "brushlabels", "polygonlabels", "rectanglelabels")."""

    kind: str
    polygon_tolerance: float = 0.5  # pixels; Douglas-Peucker tolerance of polygon outlines

    def matches(self, control: ControlSpec) -> bool:
        return control.tag.lower() == self.kind

    def results(self, control: ControlSpec, regions: list[Region]) -> list[dict[str, Any]]:
        """Result items of ``regions`` for ``control``: one brush or rectangle per region, one
        polygon per outer contour; an empty region gives none."""
        options = {"tolerance": self.polygon_tolerance} if self.kind == "polygonlabels" else {}
        return [
            item
            for region in regions
            for item in region_to_results(
                region, self.kind, from_name=control.name, to_name=control.to_name, **options
            )
        ]


def make_adapters(polygon_tolerance: float = 0.5) -> tuple[ControlAdapter, ...]:
    """One adapter per result type."""
    return tuple(ControlAdapter(kind, polygon_tolerance) for kind in RESULT_TYPES)


def adapter_for(
    control: ControlSpec, adapters: tuple[ControlAdapter, ...]
) -> ControlAdapter | None:
    """The adapter that answers `control`, or None (the control gets no results)."""
    return next((a for a in adapters if a.matches(control)), None)
