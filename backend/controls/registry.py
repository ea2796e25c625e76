"""The control tags the backend knows, listed once; everything else is derived from this list.

A new tag is one module (a `ControlTag` subclass) and one line in `TAGS`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from backend.controls.base import ControlTag, Shape
from backend.controls.brush import BrushLabels
from backend.controls.keypoint import KeyPointLabels
from backend.controls.polygon import PolygonLabels
from backend.controls.rectangle import RectangleLabels
from backend.formats.regions import Region
from backend.label_config import ControlSpec
from backend.settings import Settings

logger = logging.getLogger(__name__)

TAGS: tuple[type[ControlTag], ...] = (
    BrushLabels,
    PolygonLabels,
    RectangleLabels,
    KeyPointLabels,
)

_BY_KIND = {tag.kind(): tag for tag in TAGS}
#: Result types the backend pre-annotates ("brushlabels", "polygonlabels", "rectanglelabels").
PREDICTED_TYPES = tuple(tag.kind() for tag in TAGS if tag.predicted())
#: Result types whose items hold a region with a mask (COCO export, exemplars of annotations).
REGION_TYPES = tuple(tag.kind() for tag in TAGS if tag.has_mask)
#: Result types that are smart regions in Label Studio's interactive context (visual prompts).
SMART_REGION_TYPES = tuple(_BY_KIND)
#: `clipseg-label predict --type` value -> the tag of its generated label config.
RESULT_OPTIONS = {tag.option: tag.tag for tag in TAGS if tag.option is not None}


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


#: Why a label config gets no predictions (said at /setup, on /predict and by clipseg-label).
NOTHING_TO_PREDICT = (
    f"the label config has no {_listed([t.tag for t in TAGS if t.predicted()])} on an <Image> "
    "(without model_skip): nothing to predict"
)


def tag_type(kind: str) -> type[ControlTag] | None:
    """The tag of a result type (`type` in lower case), or None for one the backend does not
    know (TextArea, Choices, ...)."""
    return _BY_KIND.get(kind.lower())


def predicted_tags(settings: Settings) -> tuple[ControlTag, ...]:
    """The pre-annotated tags, with their result options from the settings."""
    return tuple(tag.from_settings(settings) for tag in TAGS if tag.predicted())


def tag_for(control: ControlSpec, tags: Sequence[ControlTag]) -> ControlTag | None:
    """The tag among `tags` that answers `control`, or None (the control gets no results)."""
    return next((t for t in tags if t.matches(control)), None)


def region_to_results(
    region: Region, kind: str, *, from_name: str, to_name: str, **options: Any
) -> list[dict[str, Any]]:
    """Results of one `Region` for a control of result type `kind` (one of PREDICTED_TYPES),
    scored with the region's score; the original size is the mask's. `options` are the tag's
    result options (PolygonLabels: tolerance, max_points)."""
    tag = tag_type(kind)
    if tag is None or not tag.predicted():
        raise ValueError(f"result type must be one of {PREDICTED_TYPES}, got {kind!r}")
    return tag(**options).region_results(region, from_name=from_name, to_name=to_name)


def result_to_mask(
    result: Mapping[str, Any], *, height: int | None = None, width: int | None = None
) -> np.ndarray:
    """The region of a result of one of REGION_TYPES as a bool mask (height, width), by
    default at the result's original size; how each type is drawn is its tag's `to_mask`
    (`backend.formats.labelstudio`: brush_, polygon_, rectangle_result_mask).

    Raises:
        ValueError: another result type, a malformed value or no size to draw at.
    """
    tag = tag_type(str(result.get("type", "")))
    if tag is None or not tag.has_mask:
        raise ValueError(f"a {result.get('type')!r} result has no mask; supported: {REGION_TYPES}")
    return tag().to_mask(result, height, width)


def exemplar_shape(item: Mapping[str, Any], height: int, width: int) -> Shape | None:
    """The visual prompt (`mask=` or `box=` in pixels, x0 y0 x1 y1, for
    `Predictor.embed_exemplar`) of a drawn region, at the image's (height, width).

    An unrotated rectangle or a keypoint gives a box; brushes, polygons and rotated rectangles
    a mask (`result_to_mask`). None for an empty region, a type that prompts nothing, and a
    malformed region (logged: one bad region must not fail the others).
    """
    kind = str(item.get("type", "")).lower()
    tag = tag_type(kind)
    if tag is None:
        return None
    try:
        if not isinstance(item.get("value"), Mapping):
            raise ValueError("no 'value' dict")
        return tag().exemplar_shape(item, height, width)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        logger.warning("region %s (%s) is malformed, skipped: %s", item.get("id"), kind, exc)
        return None
