"""The outputs of a `clipseg-label predict` run, rebuilt from its per-image records.

A record (`image_record`) is what one image gave: its prediction as the server answers it
(`backend.segmenter.ImagePrediction.answer`), its regions as COCO RLE, its scores. After every
run `write_outputs` rebuilds from the records of all sources:
- ``tasks.json``: Label Studio tasks with their prediction, importable as is (`record_task`);
- ``coco.json``: COCO with exact RLE masks and scores (`records_to_coco`);
- ``failures.json``: the images that could not be done, and why;
so that a resumed run produces the same files as an uninterrupted one. ``label_config.xml``
and ``overlays/*.png`` are written by the run itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.atomic import write_json_atomic
from backend.batch.sources import ImageSource
from backend.batch.state import StateStore
from backend.formats.coco import CocoDataset, mask_to_rle, rle_area, rle_bbox
from backend.segmenter import ImagePrediction

TASKS_FILE = "tasks.json"
COCO_FILE = "coco.json"
FAILURES_FILE = "failures.json"
OVERLAY_DIR = "overlays"
LABEL_CONFIG_FILE = "label_config.xml"


@dataclass
class Failure:
    """An image (or task) that could not be done, and why: a row of failures.json."""

    ref: str
    origin: str
    error: str
    task_id: Any = None


def image_record(
    source: ImageSource,
    size: tuple[int, int],
    outcome: ImagePrediction,
    version: str,
    score_mode: str,
) -> dict[str, Any]:
    """The state record of one image: its prediction (the top-level score by ``score_mode``),
    regions as COCO RLE with area and bbox, scores and per-label details."""
    regions = []
    for region in outcome.regions:
        rle = mask_to_rle(region.mask)
        regions.append(
            {
                "label": region.label,
                "score": float(region.score),
                "segmentation": rle,
                "area": rle_area(rle),
                "bbox": rle_bbox(rle),
            }
        )
    return {
        "ref": source.ref,
        "origin": source.origin,
        "task": source.task,
        "height": size[0],
        "width": size[1],
        "prediction": outcome.answer(version, score_mode),
        "regions": regions,
        "uncertainty": float(outcome.uncertainty),
        "confidence": float(outcome.confidence),
        "labels": outcome.labels,
    }


def overlay_name(record_key: str, ref: str) -> str:
    """The overlay file name of an image: its stem (readable) and key (unique)."""
    stem = Path(ref.split("?")[0]).stem or "image"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:60]
    return f"{safe}-{record_key[:8]}.png"


def record_task(record: dict[str, Any], image: str, image_key: str = "image") -> dict[str, Any]:
    """The Label Studio task (importable) of one record: data, the prediction, and meta.

    ``image`` is ``data[image_key]`` for a plain image. An export task keeps its data as is;
    its id goes to ``meta.clipseg.task_id`` rather than ``id`` so that importing creates new
    tasks.
    """
    source_task = record.get("task") or {}
    data = dict(source_task.get("data") or {})
    if not data:
        data[image_key] = image
    meta = {
        "uncertainty": record["uncertainty"],
        "confidence": record["confidence"],
        "labels": record.get("labels") or {},
        "source": record["ref"],
    }
    if source_task.get("id") is not None:
        meta["task_id"] = source_task["id"]
    if record.get("overlay"):
        meta["overlay"] = record["overlay"]
    return {"data": data, "predictions": [record["prediction"]], "meta": {"clipseg": meta}}


def records_to_coco(
    records: Sequence[dict[str, Any]], images: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    """A COCO dataset (images named ``images``, categories named after ``labels``, annotations
    with exact RLE segmentation, area, bbox [x, y, w, h] and score) from predict records."""
    dataset = CocoDataset(labels)
    for record, name in zip(records, images, strict=True):
        image_id = dataset.add_image(name, record["width"], record["height"])
        for region in record["regions"]:
            dataset.add_segmentation(
                image_id,
                region["label"],
                region["segmentation"],
                region["area"],
                region["bbox"],
                score=region["score"],
            )
    return dataset.to_dict()


def write_outputs(
    sources: Sequence[ImageSource],
    store: StateStore,
    out: Path,
    labels: Sequence[str],
    failures: Sequence[Failure],
    image_value: Callable[[ImageSource], str],
    image_key: str = "image",
) -> dict[str, Path]:
    """Rebuild tasks.json, coco.json and failures.json from the records of ``sources``."""
    done = [(s, r) for s, r in ((s, store.load(s.key)) for s in sources) if r is not None]
    records = [r for _, r in done]
    images = [image_value(s) for s, _ in done]
    paths = {"tasks": out / TASKS_FILE, "coco": out / COCO_FILE, "failures": out / FAILURES_FILE}
    tasks = [record_task(r, image, image_key) for r, image in zip(records, images, strict=True)]
    write_json_atomic(paths["tasks"], tasks, indent=1)
    write_json_atomic(paths["coco"], records_to_coco(records, images, labels))
    write_json_atomic(paths["failures"], [f.__dict__ for f in failures], indent=1)
    return paths
