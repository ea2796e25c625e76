"""KeyPointLabels (smart="true"): a prompt, never pre-annotated. A keypoint the annotator
places (a positive one: `is_positive` not false) prompts with a small box around it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backend.controls.base import ControlTag, Shape, clip_box


class KeyPointLabels(ControlTag):
    tag = "KeyPointLabels"
    has_mask = False

    def exemplar_shape(self, item: Mapping[str, Any], height: int, width: int) -> Shape | None:
        value = item["value"]
        cx, cy = float(value.get("x", 0)) * width / 100, float(value.get("y", 0)) * height / 100
        r = max(8.0, 0.05 * min(height, width))  # a small box around the point
        box = clip_box(cx - r, cy - r, cx + r, cy + r, height, width)
        return {"box": box} if box is not None else None
