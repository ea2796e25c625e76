"""The one mask check: every conversion of backend.formats takes the same masks and refuses
the same ones with the same message."""

from __future__ import annotations

import numpy as np
import pytest

from backend.formats.brush import encode_brush_rle
from backend.formats.coco import mask_to_rle
from backend.formats.labelstudio import brush_result
from backend.formats.masks import as_mask
from backend.formats.polygons import mask_to_contours


def _every_conversion(mask):
    yield lambda: mask_to_rle(mask)
    yield lambda: mask_to_contours(mask)
    yield lambda: encode_brush_rle(mask)
    yield lambda: brush_result(
        mask, "x", from_name="b", to_name="i", original_width=4, original_height=3
    )


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ([[0, 1]], "must be a numpy array, got list"),
        (np.zeros((3, 4, 1), bool), r"must be 2-D \(H, W\), got shape \(3, 4, 1\)"),
        (np.zeros((3, 4), np.float32), "must be bool or uint8 .*got dtype float32"),
    ],
)
def test_every_conversion_refuses_a_bad_mask_alike(mask, message):
    with pytest.raises(ValueError, match=message):
        as_mask(mask)
    for convert in _every_conversion(mask):
        with pytest.raises(ValueError, match=message):
            convert()


def test_uint8_masks_are_their_non_zero_pixels():
    region = np.zeros((3, 4), bool)
    region[1, 1:3] = True
    for scale in (1, 255):
        assert np.array_equal(as_mask(region.astype(np.uint8) * np.uint8(scale)), region)
    assert as_mask(region) is region  # a bool mask is taken as it is
