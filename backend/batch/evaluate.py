"""What an annotator must fix, measured: predictions against accepted annotations
(`clipseg-label evaluate`).

The flow, one function each:

1. `load_file`: a file -> `Side`, its tasks (`TaskRegions`) with their results not drawn yet.
   A Label Studio JSON export (or the tasks.json of `clipseg-label predict`) gives, per task,
   the latest non-cancelled annotation (``source="annotations"``) or the newest prediction
   (``source="predictions"``); a COCO file gives one task per image (``file_name``).
2. `match_tasks`: prediction tasks to truth tasks, by task id (``id``, or
   ``meta.clipseg.task_id`` of predict's tasks.json), else by image reference, else by the
   image's file name (when it is unique on both sides).
3. `draw`: each result -> a bool mask at the task's size (the truth's original size), through
   the control tags' ``to_mask`` (`backend.controls.result_to_mask`: brush RLE decoded, polygons
   and rectangles rasterised) or `backend.formats.coco.segmentation_to_mask`. A result that
   cannot be drawn (garbage RLE, points far outside, an unknown label, no size) is a `Problem`:
   reported and left out, the rest of the task is scored.
4. `Evaluation.add`: one task's regions -> `clipseg.evaluate.match_regions` (one-to-one matches
   per label at IoU > 0.5) and `semantic_overlap`; `Evaluation.summary` adds the tasks up.

`evaluate_files` runs the four; `predict_for` runs the model on the truth's tasks first (the
`clipseg-label predict` code path, `backend.batch.predict.predict`) for ``--model``.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from backend.batch.export_coco import NON_REGION_TYPES, image_file_name
from backend.batch.sources import task_image_ref
from backend.controls import REGION_TYPES, result_to_mask
from backend.errors import SourceError
from backend.formats.coco import segmentation_to_mask
from backend.formats.labelstudio import original_size
from clipseg.evaluate import OverlapCounts, PanopticCounts, match_regions, semantic_overlap

logger = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5
#: Result types that carry no mask and are left alone (a keypoint is a prompt, not a region).
IGNORED_TYPES = NON_REGION_TYPES | {"keypointlabels"}

#: One drawn region: (label, bool (H, W) mask).
LabeledMask = tuple[str, np.ndarray]


@dataclass(frozen=True)
class Problem:
    """A result (or task) left out of the figures, and why."""

    file: str
    task: str  # how the task is named: "task 12", or its image
    result: Any  # the result id / COCO annotation id, None for the whole task
    message: str

    def __str__(self) -> str:
        which = "" if self.result is None else f", result {self.result}"
        return f"{self.file}: {self.task}{which}: {self.message}"


@dataclass(frozen=True)
class TaskRegions:
    """One task of one file: how to find it on the other side, and its results, not drawn yet.

    ``results`` are Label Studio result dicts, or COCO annotation dicts when ``categories`` (COCO
    category id -> name) is set; ``size`` is (height, width) when the file says it for the whole
    image (COCO), else it comes from the results' original size."""

    task_id: Any
    image: str | None
    results: tuple[Mapping[str, Any], ...] = ()
    size: tuple[int, int] | None = None
    categories: Mapping[Any, str] | None = None
    model_version: str | None = None
    annotation_id: Any = None  # the chosen annotation's id (Label Studio truth)
    data: Mapping[str, Any] | None = None  # the task's data (Label Studio files)

    @property
    def name(self) -> str:
        if self.task_id is not None:
            return f"task {self.task_id}"
        return self.image or "a task without id or image"

    @property
    def file_name(self) -> str | None:
        return image_file_name(self.image) if self.image else None

    def labels(self) -> set[str]:
        """The labels its results name (without drawing them)."""
        if self.categories is not None:
            return {self.categories[r["category_id"]] for r in self.results}
        out: set[str] = set()
        for result in self.results:
            kind = str(result.get("type", "")).lower()
            value = result.get("value")
            names = value.get(kind) if isinstance(value, Mapping) else None
            if isinstance(names, list):
                out.update(str(n) for n in names)
        return out


@dataclass
class Side:
    """What one file holds: its tasks with a selected annotation/prediction, the tasks without
    one (named, not evaluated), and the problems found while reading."""

    path: str
    kind: str  # "labelstudio" or "coco"
    tasks: list[TaskRegions]
    without: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


# --------------------------------------------------------------------------------- loading
def _read_json(path: str | Path) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"cannot read {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise SourceError(
            f"{p} is not a text file: expected a Label Studio JSON export or COCO JSON"
        ) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SourceError(
            f"{p} is not valid JSON ({exc}): expected a Label Studio JSON export or COCO JSON"
        ) from exc


