"""Pure numpy / OpenCV / pycocotools conversions: regions, brush RLE, polygons, COCO, LS results.

No torch and no clipseg imports here: the package turns probability maps (H, W) into regions
and regions into Label Studio results or COCO, and converts Label Studio exports to COCO.
"""

from backend.formats.brush import decode_brush_rle, encode_brush_rle
from backend.formats.coco import (
    CocoDataset,
    mask_to_rle,
    mask_to_segmentation,
    rle_area,
    rle_bbox,
    rle_to_mask,
)
from backend.formats.convert import ConversionProblem, image_file_name, labelstudio_to_coco
from backend.formats.labelstudio import (
    brush_result,
    new_result_id,
    polygon_results,
    rectangle_result,
    region_to_results,
    result_to_mask,
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
    "to_edge_coordinates",
]
