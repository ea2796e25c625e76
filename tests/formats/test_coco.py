"""COCO RLE round trips, area/bbox conventions, segmentation kinds, and COCOeval on a dataset
written by CocoDataset (predictions identical to the ground truth give AP 1)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from backend.formats.coco import (
    CocoDataset,
    mask_to_rle,
    mask_to_segmentation,
    rle_area,
    rle_bbox,
    rle_to_mask,
)
from backend.formats.regions import mask_bbox


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**32 - 1), st.floats(0, 1))
def test_rle_round_trip_area_and_bbox(height: int, width: int, seed: int, p: float) -> None:
    mask = np.random.default_rng(seed).random((height, width)) < p
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [height, width]
    json.dumps(rle)
    assert np.array_equal(rle_to_mask(rle), mask)
    assert rle_area(rle) == int(mask.sum())
    x, y, w, h = mask_bbox(mask)
    assert rle_bbox(rle) == [float(v) for v in (x, y, w, h)]


def test_rle_is_pycocotools_fortran_order() -> None:
    mask = np.zeros((3, 4), np.uint8)
    mask[0, 1:] = 1
    ours = mask_to_rle(mask)
    theirs = mask_utils.encode(np.asfortranarray(mask))
    assert ours["counts"] == theirs["counts"].decode()
    # uncompressed counts (column-major) decode too
    assert np.array_equal(rle_to_mask({"size": [3, 4], "counts": [3, 1, 2, 1, 2, 1, 2]}), mask > 0)


def test_segmentation_kinds() -> None:
    mask = np.zeros((40, 50), bool)
    mask[5:25, 5:30] = True
    poly = mask_to_segmentation(mask, "polygon")
    assert isinstance(poly, list) and len(poly) == 1
    assert sorted(zip(poly[0][::2], poly[0][1::2], strict=True)) == [
        (5, 5),
        (5, 25),
        (30, 5),
        (30, 25),
    ]
    assert mask_to_segmentation(mask, "auto") == poly
    ring = mask.copy()
    ring[10:15, 10:15] = False
    assert isinstance(mask_to_segmentation(ring, "auto"), dict)  # holes -> RLE
    with pytest.raises(ValueError, match="holes"):
        mask_to_segmentation(ring, "polygon")
    line = np.zeros((10, 10), bool)
    line[3, 1:9] = True
    assert isinstance(mask_to_segmentation(line, "auto"), dict)
    with pytest.raises(ValueError, match="kind"):
        mask_to_segmentation(mask, "mesh")


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.0])
def test_a_one_pixel_hole_is_never_filled_by_polygons(tolerance: float) -> None:
    """Simplification at 1 px or more collapses a one-pixel hole's outline; the mask still has
    the hole, so "auto" keeps it as RLE and "polygon" refuses it."""
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    mask[12, 14] = False
    seg = mask_to_segmentation(mask, "auto", tolerance=tolerance)
    assert isinstance(seg, dict) and np.array_equal(rle_to_mask(seg), mask)
    with pytest.raises(ValueError, match="holes"):
        mask_to_segmentation(mask, "polygon", tolerance=tolerance)


def test_a_separate_one_pixel_line_is_kept_as_rle() -> None:
    """A block (a fine polygon) and apart from it a line one pixel wide (no polygon): "auto"
    must not drop the line."""
    mask = np.zeros((20, 20), bool)
    mask[2:10, 2:10] = True
    mask[15, 2:18] = True
    seg = mask_to_segmentation(mask, "auto")
    assert isinstance(seg, dict) and np.array_equal(rle_to_mask(seg), mask)
    with pytest.raises(ValueError, match="too thin"):
        mask_to_segmentation(mask, "polygon")
    # without the line the block is one polygon
    mask[15] = False
    (poly,) = mask_to_segmentation(mask, "auto")
    back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], 20, 20))) > 0
    assert np.array_equal(back, mask)


def blobs(seed: int, n: int, shape=(120, 160)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = []
    for _ in range(n):
        cx, cy, r = (
            rng.uniform(20, shape[1] - 20),
            rng.uniform(20, shape[0] - 20),
            rng.uniform(6, 18),
        )
        m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        if rng.random() < 0.5:
            m &= (xx - cx) ** 2 + (yy - cy) ** 2 > (r / 2) ** 2  # a ring
        out.append(m)
    return out


def load(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = json.loads(json.dumps(dataset))  # through JSON, as a file would be
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@pytest.mark.parametrize("segmentation", ["rle", "auto"])
def test_cocoeval_identical_predictions_give_ap_1(segmentation: str) -> None:
    labels = ["cat", "dog"]
    gt = CocoDataset(labels)
    pred = CocoDataset(labels)
    for k in range(3):
        for ds in (gt, pred):
            ds.add_image(f"img{k}.png", 160, 120)
        for j, m in enumerate(blobs(k, 4)):
            gt.add_mask(k + 1, labels[j % 2], m, segmentation=segmentation)
            pred.add_mask(k + 1, labels[j % 2], m, score=0.5 + 0.1 * j, segmentation=segmentation)
    dataset = gt.to_dict()
    assert [c["id"] for c in dataset["categories"]] == [1, 2]
    assert all(a["iscrowd"] == 0 for a in dataset["annotations"])
    coco_gt = load(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(pred.results())))
        for iou_type in ("segm", "bbox"):
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            assert ev.stats[0] == pytest.approx(1.0), iou_type


def test_dataset_validation() -> None:
    ds = CocoDataset(["a"])
    image = ds.add_image("x.png", 10, 8)
    with pytest.raises(ValueError, match="does not match image"):
        ds.add_mask(image, "a", np.ones((10, 8), bool))
    with pytest.raises(ValueError, match="unknown label 'b'"):
        ds.add_mask(image, "b", np.ones((8, 10), bool))
    with pytest.raises(ValueError, match="add_image first"):
        ds.add_segmentation(7, "a", {}, 1, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="already used"):
        ds.add_image("y.png", 10, 8, image_id=image)
    with pytest.raises(ValueError, match="unique"):
        CocoDataset(["a", "a"])
    assert ds.add_mask(image, "a", np.zeros((8, 10), bool)) is None
    ann = ds.add_mask(image, "a", np.ones((8, 10), bool))
    assert ann["area"] == 80 and ann["bbox"] == [0.0, 0.0, 10.0, 8.0]
    with pytest.raises(ValueError, match="no score"):
        ds.results()
    with pytest.raises(ValueError, match="2-D"):
        mask_to_rle(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="dtype"):
        mask_to_rle(np.zeros((2, 2), np.float32))
