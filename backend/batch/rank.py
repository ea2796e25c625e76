"""Rank tasks by the model's uncertainty: which images to label next (active learning).

The figure of a task, in order of preference:

1. ``meta.clipseg.uncertainty``, stored by ``clipseg-label predict``: the mean over labels of the
   fraction of *uncertain* pixels, those with a probability in [low, high] (CLIPSEG_UNCERTAIN_LOW,
   CLIPSEG_UNCERTAIN_HIGH, default [0.2, 0.8]), among the pixels with a probability >= low (the
   label's candidate area; a label with no candidate pixel counts 0). 0 means every candidate
   pixel is sure, 1 means none is.
2. else, from the newest prediction of the task: 1 - the mean of its regions' ``score``;
3. else none: the task is ranked last with ``uncertainty`` null (no prediction to judge).

The order (``order``):

- ``"coverage"`` (the default): a batch of the next tasks to label should teach the model every
  label, not ten more examples of the one it is most confused about. So each next task is the one
  whose predicted labels are least covered by the tasks ranked before it: the most of
  ``1 / (1 + n)`` summed over its labels, n being how many earlier tasks predicted that label;
  among equals, the most uncertain. In the learning benchmark (docs/learning.md) this beat random
  picking at every round, where uncertainty alone fell behind random before anything was learned
  (the base model's most uncertain images held only some of the labels).
- ``"uncertainty"``: most uncertain first.

Ties keep the input order. Tasks are identified by their ``id`` (when they have one, as in a
Label Studio export) and their image reference.
"""

from __future__ import annotations

import csv
import heapq
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

META_KEY = "clipseg"
ORDERS = ("coverage", "uncertainty")


@dataclass(frozen=True)
class Ranked:
    """One task's place in the ranking."""

    rank: int  # 1 = label first
    task_id: Any
    image: str
    uncertainty: float | None
    source: str  # "meta", "region_scores" or "none": where the figure came from
    regions: int  # regions in the prediction used


def _newest_prediction(task: dict[str, Any]) -> dict[str, Any] | None:
    preds = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
    if not preds:
        return None
    # an export orders by creation; prefer the newest by created_at when present
    return max(enumerate(preds), key=lambda ip: (str(ip[1].get("created_at") or ""), ip[0]))[1]


def task_uncertainty(task: dict[str, Any]) -> tuple[float | None, str, int]:
    """(uncertainty, where it came from, number of regions) of one task; see the module doc."""
    pred = _newest_prediction(task)
    results = [r for r in (pred or {}).get("result") or [] if isinstance(r, dict)]
    meta = task.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get(META_KEY), dict):
        value = meta[META_KEY].get("uncertainty")
        if isinstance(value, (int, float)):
            return float(value), "meta", len(results)
    scores = [float(r["score"]) for r in results if isinstance(r.get("score"), (int, float))]
    if scores:
        return 1.0 - sum(scores) / len(scores), "region_scores", len(results)
    return None, "none", len(results)


def task_labels(task: dict[str, Any]) -> frozenset[str]:
    """The labels of the regions of a task's newest prediction (any ``*labels`` result type)."""
    pred = _newest_prediction(task)
    labels: set[str] = set()
    for result in (pred or {}).get("result") or []:
        if not isinstance(result, dict) or not isinstance(result.get("value"), dict):
            continue
        for key, names in result["value"].items():
            if key.endswith("labels") and isinstance(names, list):
                labels.update(str(n) for n in names)
    return frozenset(labels)


def coverage_order(uncertainty: Sequence[float], labels: Sequence[frozenset[str]]) -> list[int]:
    """Indices in "coverage" order (module doc): greedily, the task whose labels add the most
    ``1 / (1 + n)``, then the most uncertain, then the first.

    A task's gain only falls as others are picked, so the greedy choice is made lazily: a task
    whose stale gain tops the heap is re-scored, and taken when it still tops it (n log n for a
    project of 50,000 tasks instead of n^2)."""
    if len(uncertainty) != len(labels):
        raise ValueError(f"{len(uncertainty)} uncertainties for {len(labels)} label sets")
    seen: dict[str, int] = {}

    def key(i: int) -> tuple[float, float, int]:  # heapq pops the smallest
        gain = sum(1.0 / (1 + seen.get(label, 0)) for label in labels[i])
        return (-gain, -uncertainty[i], i)

    heap = [key(i) for i in range(len(labels))]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        stale = heapq.heappop(heap)
        fresh = key(stale[2])
        if heap and fresh > heap[0]:
            heapq.heappush(heap, fresh)  # it lost ground since it was scored
            continue
        order.append(fresh[2])
        for label in labels[fresh[2]]:
            seen[label] = seen.get(label, 0) + 1
    return order


def rank_tasks(
    tasks: Sequence[dict[str, Any]], image_key: str = "image", order: str = "coverage"
) -> list[Ranked]:
    """Tasks in ``order`` (see the module doc); tasks without a figure last, in input order."""
    if order not in ORDERS:
        raise ValueError(f"unknown ranking order {order!r}; use one of {', '.join(ORDERS)}")
    rows = []
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise ValueError(f"task #{index} is not an object: {str(task)[:80]!r}")
        value, source, regions = task_uncertainty(task)
        image = str((task.get("data") or {}).get(image_key, ""))
        rows.append((index, task.get("id"), image, value, source, regions))
    judged = [r for r in rows if r[3] is not None]
    if order == "coverage":
        picked = coverage_order(
            [float(r[3]) for r in judged], [task_labels(tasks[r[0]]) for r in judged]
        )
        judged = [judged[i] for i in picked]
    else:
        judged.sort(key=lambda r: (-(r[3] or 0.0), r[0]))
    rows = judged + [r for r in rows if r[3] is None]
    return [
        Ranked(rank=i + 1, task_id=tid, image=img, uncertainty=v, source=s, regions=n)
        for i, (_, tid, img, v, s, n) in enumerate(rows)
    ]


def write_ranking(path: str | Path, ranking: Sequence[Ranked]) -> Path:
    """Write the ranking as CSV (``.csv``) or JSON (anything else); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in ranking]
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(Ranked.__dataclass_fields__))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    else:
        path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
