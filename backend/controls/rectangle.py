"""RectangleLabels (smart="true" included): pre-annotated with each region's bounding box; a
rectangle result's mask is the box rotated as the editor rotates it
(`backend.formats.labelstudio.rectangle_result_mask`). Drawn as a smart region or annotated,
an unrotated rectangle prompts with its box, a rotated one with its mask."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from backend.controls.base import ControlTag, Shape, clip_box, percent_frame
from backend.formats.labelstudio import rectangle_result, rectangle_result_mask
from backend.formats.regions import Region


class RectangleLabels(ControlTag):
    tag = "RectangleLabels"
    option = "rectangle"

    def region_results(
        self, region: Region, *, from_name: str, to_name: str
    ) -> list[dict[str, Any]]:
        frame = percent_frame(region)
        rect = rectangle_result(
            region.mask, region.label, from_name=from_name, to_name=to_name, **frame
        )
        return [] if rect is None else [rect]

    def to_mask(
        self, result: Mapping[str, Any], height: int | None, width: int | None
    ) -> np.ndarray:
        return rectangle_result_mask(result, height=height, width=width)

    def exemplar_shape(self, item: Mapping[str, Any], height: int, width: int) -> Shape | None:
        value = item["value"]
        if float(value.get("rotation", 0) or 0) % 360:
            return super().exemplar_shape(item, height, width)
        x, y = float(value.get("x", 0)), float(value.get("y", 0))
        w, h = float(value.get("width", 0)), float(value.get("height", 0))
        box = clip_box(
            x * width / 100,
            y * height / 100,
            (x + w) * width / 100,
            (y + h) * height / 100,
            height,
            width,
        )
        return {"box": box} if box is not None else None
