"""Label Studio JSON export -> COCO dataset with exact masks.

Every region becomes a mask at the original image size (its tag's, `backend.controls.
result_to_mask`) and is written as COCO RLE:
- brushlabels: the brush RLE decoded exactly (alpha > 0), so holes and areas are kept;
- polygonlabels: the points (percent) scaled to pixels (percent * size / 100, as the editor
  does) and rasterised by pycocotools, the way COCO rasterises polygons (pixel edges);
- rectanglelabels: the box (rotated about its top-left corner by `rotation` degrees, as the
  editor does) rasterised the same way.
area is the pixel count, bbox the mask's pixel extents, iscrowd 0 (see backend.formats.coco).

Which results: by default the non-cancelled annotations of each task (`was_cancelled`), every
one of them (Label Studio's own converters do the same; a task annotated twice gives both
copies); with source="predictions" the predictions instead, each region scored by its own
"score" or else its prediction's. A task without a selected annotation/prediction gives no
image (it is unlabelled, not empty); a selected annotation with no regions gives an image
without objects. Result types that carry no region (choices, textarea, relation, ...) are
ignored; other types are errors. (`backend.formats.labelstudio_to_coco` is this function.)
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from backend.controls import REGION_TYPES, result_to_mask
from backend.formats.coco import CocoDataset, mask_to_rle, rle_area, rle_bbox
from backend.formats.labelstudio import original_size

logger = logging.getLogger(__name__)

# result types of Label Studio that hold no image region: skipped without complaint
NON_REGION_TYPES = frozenset(
    {"choices", "textarea", "rating", "relation", "taxonomy", "number", "datetime", "ranker"}
)


@dataclass(frozen=True)
class ConversionProblem:
    """A task left out with errors="skip": which task, which result (if one), and why."""

    task_id: Any
    result_id: Any
    message: str


class _ResultError(ValueError):
    def __init__(self, result_id: Any, message: str) -> None:
        super().__init__(message)
        self.result_id = result_id
        self.message = message


def image_file_name(url: str) -> str:
    """Basename of an image URL or path; for Label Studio's local files (`?d=dir/a.png`) the
    basename of `d`."""
    parsed = urlparse(str(url))
    local = parse_qs(parsed.query).get("d")
    path = local[0] if local else parsed.path
    return posixpath.basename(unquote(path))


def _image_url(task: dict[str, Any], image_key: str | None) -> str:
    data = task.get("data") or {}
    if image_key is not None:
        if image_key not in data:
            raise _ResultError(None, f"task data has no {image_key!r} key")
        return str(data[image_key])
    if "image" in data:
        return str(data["image"])
    strings = [v for v in data.values() if isinstance(v, str)]
    if len(strings) == 1:
        return strings[0]
    raise _ResultError(
        None, f"cannot tell which of the task data keys {sorted(data)} is the image; pass image_key"
    )


def _size(result: dict[str, Any]) -> tuple[int, int]:
    try:
        height, width = original_size(result)
    except ValueError as exc:
        raise _ResultError(result.get("id"), str(exc)) from None
    return width, height


def _selected(task: dict[str, Any], source: str) -> list[dict[str, Any]]:
    if source == "annotations":
        return [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return list(task.get("predictions") or [])


def _convert_task(
    task: dict[str, Any], source: str, image_key: str | None
) -> tuple[str, tuple[int, int] | None, list[tuple[str, dict, float | None]]] | None:
    """(file name, (width, height) or None, [(label, rle, score)]) or None when unselected."""
    chosen = _selected(task, source)
    if not chosen:
        return None
    file_name = image_file_name(_image_url(task, image_key))
    size: tuple[int, int] | None = None
    objects = []
    for item in chosen:
        for result in item.get("result") or []:
            if not isinstance(result, dict):
                raise _ResultError(None, f"a result is a {type(result).__name__}, not a dict")
            rid = result.get("id")
            kind = str(result.get("type", "")).lower()
            if kind in NON_REGION_TYPES:
                continue
            if kind not in REGION_TYPES:
                raise _ResultError(
                    rid,
                    f"unsupported result type {result.get('type')!r}; supported: {REGION_TYPES}",
                )
            this = _size(result)
            if size is not None and this != size:
                raise _ResultError(rid, f"original size {this} differs from the task's {size}")
            size = this
            labels = (result.get("value") or {}).get(kind)
            if not isinstance(labels, list) or not labels:
                raise _ResultError(rid, f"result has no labels in value[{kind!r}]")
            width, height = size
            try:
                mask = result_to_mask(result, height=height, width=width)
            except ValueError as exc:
                raise _ResultError(rid, str(exc)) from exc
            rle = mask_to_rle(mask)
            score = result.get("score", item.get("score")) if source == "predictions" else None
            for label in labels:
                objects.append((str(label), rle, None if score is None else float(score)))
    return file_name, size, objects


def labelstudio_to_coco(
    tasks: Iterable[dict[str, Any]],
    *,
    labels: Sequence[str] | None = None,
    source: str = "annotations",
    image_key: str | None = None,
    errors: str = "raise",
    problems: list[ConversionProblem] | None = None,
) -> dict[str, Any]:
    """Convert a Label Studio JSON export to a COCO dataset (dict) with RLE masks.

    Args:
        tasks: the export: a list of tasks with "id", "data", "annotations"/"predictions".
        labels: category names in id order (1..K); None: every label found, sorted. With
            labels given, a region of another label is an error.
        source: "annotations" (non-cancelled ones) or "predictions" (with scores).
        image_key: the task data key holding the image URL (None: "image", or the only string).
        errors: "raise" (ValueError naming the task id and result id) or "skip" (leave the
            task out, record a ConversionProblem in `problems`, keep going).
        problems: a list that receives the problems with errors="skip" (and tasks left out for
            lack of a size: an annotation without regions does not tell the image size).

    Returns:
        {"info", "licenses", "images", "annotations", "categories"}; image ids are the task
        ids when those are unique integers.
    """
    if source not in ("annotations", "predictions"):
        raise ValueError(f"source must be 'annotations' or 'predictions', got {source!r}")
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    converted = []
    for n, task in enumerate(tasks):
        task_id = task.get("id", f"#{n}") if isinstance(task, dict) else f"#{n}"
        try:
            if not isinstance(task, dict):
                raise _ResultError(None, f"a task is a {type(task).__name__}, not a dict")
            item = _convert_task(task, source, image_key)
            if item is not None and labels is not None:
                for label, _, _ in item[2]:
                    if label not in labels:
                        raise _ResultError(None, f"label {label!r} is not in labels {list(labels)}")
        except _ResultError as exc:
            message = f"task {task_id}, result {exc.result_id}: {exc.message}"
            if errors == "raise":
                raise ValueError(message) from exc
            logger.warning("skipping %s", message)
            if problems is not None:
                problems.append(ConversionProblem(task_id, exc.result_id, exc.message))
            continue
        if item is None:
            continue
        if item[1] is None:
            message = "no region tells the image size (original_width/height); image left out"
            logger.warning("task %s: %s", task_id, message)
            if problems is not None:
                problems.append(ConversionProblem(task_id, None, message))
            continue
        converted.append((task_id, *item))

    names = list(labels) if labels is not None else sorted({o[0] for c in converted for o in c[3]})
    dataset = CocoDataset(names)
    ids = [c[0] for c in converted]
    use_task_ids = all(isinstance(i, int) and not isinstance(i, bool) for i in ids) and len(
        set(ids)
    ) == len(ids)
    for task_id, file_name, (width, height), objects in converted:
        image_id = dataset.add_image(
            file_name, width, height, image_id=task_id if use_task_ids else None
        )
        for label, rle, score in objects:
            area = rle_area(rle)
            if area == 0:
                logger.debug("task %s: empty %s region left out", task_id, label)
                continue
            dataset.add_segmentation(image_id, label, rle, area, rle_bbox(rle), score=score)
    return dataset.to_dict()
