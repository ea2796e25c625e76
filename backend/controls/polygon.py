"""PolygonLabels: pre-annotated with one polygon per outer outline of a region (simplified by
CLIPSEG_POLYGON_TOLERANCE pixels, holes left out); a polygon result's mask is its points
rasterised the way COCO does (`backend.formats.labelstudio.polygon_result_mask`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.controls.base import ControlTag, percent_frame
from backend.formats.labelstudio import polygon_result_mask, polygon_results
from backend.formats.polygons import DEFAULT_MAX_POINTS, DEFAULT_TOLERANCE
from backend.formats.regions import Region
from backend.settings import Settings


@dataclass(frozen=True)
class PolygonLabels(ControlTag):
    tag = "PolygonLabels"
    option = "polygon"

    tolerance: float = DEFAULT_TOLERANCE  # pixels; Douglas-Peucker tolerance of the outlines
    max_points: int | None = DEFAULT_MAX_POINTS  # vertices per polygon at most

    @classmethod
    def from_settings(cls, settings: Settings) -> PolygonLabels:
        return cls(tolerance=settings.polygon_tolerance)

    def region_results(
        self, region: Region, *, from_name: str, to_name: str
    ) -> list[dict[str, Any]]:
        return polygon_results(
            region.mask,
            region.label,
            from_name=from_name,
            to_name=to_name,
            tolerance=self.tolerance,
            max_points=self.max_points,
            **percent_frame(region),
        )

    def to_mask(
        self, result: Mapping[str, Any], height: int | None, width: int | None
    ) -> np.ndarray:
        return polygon_result_mask(result, height=height, width=width)
