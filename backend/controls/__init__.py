"""Label Studio control tags: one module per tag, each owning what its tag means.

- `brush`, `polygon`, `rectangle`: the pre-annotated tags (their smart="true" variants
  included): which controls they match, how a found region becomes result items, how one of
  their results becomes a mask, and which visual prompt a drawn one gives;
- `keypoint`: the smart KeyPointLabels prompt (never pre-annotated);
- `registry`: the list of tags, and what is derived from it (result types, dispatch by type).

Other controls (TextArea, Choices, ...) match no tag and are left alone.
"""

from __future__ import annotations

from backend.controls.base import ControlTag, Shape
from backend.controls.registry import (
    NOTHING_TO_PREDICT,
    PREDICTED_TYPES,
    REGION_TYPES,
    RESULT_OPTIONS,
    SMART_REGION_TYPES,
    TAGS,
    exemplar_shape,
    predicted_tags,
    region_to_results,
    result_to_mask,
    tag_for,
    tag_type,
)

__all__ = [
    "NOTHING_TO_PREDICT",
    "PREDICTED_TYPES",
    "REGION_TYPES",
    "RESULT_OPTIONS",
    "SMART_REGION_TYPES",
    "TAGS",
    "ControlTag",
    "Shape",
    "exemplar_shape",
    "predicted_tags",
    "region_to_results",
    "result_to_mask",
    "tag_for",
    "tag_type",
]