def _is_coco(data: Any) -> bool:
    return isinstance(data, dict) and "images" in data and "annotations" in data


def load_file(
    path: str | Path,
    source: str,
    *,
    image_key: str | None = None,
    model_version: str | None = None,
) -> Side:
    """Read a Label Studio JSON export / tasks.json or a COCO file into a `Side`.

    Args:
        source: "annotations" (the truth) or "predictions"; a COCO file is read the same way
            for both (its scores are not used).
        image_key: the task data key of the image (default: ``image``, or the image URL in
            the data).
        model_version: with source="predictions", only predictions of this model version.

    Raises:
        SourceError: the file cannot be read, is not JSON, or is neither a Label Studio export
            nor COCO (naming the file and what it holds instead).
    """
    if source not in ("annotations", "predictions"):
        raise ValueError(f"source must be 'annotations' or 'predictions', got {source!r}")
    data = _read_json(path)
    if _is_coco(data):
        return _coco_side(str(path), data)
    if isinstance(data, dict) and "data" in data:
        data = [data]  # a single task
    if not isinstance(data, list):
        what = f"a JSON object with keys {sorted(data)[:8]}" if isinstance(data, dict) else None
        raise SourceError(
            f"{path} is neither a Label Studio JSON export (a list of tasks) nor COCO (an "
            f"object with 'images' and 'annotations'): it holds {what or type(data).__name__}"
        )
    if data and not any(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in data):
        raise SourceError(
            f"{path} is not a Label Studio JSON export: none of its {len(data)} items is a task "
            "(an object with a 'data' object)"
        )
    return _labelstudio_side(str(path), data, source, image_key, model_version)


def _latest(items: Sequence[Mapping[str, Any]], *keys: str) -> Mapping[str, Any] | None:
    """The item with the greatest first present timestamp of ``keys``, the last one on ties
    (an export lists them in creation order)."""
    if not items:
        return None

    def when(pair: tuple[int, Mapping[str, Any]]) -> tuple[str, int]:
        index, item = pair
        stamp = next((item[k] for k in keys if item.get(k)), "")
        return str(stamp), index

    return max(enumerate(items), key=when)[1]


def _task_id(task: Mapping[str, Any]) -> Any:
    """The task's id, or the id of the export task predict's tasks.json was made from."""
    if task.get("id") is not None:
        return task["id"]
    meta = task.get("meta")
    clipseg = meta.get("clipseg") if isinstance(meta, Mapping) else None
    return clipseg.get("task_id") if isinstance(clipseg, Mapping) else None


def _labelstudio_side(
    path: str,
    tasks: list[Any],
    source: str,
    image_key: str | None,
    model_version: str | None,
) -> Side:
    side = Side(path, "labelstudio", [])
    for n, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            side.problems.append(Problem(path, f"item #{n}", None, "not a task (no 'data' object)"))
            continue
        task_id, image = _task_id(task), task_image_ref(task, image_key)
        ref = TaskRegions(task_id, image).name
        if source == "annotations":
            chosen = [
                a
                for a in task.get("annotations") or []
                if isinstance(a, dict) and not a.get("was_cancelled")
            ]
            item = _latest(chosen, "updated_at", "created_at")
        else:
            chosen = [
                p
                for p in task.get("predictions") or []
                if isinstance(p, dict)
                and (model_version is None or p.get("model_version") == model_version)
            ]
            item = _latest(chosen, "created_at")
        if item is None:
            side.without.append(ref)
            continue
        results = item.get("result") or []
        if not isinstance(results, list):  # nothing of it can be trusted: the task is left out
            what = "annotation" if source == "annotations" else "prediction"
            message = f"its {what}'s 'result' is not a list; task left out"
            side.problems.append(Problem(path, ref, None, message))
            continue
        good = []
        for r in results:
            if isinstance(r, dict):
                good.append(r)
            else:
                side.problems.append(Problem(path, ref, None, "a result is not an object"))
        version = item.get("model_version") if source == "predictions" else None
        annotation = item.get("id") if source == "annotations" else None
        side.tasks.append(
            TaskRegions(
                task_id,
                image,
                tuple(good),
                model_version=version,
                annotation_id=annotation,
                data=task["data"],
            )
        )
    return side


