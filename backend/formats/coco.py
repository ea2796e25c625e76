"""COCO: RLE of masks (pycocotools) and a dataset / results writer.

Conventions (those of pycocotools, which COCOeval uses):
- RLE is column-major (Fortran order) over (H, W); in JSON its `counts` is the compressed ASCII
  string (pycocotools returns bytes; we decode them).
- area is the exact pixel count of the mask, also when the segmentation is written as polygons.
- bbox is [x, y, w, h] of the pixel extents (w = x1 - x0 + 1), what `toBbox` gives for RLE.
- iscrowd is 0 for ordinary objects even when their segmentation is RLE: pycocotools and COCOeval
  handle RLE with iscrowd 0 (IoU as for polygons), whereas iscrowd 1 would make a ground-truth
  object a "crowd" region that detections may match without counting as true positives. Use
  iscrowd=1 only for real crowd regions.
- category ids are 1..K in the order the labels are given (0 is left for background), so that
  ids are stable across exports of the same label list.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from backend.formats.masks import as_mask
from backend.formats.polygons import mask_to_contours, polygon_to_coco, to_edge_coordinates
from backend.formats.regions import fill_mask_holes

logger = logging.getLogger(__name__)

SEGMENTATION_KINDS = ("rle", "polygon", "auto")


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a bool/uint8 (H, W) mask: {"size": [H, W], "counts": ascii str}."""
    m = np.asfortranarray(as_mask(mask), dtype=np.uint8)
    rle = mask_utils.encode(m)
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def _for_pycocotools(rle: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("COCO RLE must be a dict with 'size' [H, W] and 'counts'")
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return mask_utils.frPyObjects(rle, *rle["size"])
    if isinstance(counts, str):
        counts = counts.encode()
    return {"size": list(rle["size"]), "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode COCO RLE (compressed string/bytes or uncompressed list counts) -> bool (H, W)."""
    return mask_utils.decode(_for_pycocotools(rle)).astype(bool)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """bool (height, width) of a COCO ``segmentation``, as pycocotools' ``annToMask`` draws it:
    RLE (compressed or uncompressed counts; its size must be (height, width)) decoded, polygons
    (a list of flat [x0, y0, x1, y1, ...] lists in pixel-edge coordinates) rasterised and
    united. Points further than one image size outside the image are refused, as for Label
    Studio polygons (`backend.formats.labelstudio.EXTENT_PERCENT`: pycocotools would crash or
    allocate without bound on them).

    Raises:
        ValueError: naming what is malformed.
    """
    from backend.formats.labelstudio import EXTENT_PERCENT, rasterize_polygon

    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if not isinstance(size, (list, tuple)) or [int(v) for v in size] != [height, width]:
            raise ValueError(f"RLE size {size!r} is not the image's [{height}, {width}]")
        try:
            return rle_to_mask(segmentation)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"malformed COCO RLE: {exc}") from exc
    if not isinstance(segmentation, list) or not segmentation:
        raise ValueError("segmentation must be an RLE dict or a non-empty list of polygons")
    low, high = EXTENT_PERCENT
    mask = np.zeros((height, width), bool)
    for polygon in segmentation:
        try:
            pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)  # (N, 2) x, y pixels
        except (TypeError, ValueError):
            raise ValueError(
                "a polygon must be a flat list of numbers x0, y0, x1, y1, ..."
            ) from None
        if len(pts) < 3 or not np.isfinite(pts).all():
            raise ValueError("a polygon needs 3 or more finite (x, y) points")
        percent = pts * (100.0 / np.array([width, height]))
        if not ((percent >= low) & (percent <= high)).all():
            raise ValueError(
                "a polygon point lies more than one image size outside the image "
                f"({width} x {height})"
            )
        mask |= rasterize_polygon(pts, height, width)
    return mask


def rle_area(rle: dict[str, Any]) -> int:
    return int(mask_utils.area(_for_pycocotools(rle)))


def rle_bbox(rle: dict[str, Any]) -> list[float]:
    """[x, y, w, h] pixel extents of an RLE (pycocotools' toBbox); zeros when empty."""
    return [float(v) for v in mask_utils.toBbox(_for_pycocotools(rle))]


def mask_to_segmentation(mask: np.ndarray, kind: str = "rle", **polygon_kwargs) -> Any:
    """A COCO `segmentation` for a mask.

    kind "rle": exact RLE. "polygon": polygons in pixel-edge coordinates (flat lists); a mask
    with holes (any background not 4-connected to the border, however small, whatever the
    tolerance), or with parts too thin for a polygon, is refused (ValueError) since COCO
    polygons cannot express them. "auto": polygons when they can represent the mask, else RLE.
    `polygon_kwargs` (tolerance, max_points) go to `mask_to_contours`.
    """
    if kind not in SEGMENTATION_KINDS:
        raise ValueError(f"segmentation kind must be one of {SEGMENTATION_KINDS}, got {kind!r}")
    m = as_mask(mask)
    if kind == "rle":
        return mask_to_rle(m)
    height, width = m.shape
    # holes are decided on the mask itself: simplification may drop a small hole's outline
    problem = "the mask has holes" if not np.array_equal(fill_mask_holes(m), m) else None
    contours = [] if problem else mask_to_contours(m, holes=False, **polygon_kwargs)
    n_components = cv2.connectedComponents(m.view(np.uint8), connectivity=8)[0] - 1
    if problem is None and (not contours or len(contours) < n_components):
        # a component whose simplified outline is degenerate (one pixel thick) has no polygon
        problem = "a part of the mask is too thin for a polygon (one pixel wide)"
    if problem is None:
        return [polygon_to_coco(to_edge_coordinates(c.outer), width, height) for c in contours]
    if kind == "polygon":
        raise ValueError(
            f"{problem}: COCO polygons cannot express it; use segmentation='rle' or 'auto'"
        )
    return mask_to_rle(m)


