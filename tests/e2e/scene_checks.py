"""Checks shared by the end-to-end tests: demo scenes in and out of Label Studio, and how well
the predictions Label Studio holds match the scenes' ground truth.

Whatever produced the predictions (the backend through "Retrieve predictions", or
`clipseg-label predict` through an import or `clipseg-label push`), the same decoding applies:
brush RLE with `backend.formats.decode_brush_rle`, polygons rasterised by pycocotools, rectangles
as pixel boxes, each compared with `clipseg.demo.scenes.Scene.target`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from clipseg.demo.scenes import Scene

from .label_studio import LabelStudio, LSClient

SCENE_NAME = re.compile(r"scene_(\d+)\.png")

# IoU floors between the backend's predictions and the scenes' ground truth, per (task, label
# present in the scene), and on their mean per kind. The demo model tells colors apart far better
# than shapes (docs/demo-model.md): two objects of one color in a scene can halve a label's IoU,
# hence the low per-label floor. Measured values are printed by the test (see docs/e2e.md):
# lowest brush 0.481, polygon 0.481, rectangle 0.574.
BRUSH_IOU_FLOOR = 0.42
POLYGON_IOU_FLOOR = 0.42
RECT_IOU_FLOOR = 0.5
MEAN_IOU_FLOOR = 0.72  # measured: brush 0.795, polygon 0.790, rectangle 0.833
IOU_FLOORS = {"brush": BRUSH_IOU_FLOOR, "polygon": POLYGON_IOU_FLOOR, "rectangle": RECT_IOU_FLOOR}


def label_config(labels: list[str]) -> str:
    """Brush, polygon and rectangle labels over one image, one <Label> per demo prompt, and a
    TextArea whose text the annotator submits as a prompt (interactive pre-annotation)."""
    tags = "".join(f'<Label value="{lab}"/>' for lab in labels)
    return (
        "<View>"
        '<Image name="image" value="$image"/>'
        '<TextArea name="prompt" toName="image" editable="true" maxSubmissions="1"'
        ' showSubmitButton="true" placeholder="what to segment"/>'
        f'<BrushLabels name="brush" toName="image">{tags}</BrushLabels>'
        f'<PolygonLabels name="poly" toName="image">{tags}</PolygonLabels>'
        f'<RectangleLabels name="rect" toName="image">{tags}</RectangleLabels>'
        "</View>"
    )


def write_scene(scene: Scene, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"scene_{scene.seed}.png"
    Image.fromarray(scene.image).save(path)
    return path


def seed_of(task: dict) -> int:
    m = SCENE_NAME.search(task["data"]["image"])
    assert m is not None, f"task {task['id']}: no scene file name in {task['data']['image']!r}"
    return int(m.group(1))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def rasterize_polygon(points_pct: list[list[float]], h: int, w: int) -> np.ndarray:
    """Label Studio polygon points (percent of the original size) -> bool (h, w) mask.

    Percent * size / 100 gives pixel-edge coordinates (what the editor draws); pycocotools
    rasterises those the way COCO defines polygon masks.
    """
    from pycocotools import mask as mask_utils

    pts = np.asarray(points_pct, dtype=np.float64) * np.array([w, h]) / 100.0
    rle = mask_utils.frPyObjects([pts.ravel().tolist()], h, w)
    return mask_utils.decode(mask_utils.merge(rle)).astype(bool)


def fetch_task_image(ls: LabelStudio, task: dict) -> np.ndarray:
    url = task["data"]["image"]
    r = ls.client.request("GET", url if url.startswith("/") else "/" + url, timeout=60)
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def box_mask(x0: float, y0: float, x1: float, y1: float, h: int, w: int) -> np.ndarray:
    """Bool (h, w): the pixels inside the box with pixel-edge corners (x0, y0), (x1, y1)."""
    out = np.zeros((h, w), bool)
    out[max(round(y0), 0) : min(round(y1), h), max(round(x0), 0) : min(round(x1), w)] = True
    return out


def blob_boxes(mask: np.ndarray) -> np.ndarray:
    """Bool (H, W): the union of the bounding boxes of the mask's 8-connected blobs."""
    h, w = mask.shape
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    out = np.zeros((h, w), bool)
    for x, y, bw, bh, _area in stats[1:n]:
        out |= box_mask(x, y, x + bw, y + bh, h, w)
    return out