def _coco_side(path: str, data: dict[str, Any]) -> Side:
    images, annotations = data.get("images"), data.get("annotations")
    categories = data.get("categories") or []
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise SourceError(f"{path}: COCO 'images' and 'annotations' must be lists")
    if not isinstance(categories, list):
        raise SourceError(f"{path}: COCO 'categories' must be a list")
    side = Side(path, "coco", [])
    names: dict[Any, str] = {}
    for c in categories:
        if isinstance(c, dict) and "id" in c and isinstance(c.get("name"), str):
            names[c["id"]] = c["name"]
        else:
            side.problems.append(Problem(path, "categories", None, f"bad category {c!r:.80}"))
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for a in annotations:
        ref = f"annotation {a.get('id')}" if isinstance(a, dict) else "an annotation"
        if not isinstance(a, dict) or not isinstance(a.get("image_id"), (int, str)):
            side.problems.append(Problem(path, ref, None, "not an annotation with an image_id"))
        elif not isinstance(a.get("category_id"), (int, str)) or a["category_id"] not in names:
            message = f"unknown category_id {a.get('category_id')!r}"
            side.problems.append(Problem(path, f"image {a['image_id']}", a.get("id"), message))
        else:
            by_image.setdefault(a["image_id"], []).append(a)
    for n, image in enumerate(images):
        try:
            file_name = str(image["file_name"])
            height, width = int(image["height"]), int(image["width"])
            if height <= 0 or width <= 0:
                raise ValueError
        except (TypeError, KeyError, ValueError):
            side.problems.append(
                Problem(path, f"image #{n}", None, "needs file_name, width and height")
            )
            continue
        results = tuple(by_image.pop(image.get("id"), []))
        side.tasks.append(TaskRegions(None, file_name, results, (height, width), names))
    for image_id, items in by_image.items():
        side.problems.append(
            Problem(path, f"image {image_id}", None, f"{len(items)} annotations of no image")
        )
    return side


# -------------------------------------------------------------------------------- matching
@dataclass
class Matching:
    """(prediction, truth, how) pairs, and the tasks of either side without a partner."""

    pairs: list[tuple[TaskRegions, TaskRegions, str]] = field(default_factory=list)
    truth_only: list[TaskRegions] = field(default_factory=list)
    predictions_only: list[TaskRegions] = field(default_factory=list)


def match_tasks(predictions: Sequence[TaskRegions], truth: Sequence[TaskRegions]) -> Matching:
    """Pair each truth task with at most one prediction task: by task id (when neither side's
    image file name contradicts it), then by the exact image reference, then by the image's
    file name where it names one task on each side."""
    free = list(range(len(predictions)))
    pairs: dict[int, tuple[int, str]] = {}  # truth index -> (prediction index, how)
    stages = (
        ("id", lambda t: t.task_id),
        ("image", lambda t: t.image),
        ("file name", lambda t: t.file_name),
    )
    for how, key in stages:
        by_pred = _unique([(key(predictions[i]), i) for i in free])
        todo = [j for j in range(len(truth)) if j not in pairs]
        for k, j in _unique([(key(truth[j]), j) for j in todo]).items():
            i = by_pred.get(k)
            if i is None:
                continue
            p, t = predictions[i], truth[j]
            if how == "id" and p.file_name and t.file_name and p.file_name != t.file_name:
                logger.warning(
                    "task id %s: images %s and %s differ; not matched by id", k, p.image, t.image
                )
                continue
            pairs[j] = (i, how)
            free.remove(i)
    matching = Matching()
    for j, t in enumerate(truth):
        if j in pairs:
            i, how = pairs[j]
            matching.pairs.append((predictions[i], t, how))
        else:
            matching.truth_only.append(t)
    matching.predictions_only = [predictions[i] for i in free]
    return matching


def _unique(keyed: Sequence[tuple[Any, int]]) -> dict[Any, int]:
    """key -> index of the keys (not None) that occur once."""
    seen = Counter(k for k, _ in keyed)
    return {k: i for k, i in keyed if k is not None and seen[k] == 1}


# --------------------------------------------------------------------------------- drawing
def task_size(task: TaskRegions) -> tuple[int, int] | None:
    """(height, width) of a task's image: the file's (COCO), else the first region result's
    original size that is valid; None when no result tells it."""
    if task.size is not None:
        return task.size
    for result in task.results:
        if str(result.get("type", "")).lower() in REGION_TYPES:
            try:
                return original_size(result)
            except ValueError:
                continue
    return None


