"""The batch prediction loop and the outputs rebuilt from its per-image records.

`run_predict` reads images in batches, hands them to an `Annotator` (the model side: image ->
Label Studio results, regions with exact masks, uncertainty), stores one record per image in the
`StateStore` as soon as it is done, skips images whose record exists, and collects failures
(unreadable image, bad URL, malformed task) without stopping. `write_outputs` then rebuilds
``tasks.json``, ``coco.json`` and ``failures.json`` from the records of every source, so that
a resumed run produces the same files as an uninterrupted one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from backend.atomic import write_json_atomic
from backend.batch.sources import ImageSource, SourceReader, task_image_value
from backend.batch.state import StateStore
from backend.formats.coco import CocoDataset, mask_to_rle, rle_area, rle_bbox, rle_to_mask
from backend.images import ImageError
from backend.overlays import label_colors, save_overlay
from backend.segmenter import ImagePrediction

logger = logging.getLogger(__name__)

TASKS_FILE = "tasks.json"
COCO_FILE = "coco.json"
FAILURES_FILE = "failures.json"
OVERLAY_DIR = "overlays"
LABEL_CONFIG_FILE = "label_config.xml"


class Annotator(Protocol):
    """The model side of a batch: (H, W, 3) uint8 images in, one `ImagePrediction` each out
    (Label Studio results, regions with exact masks, uncertainty, confidence, per-label details;
    see `backend.model`)."""

    labels: Sequence[str]  # COCO categories, in order
    model_version: str

    def annotate(self, images: Sequence[np.ndarray]) -> list[ImagePrediction]: ...


@dataclass
class Failure:
    """An image that could not be done, and why."""

    ref: str
    origin: str
    error: str
    task_id: Any = None


@dataclass
class RunSummary:
    """Counts of a run, and its failures."""

    total: int = 0
    done: int = 0  # predicted in this run
    skipped: int = 0  # already done in an earlier run (resume)
    failures: list[Failure] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


def _record(
    source: ImageSource,
    size: tuple[int, int],
    outcome: ImagePrediction,
    version: str,
    score_mode: str,
) -> dict[str, Any]:
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
        "prediction": {
            "model_version": version,
            "score": float(
                outcome.uncertainty if score_mode == "uncertainty" else outcome.confidence
            ),
            "result": outcome.results,
        },
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


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def make_progress(total: int, quiet: bool, desc: str = "predict") -> Any:
    """A tqdm bar on stderr (rate and ETA), disabled with ``quiet`` or when stderr is no TTY."""
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=disable, dynamic_ncols=True)


def run_predict(
    sources: Sequence[ImageSource],
    annotator: Annotator,
    reader: SourceReader,
    out_dir: str | Path,
    *,
    run_fingerprint: str,
    image_value: Callable[[ImageSource], str],
    batch_size: int = 4,
    overlays: bool = False,
    score_mode: str = "confidence",
    image_key: str = "image",
    progress: Any = None,
) -> RunSummary:
    """Predict every source not done yet, store each record, and rebuild the outputs.

    ``image_value`` gives each output task's ``data[image_key]`` (see `task_image_value`);
    ``score_mode`` picks the prediction's top-level score ("confidence" or "uncertainty").
    ``progress`` is a tqdm-like object (``update``, ``close``) or None. Returns the summary;
    the caller decides the exit code (failures -> 1).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = StateStore(out, run_fingerprint)
    summary = RunSummary(total=len(sources))
    colors = label_colors(annotator.labels)

    todo = []
    for src in sources:
        if store.load(src.key) is not None:
            summary.skipped += 1
        else:
            todo.append(src)
    if progress is not None:
        progress.update(summary.skipped)
    if summary.skipped:
        logger.info("resuming: %d of %d images already done", summary.skipped, len(sources))

    for batch in _batches(todo, batch_size):
        loaded = []
        for src in batch:
            try:
                loaded.append((src, reader.read(src)))
            except ImageError as exc:
                summary.failures.append(_failure(src, str(exc)))
                if progress is not None:
                    progress.update(1)
        if not loaded:
            continue
        for (src, img), outcome in _annotate(annotator, loaded, summary):
            size = img.array.shape[:2]
            record = _record(src, size, outcome, annotator.model_version, score_mode)
            if overlays:
                name = overlay_name(src.key, src.ref)
                pairs = [(r.label, r.mask) for r in outcome.regions]
                save_overlay(out / OVERLAY_DIR / name, img.array, pairs, colors)
                record["overlay"] = f"{OVERLAY_DIR}/{name}"
            store.save(src.key, record)
            summary.done += 1
            if progress is not None:
                progress.update(1)

    if overlays:
        _missing_overlays(sources, store, reader, out, colors, summary)
    summary.outputs = write_outputs(
        sources, store, out, annotator.labels, summary.failures, image_value, image_key
    )
    return summary


def _annotate(
    annotator: Annotator, loaded: list[tuple[ImageSource, Any]], summary: RunSummary
) -> list[tuple[tuple[ImageSource, Any], ImagePrediction]]:
    """Annotate a batch; if the model fails on it, image by image, so that one image the model
    cannot take (an error, not a crash of the process) is a failure and the others are done."""
    try:
        outcomes = annotator.annotate([img.array for _, img in loaded])
        return list(zip(loaded, outcomes, strict=True))
    except Exception as exc:  # retried one by one below; each failure is logged and reported
        if len(loaded) == 1:
            src = loaded[0][0]
            logger.debug("prediction failed for %s", src.ref, exc_info=True)
            error = f"prediction failed: {type(exc).__name__}: {exc}"
            summary.failures.append(_failure(src, error))
            return []
    done = []
    for item in loaded:
        done.extend(_annotate(annotator, [item], summary))
    return done


def _failure(src: ImageSource, error: str) -> Failure:
    return Failure(ref=src.ref, origin=src.origin, error=error, task_id=(src.task or {}).get("id"))


def _missing_overlays(
    sources: Sequence[ImageSource],
    store: StateStore,
    reader: SourceReader,
    out: Path,
    colors: dict[str, tuple[int, int, int]],
    summary: RunSummary,
) -> None:
    """Draw overlays of images done in an earlier run without ``--overlays`` (reads them again)."""
    for src in sources:
        record = store.load(src.key)
        if record is None or (record.get("overlay") and (out / record["overlay"]).exists()):
            continue
        try:
            image = reader.read(src).array
        except ImageError as exc:
            summary.failures.append(_failure(src, f"overlay: {exc}"))
            continue
        name = overlay_name(src.key, src.ref)
        pairs = [(r["label"], rle_to_mask(r["segmentation"])) for r in record["regions"]]
        save_overlay(out / OVERLAY_DIR / name, image, pairs, colors)
        record["overlay"] = f"{OVERLAY_DIR}/{name}"
        store.save(src.key, record)


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


__all__ = [
    "Annotator",
    "Failure",
    "RunSummary",
    "records_to_coco",
    "record_task",
    "run_predict",
    "task_image_value",
    "write_outputs",
]