def predicted_masks(prediction: dict, h: int, w: int) -> dict[str, dict[str, np.ndarray]]:
    """kind ("brush", "polygon", "rectangle") -> label -> union of that kind's regions."""
    from backend.formats import decode_brush_rle

    out: dict[str, dict[str, np.ndarray]] = {"brush": {}, "polygon": {}, "rectangle": {}}
    for r in prediction["result"]:
        assert r["original_width"] == w and r["original_height"] == h, r
        value = r["value"]
        if r["type"] == "brushlabels":
            kind, (label,) = "brush", value["brushlabels"]
            m = decode_brush_rle(value["rle"], h, w) > 0
        elif r["type"] == "polygonlabels":
            kind, (label,) = "polygon", value["polygonlabels"]
            m = rasterize_polygon(value["points"], h, w)
        elif r["type"] == "rectanglelabels":
            kind, (label,) = "rectangle", value["rectanglelabels"]
            assert not value.get("rotation"), r
            x0, y0 = value["x"] * w / 100, value["y"] * h / 100
            x1, y1 = x0 + value["width"] * w / 100, y0 + value["height"] * h / 100
            m = box_mask(x0, y0, x1, y1, h, w)
        else:
            raise AssertionError(f"unexpected result type {r['type']!r}")
        out[kind][label] = out[kind].get(label, np.zeros((h, w), bool)) | m
    return out


def check_predictions(
    client: LSClient,
    tasks: list[dict],
    scenes: Mapping[int, Scene],
    model_version: str,
    floors: Mapping[str, float] = IOU_FLOORS,
    mean_floor: float = MEAN_IOU_FLOOR,
) -> dict[str, list[float]]:
    """Every task has a prediction of ``model_version`` whose regions match its scene: for each
    object name in the scene, the union of its brush masks and of its polygons against the
    name's ground truth, the union of its rectangles against the union of the ground truth
    blobs' boxes; each IoU at least its kind's floor, each kind's mean at least ``mean_floor``.
    Returns kind -> IoUs (for the report)."""
    ious: dict[str, list[float]] = {kind: [] for kind in floors}
    failures = []
    for task in tasks:
        scene = scenes[seed_of(task)]
        h, w = scene.image.shape[:2]
        preds = [p for p in client.predictions(task["id"]) if p["model_version"] == model_version]
        assert len(preds) == 1, (
            f"task {task['id']}: {len(preds)} predictions of model_version {model_version}"
        )
        masks = predicted_masks(preds[0], h, w)
        for name in sorted({o.name for o in scene.objects}):
            target = scene.target(name)
            targets = {"brush": target, "polygon": target, "rectangle": blob_boxes(target)}
            for kind, floor in floors.items():
                value = iou(masks[kind].get(name, np.zeros((h, w), bool)), targets[kind])
                ious[kind].append(value)
                if value < floor:
                    failures.append(f"task {task['id']} {name!r} {kind} IoU {value:.3f} < {floor}")
    assert not failures, "predictions below the IoU floors:\n" + "\n".join(failures)
    means = {kind: float(np.mean(values)) for kind, values in ious.items()}
    assert min(means.values()) >= mean_floor, f"mean IoU below {mean_floor}: {means}"
    return ious


def iou_summary(ious: dict[str, list[float]]) -> str:
    return "; ".join(
        f"{kind} min {min(v):.3f} mean {np.mean(v):.3f} (n={len(v)})" for kind, v in ious.items()
    )
