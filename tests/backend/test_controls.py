"""The control tags (backend.controls): the registry's lists and messages, and each tag's
region -> visual prompt."""

from __future__ import annotations

import numpy as np

from backend.controls import (
    NOTHING_TO_PREDICT,
    PREDICTED_TYPES,
    REGION_TYPES,
    RESULT_OPTIONS,
    SMART_REGION_TYPES,
    exemplar_shape,
)
from backend.formats.labelstudio import brush_result

W, H = 96, 64


def _red_mask():
    mask = np.zeros((H, W), bool)
    mask[H // 4 : H // 4 + H // 2, W // 4 : W // 4 + W // 3] = True
    return mask


def test_the_registry_lists_the_tags_once():
    assert PREDICTED_TYPES == ("brushlabels", "polygonlabels", "rectanglelabels")
    assert REGION_TYPES == PREDICTED_TYPES  # a keypoint has no region mask
    assert set(SMART_REGION_TYPES) == {*PREDICTED_TYPES, "keypointlabels"}
    assert RESULT_OPTIONS == {
        "brush": "BrushLabels",
        "polygon": "PolygonLabels",
        "rectangle": "RectangleLabels",
    }
    assert "no BrushLabels, PolygonLabels or RectangleLabels on an <Image>" in NOTHING_TO_PREDICT


def test_exemplar_shape_masks_at_the_image_size_boxes_and_skips_malformed(caplog):
    """Exemplar shapes: masks through the tag's result -> mask, boxes for plain rectangles and
    keypoints, None (logged) for a malformed region instead of an exception."""
    small = _red_mask()[::2, ::2]  # the brush was drawn on a half-size original
    item = brush_result(
        small,
        "cat",
        from_name="tag",
        to_name="image",
        original_width=W // 2,
        original_height=H // 2,
    )
    shape = exemplar_shape(item, H, W)
    assert np.array_equal(shape["mask"], _red_mask())
    rect = {"x": 25.0, "y": 25.0, "width": 50.0, "height": 50.0, "rectanglelabels": ["cat"]}
    item = {"type": "rectanglelabels", "value": rect}
    assert exemplar_shape(item, H, W) == {"box": (24, 16, 72, 48)}
    turned = {**rect, "rotation": 90}
    item = {"type": "rectanglelabels", "value": turned}
    assert exemplar_shape(item, H, W)["mask"].sum() > 0
    bad = {"points": [[1, 1], [2, 2]], "polygonlabels": ["cat"]}
    item = {"id": "p1", "type": "polygonlabels", "value": bad}
    assert exemplar_shape(item, H, W) is None
    assert "region p1 (polygonlabels) is malformed" in caplog.text
    point = {"type": "keypointlabels", "value": {"x": 50.0, "y": 50.0, "keypointlabels": ["cat"]}}
    assert exemplar_shape(point, H, W) == {"box": (40, 24, 56, 40)}  # 8 px around (48, 32)
    assert exemplar_shape({"type": "textarea", "value": {"text": ["a cat"]}}, H, W) is None
