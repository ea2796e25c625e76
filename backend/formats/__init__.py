"""Pure numpy / OpenCV / pycocotools conversions: regions, brush RLE, polygons, COCO, LS results.

No torch and no clipseg imports here: the package turns probability maps (H, W) into regions
and masks into Label Studio results or COCO. It is the layer below the control tags
(`backend.controls`), which decide which conversion applies to which result type.

Three names that dispatch on a result type live above this package and are re-exported here
on first use, so that existing callers keep working (an import at the top would be circular:
`backend.controls` builds on this package): `region_to_results` and `result_to_mask`
(`backend.controls`), `labelstudio_to_coco` with `ConversionProblem` and `image_file_name`
(`backend.batch.export_coco`).
"""

from __future__ import annotations

import importlib
from typing import Any

from backend.formats.brush import decode_brush_rle, encode_brush_rle
from backend.formats.coco import (
    CocoDataset,
    mask_to_rle,
    mask_to_segmentation,
    rle_area,
    rle_bbox,
    rle_to_mask,
    segmentation_to_mask,
)
from backend.formats.labelstudio import (
    brush_result,
    new_result_id,
    polygon_results,
    rectangle_result,
)
from backend.formats.polygons import (
    Contour,
    mask_to_contours,
    mask_to_polygons,
    polygon_to_coco,
    polygon_to_percent,
    to_edge_coordinates,
)
from backend.formats.regions import (
    Region,
    fill_mask_holes,
    mask_bbox,
    probabilities_to_regions,
    probability_to_regions,
)

_ABOVE = {
    "region_to_results": "backend.controls",
    "result_to_mask": "backend.controls",
    "labelstudio_to_coco": "backend.batch.export_coco",
    "ConversionProblem": "backend.batch.export_coco",
    "image_file_name": "backend.batch.export_coco",
}


def __getattr__(name: str) -> Any:
    if name in _ABOVE:
        return getattr(importlib.import_module(_ABOVE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CocoDataset",
    "Contour",
    "ConversionProblem",
    "Region",
    "brush_result",
    "decode_brush_rle",
    "encode_brush_rle",
    "fill_mask_holes",
    "image_file_name",
    "labelstudio_to_coco",
    "mask_bbox",
    "mask_to_contours",
    "mask_to_polygons",
    "mask_to_rle",
    "mask_to_segmentation",
    "new_result_id",
    "polygon_results",
    "polygon_to_coco",
    "polygon_to_percent",
    "probabilities_to_regions",
    "probability_to_regions",
    "rectangle_result",
    "region_to_results",
    "result_to_mask",
    "rle_area",
    "rle_bbox",
    "rle_to_mask",
    "segmentation_to_mask",
    "to_edge_coordinates",
]