def draw(
    task: TaskRegions,
    height: int,
    width: int,
    *,
    file: str,
    labels: Collection[str] | None = None,
) -> tuple[list[LabeledMask], list[Problem]]:
    """Every region of ``task`` as (label, bool (height, width) mask), one per label of a
    result; results that cannot be drawn become `Problem`s (``labels``: the known labels; a
    result naming another is one). Empty masks are left out."""
    regions: list[LabeledMask] = []
    problems: list[Problem] = []
    for result in task.results:
        rid = result.get("id")
        try:
            if task.categories is not None:
                names = [task.categories[result["category_id"]]]
                own = task.size or (height, width)  # COCO pixels are those of its image
                mask = segmentation_to_mask(result.get("segmentation"), *own)
                if own != (height, width):
                    small = mask.view(np.uint8)
                    mask = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST) > 0
            else:
                kind = str(result.get("type", "")).lower()
                if kind in IGNORED_TYPES:
                    continue
                if kind not in REGION_TYPES:
                    raise ValueError(
                        f"unsupported result type {result.get('type')!r}; supported: "
                        f"{', '.join(REGION_TYPES)}"
                    )
                value = result.get("value")
                names = value.get(kind) if isinstance(value, Mapping) else None
                if not isinstance(names, list) or not names:
                    raise ValueError(f"no labels in value[{kind!r}]")
                names = [str(n) for n in names]
                original_size(result)  # the size must be the result's own, never guessed
                mask = result_to_mask(result, height=height, width=width)
            unknown = [n for n in names if labels is not None and n not in labels]
            if unknown:
                raise ValueError(f"unknown label {unknown[0]!r} (not one of the label config's)")
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            problems.append(Problem(file, task.name, rid, str(exc) or type(exc).__name__))
            continue
        if not mask.any():
            logger.debug("%s: result %s covers no pixel; left out", task.name, rid)
            continue
        regions.extend((name, mask) for name in names)
    return regions, problems


# ------------------------------------------------------------------------------ the figures
@dataclass(frozen=True)
class TaskScore:
    """One task's figures: counts and overlap per label, what was compared."""

    task_id: Any
    image: str | None
    matched_by: str
    counts: Mapping[str, PanopticCounts]
    overlap: Mapping[str, OverlapCounts]
    predicted: int  # predicted regions scored
    true: int  # true regions scored
    skipped: int = 0  # results left out as problems

    @property
    def total(self) -> PanopticCounts:
        return sum(self.counts.values(), PanopticCounts())

    def row(self) -> dict[str, Any]:
        """The task's row of the CSV (and of the JSON's ``tasks``)."""
        c = self.total
        return {
            "task_id": self.task_id,
            "image": self.image,
            "matched_by": self.matched_by,
            "true_regions": self.true,
            "predicted_regions": self.predicted,
            "tp": c.tp,
            "fp": c.fp,
            "fn": c.fn,
            "pq": round(c.pq, 4),
            "sq": round(c.sq, 4),
            "rq": round(c.rq, 4),
            "skipped_results": self.skipped,
            "false_labels": " | ".join(f"{k} x{v.fp}" for k, v in self.counts.items() if v.fp),
            "missed_labels": " | ".join(f"{k} x{v.fn}" for k, v in self.counts.items() if v.fn),
        }


def panoptic_figures(counts: PanopticCounts, tasks: int) -> dict[str, Any]:
    """PQ, SQ, RQ, the counts, and false / missed regions per task of ``tasks`` tasks."""
    return {
        "pq": counts.pq,
        "sq": counts.sq,
        "rq": counts.rq,
        "tp": counts.tp,
        "fp": counts.fp,
        "fn": counts.fn,
        "false_per_task": counts.fp / tasks if tasks else 0.0,
        "missed_per_task": counts.fn / tasks if tasks else 0.0,
    }