class CocoDataset:
    """Collects images and annotations and writes a COCO dataset or a COCO results file.

    Args:
        labels: category names; ids are 1..K in this order.
        supercategory: the supercategory written for every category.
    """

    def __init__(self, labels: Sequence[str], supercategory: str = "object") -> None:
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique, got {list(labels)}")
        self.labels = list(labels)
        self.category_ids = {label: k + 1 for k, label in enumerate(self.labels)}
        self.supercategory = supercategory
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._sizes: dict[int, tuple[int, int]] = {}

    def add_image(
        self, file_name: str, width: int, height: int, image_id: int | None = None
    ) -> int:
        """Register an image; returns its id (1, 2, ... unless given)."""
        image_id = len(self.images) + 1 if image_id is None else int(image_id)
        if image_id in self._sizes:
            raise ValueError(f"image id {image_id} is already used")
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"image {file_name!r} needs a positive size, got {width} x {height}")
        self._sizes[image_id] = (int(height), int(width))
        self.images.append(
            {"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)}
        )
        return image_id

    def _category(self, label: str) -> int:
        if label not in self.category_ids:
            raise ValueError(f"unknown label {label!r}; known labels: {self.labels}")
        return self.category_ids[label]

    def add_segmentation(
        self,
        image_id: int,
        label: str,
        segmentation: Any,
        area: int,
        bbox: Sequence[float],
        *,
        score: float | None = None,
        iscrowd: int = 0,
    ) -> dict[str, Any]:
        """Add an annotation whose segmentation, area and bbox are already computed."""
        if image_id not in self._sizes:
            raise ValueError(f"image id {image_id} was not added; call add_image first")
        ann: dict[str, Any] = {
            "id": len(self.annotations) + 1,
            "image_id": int(image_id),
            "category_id": self._category(label),
            "segmentation": segmentation,
            "area": int(area),
            "bbox": [float(v) for v in bbox],
            "iscrowd": int(iscrowd),
        }
        if score is not None:
            ann["score"] = float(score)
        self.annotations.append(ann)
        return ann

    def add_mask(
        self,
        image_id: int,
        label: str,
        mask: np.ndarray,
        *,
        score: float | None = None,
        segmentation: str = "rle",
        iscrowd: int = 0,
        **polygon_kwargs,
    ) -> dict[str, Any] | None:
        """Add one object from its mask (bool/uint8 (H, W) at the image's size).

        segmentation: "rle" (exact), "polygon" or "auto" (see `mask_to_segmentation`).
        Returns the annotation, or None for an empty mask (COCO has no empty objects).
        """
        m = as_mask(mask)
        if image_id in self._sizes and m.shape != self._sizes[image_id]:
            raise ValueError(
                f"mask of shape {m.shape} does not match image {image_id} of (height, width) "
                f"{self._sizes[image_id]}"
            )
        rle = mask_to_rle(m)
        area = rle_area(rle)
        if area == 0:
            logger.debug("skipping an empty %s mask on image %s", label, image_id)
            return None
        seg = (
            rle
            if segmentation == "rle"
            else mask_to_segmentation(m, segmentation, **polygon_kwargs)
        )
        return self.add_segmentation(
            image_id, label, seg, area, rle_bbox(rle), score=score, iscrowd=iscrowd
        )

    def categories(self) -> list[dict[str, Any]]:
        return [
            {"id": self.category_ids[label], "name": label, "supercategory": self.supercategory}
            for label in self.labels
        ]

    def to_dict(self) -> dict[str, Any]:
        """The dataset: {"images", "annotations", "categories"} (+ an empty "info"/"licenses")."""
        return {
            "info": {"description": "exported by clipseg-label-studio"},
            "licenses": [],
            "images": list(self.images),
            "annotations": list(self.annotations),
            "categories": self.categories(),
        }

    def results(self) -> list[dict[str, Any]]:
        """The annotations as a COCO results list (for `COCO.loadRes`); each needs a score."""
        out = []
        for ann in self.annotations:
            if "score" not in ann:
                raise ValueError(f"annotation {ann['id']} has no score: results files need one")
            out.append(
                {k: ann[k] for k in ("image_id", "category_id", "segmentation", "bbox", "score")}
            )
        return out

    def save(self, path: str | Path, results: bool = False) -> Path:
        """Write the dataset (or, with results=True, the results list) as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.results() if results else self.to_dict()))
        return path
