"""BrushLabels: pre-annotated with one brush (Label Studio's RLE) per region; a brush result's
mask is its RLE decoded exactly (`backend.formats.labelstudio.brush_result_mask`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from backend.controls.base import ControlTag, percent_frame
from backend.formats.labelstudio import brush_result, brush_result_mask
from backend.formats.regions import Region


class BrushLabels(ControlTag):
    tag = "BrushLabels"
    option = "brush"

    def region_results(
        self, region: Region, *, from_name: str, to_name: str
    ) -> list[dict[str, Any]]:
        frame = percent_frame(region)
        return [
            brush_result(region.mask, region.label, from_name=from_name, to_name=to_name, **frame)
        ]

    def to_mask(
        self, result: Mapping[str, Any], height: int | None, width: int | None
    ) -> np.ndarray:
        return brush_result_mask(result, height=height, width=width)