class Evaluation:
    """Tasks scored one by one (`add`), figures over all of them (`summary`)."""

    def __init__(self, iou_threshold: float = IOU_THRESHOLD) -> None:
        self.iou_threshold = iou_threshold
        self.tasks: list[TaskScore] = []

    def add(
        self,
        predicted: Sequence[LabeledMask],
        truth: Sequence[LabeledMask],
        *,
        task_id: Any = None,
        image: str | None = None,
        matched_by: str = "",
        skipped: int = 0,
    ) -> TaskScore:
        """Score one task: (label, bool (H, W) mask) regions on one grid."""
        score = TaskScore(
            task_id,
            image,
            matched_by,
            match_regions(predicted, truth, self.iou_threshold),
            semantic_overlap(predicted, truth),
            len(predicted),
            len(truth),
            skipped,
        )
        self.tasks.append(score)
        return score

    def by_label(self) -> dict[str, tuple[PanopticCounts, OverlapCounts]]:
        out: dict[str, tuple[PanopticCounts, OverlapCounts]] = {}
        for task in self.tasks:
            for label in task.counts:
                c, o = out.get(label, (PanopticCounts(), OverlapCounts()))
                out[label] = (c + task.counts[label], o + task.overlap[label])
        return dict(sorted(out.items()))

    @property
    def total(self) -> PanopticCounts:
        return sum((t.total for t in self.tasks), PanopticCounts())

    def summary(self) -> dict[str, Any]:
        """The figures: ``overall`` and per ``labels`` (PQ, SQ, RQ, TP/FP/FN, false and missed
        regions per task, semantic IoU); ``overall.semantic_iou`` is the mean over labels."""
        n = len(self.tasks)
        labels = {}
        for label, (c, o) in self.by_label().items():
            labels[label] = panoptic_figures(c, n) | {"semantic_iou": o.iou}
        overall = panoptic_figures(self.total, n)
        ious = [v["semantic_iou"] for v in labels.values()]
        overall["semantic_iou"] = float(np.mean(ious)) if ious else 1.0
        return {
            "tasks": n,
            "iou_threshold": self.iou_threshold,
            "overall": overall,
            "labels": labels,
        }


# ------------------------------------------------------------------------------ composing
@dataclass
class Report:
    """An evaluation with everything said about its inputs."""

    evaluation: Evaluation
    predictions: Side
    truth: Side
    matching: Matching
    problems: list[Problem]

    @property
    def matched_by(self) -> Counter:
        return Counter(how for _, _, how in self.matching.pairs)

    @property
    def model_versions(self) -> list[str]:
        """The model versions of the predictions evaluated."""
        return sorted({p.model_version for p, _, _ in self.matching.pairs if p.model_version})

    def to_json(self) -> dict[str, Any]:
        return {
            "predictions": self.predictions.path,
            "truth": self.truth.path,
            "model_versions": self.model_versions,
            **self.evaluation.summary(),
            "matched_by": dict(self.matched_by),
            "truth_without_predictions": [t.name for t in self.matching.truth_only],
            "predictions_without_truth": [p.name for p in self.matching.predictions_only],
            "truth_not_annotated": self.truth.without,
            "problems": [
                {"file": p.file, "task": p.task, "result": p.result, "message": p.message}
                for p in self.problems
            ],
            "per_task": [t.row() for t in self.evaluation.tasks],
        }


