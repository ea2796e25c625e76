"""Pure numpy / OpenCV / pycocotools conversions: masks, regions, brush RLE, polygons, COCO, LS results."""