def evaluate_sides(
    predictions: Side,
    truth: Side,
    *,
    labels: Collection[str] | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> Report:
    """Match, draw and score (see the module doc). Each pair is drawn at the truth's size (the
    predictions' when the truth has no region)."""
    matching = match_tasks(predictions.tasks, truth.tasks)
    evaluation = Evaluation(iou_threshold)
    problems = [*truth.problems, *predictions.problems]
    for pred, true, how in matching.pairs:
        size = task_size(true) or task_size(pred)
        if size is None:  # no region on either side: nothing to find, nothing found
            regions_t: list[LabeledMask] = []
            regions_p: list[LabeledMask] = []
            bad: list[Problem] = []
        else:
            regions_t, bad_t = draw(true, *size, file=truth.path, labels=labels)
            regions_p, bad_p = draw(pred, *size, file=predictions.path, labels=labels)
            bad = bad_t + bad_p
        problems.extend(bad)
        task_id = true.task_id if true.task_id is not None else pred.task_id
        evaluation.add(
            regions_p,
            regions_t,
            task_id=task_id,
            image=true.image or pred.image,
            matched_by=how,
            skipped=len(bad),
        )
    for problem in problems:
        logger.info("left out: %s", problem)
    return Report(evaluation, predictions, truth, matching, problems)


def evaluate_files(
    predictions: str | Path,
    truth: str | Path,
    *,
    labels: Collection[str] | None = None,
    image_key: str | None = None,
    model_version: str | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> Report:
    """`evaluate_sides` of two files (`load_file`); the same file may be both (a Label Studio
    export whose tasks carry predictions and annotations)."""
    pred_side = load_file(
        predictions, "predictions", image_key=image_key, model_version=model_version
    )
    truth_side = load_file(truth, "annotations", image_key=image_key)
    return evaluate_sides(pred_side, truth_side, labels=labels, iou_threshold=iou_threshold)


# ------------------------------------------------------------------------------- outputs
def format_table(report: Report) -> str:
    """The figures as a plain-text table, per label and overall, with what they mean."""
    summary = report.evaluation.summary()
    versions = report.model_versions
    how = ", ".join(f"{n} by {k}" for k, n in sorted(report.matched_by.items())) or "none"
    lines = [
        f"predictions: {report.predictions.path}"
        + (f" ({', '.join(versions)})" if versions else ""),
        f"truth:       {report.truth.path}",
        f"{summary['tasks']} tasks evaluated (matched {how})",
        "",
    ]
    width = max([len("overall"), *(len(k) for k in summary["labels"])])
    columns = (width, 5, 5, 5, 4, 4, 4, 10, 11, 5)  # label, PQ SQ RQ, TP FP FN, per task, IoU
    template = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(columns))
    lines.append(
        template.format(
            "label", "PQ", "SQ", "RQ", "TP", "FP", "FN", "false/task", "missed/task", "IoU"
        )
    )

    def row(name: str, f: Mapping[str, Any]) -> str:
        return template.format(
            name,
            *(f"{f[k]:.3f}" for k in ("pq", "sq", "rq")),
            *(f[k] for k in ("tp", "fp", "fn")),
            f"{f['false_per_task']:.2f}",
            f"{f['missed_per_task']:.2f}",
            f"{f['semantic_iou']:.3f}",
        )

    lines.extend(row(name, f) for name, f in summary["labels"].items())
    lines.append("-" * len(lines[-1]))
    lines.append(row("overall", summary["overall"]))
    legend = (
        f"TP: regions to keep (IoU > {summary['iou_threshold']} with a true object of the label, "
        "one to one); FP: false regions to delete; FN: missed objects to draw; SQ: mean IoU of "
        "the kept ones; RQ = TP / (TP + FP/2 + FN/2); PQ = SQ x RQ; IoU: semantic, pixels over "
        "all tasks (overall: the mean over labels)."
    )
    lines.extend(textwrap.wrap(legend, 100))
    return "\n".join(lines)


def write_csv(path: str | Path, report: Report) -> Path:
    """One row per task (`TaskScore.row`), in the truth's order."""
    import csv

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = [t.row() for t in report.evaluation.tasks]
    fields = list(rows[0]) if rows else list(TaskScore(None, None, "", {}, {}, 0, 0).row())
    with p.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return p


def write_json(path: str | Path, report: Report) -> Path:
    """Every figure (`Report.to_json`), written atomically."""
    from backend.atomic import write_json_atomic

    p = Path(path)
    write_json_atomic(p, report.to_json(), indent=1)
    return p


def truth_labels(side: Side) -> list[str]:
    """Every label the truth's tasks name, sorted (the prompts of ``--model`` by default)."""
    return sorted(set().union(*(t.labels() for t in side.tasks)))


def prediction_inputs(side: Side, out: Path, images_root: Path | None = None) -> list[str]:
    """What `backend.batch.predict.predict` reads for the truth's tasks, written under ``out``:
    the annotated tasks of an export (``out/truth_tasks.json``: id and data, so that predict's
    tasks.json keeps the ids), or a list of the COCO images under ``images_root``
    (``out/truth_images.txt``)."""
    out.mkdir(parents=True, exist_ok=True)
    if side.kind == "coco":
        root = (images_root or Path(side.path).parent).resolve()
        listing = out / "truth_images.txt"
        listing.write_text("".join(f"{root / t.image}\n" for t in side.tasks), encoding="utf-8")
        return [str(listing)]
    missing = [t.name for t in side.tasks if t.task_id is None]
    if missing:
        raise SourceError(
            f"{side.path}: --model needs task ids to match its predictions; {missing[0]} has none"
        )
    wanted = {t.task_id for t in side.tasks}
    data = _read_json(side.path)
    tasks = [
        {"id": t["id"], "data": t["data"]}
        for t in (data if isinstance(data, list) else [data])
        if isinstance(t, dict) and t.get("id") in wanted and isinstance(t.get("data"), dict)
    ]
    path = out / "truth_tasks.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return [str(path)]


__all__ = [
    "Evaluation",
    "LabeledMask",
    "Matching",
    "Problem",
    "Report",
    "Side",
    "TaskRegions",
    "TaskScore",
    "draw",
    "evaluate_files",
    "evaluate_sides",
    "format_table",
    "load_file",
    "match_tasks",
    "panoptic_figures",
    "prediction_inputs",
    "task_size",
    "truth_labels",
    "write_csv",
    "write_json",
]
