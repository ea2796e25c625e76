"""Rank tasks by the model's uncertainty: which images to label next (active learning).

The figure of a task, in order of preference:

1. ``meta.clipseg.uncertainty``, stored by ``clipseg-label predict``: the mean over labels of the
   fraction of *uncertain* pixels, those with a probability in [low, high] (CLIPSEG_UNCERTAIN_LOW,
   CLIPSEG_UNCERTAIN_HIGH, default [0.2, 0.8]), among the pixels with a probability >= low (the
   label's candidate area; a label with no candidate pixel counts 0). 0 means every candidate
   pixel is sure, 1 means none is.
2. else, from the newest prediction of the task: 1 - the mean of its regions' ``score``;
3. else none: the task is ranked last with ``uncertainty`` null (no prediction to judge).

Ties keep the input order. Tasks are identified by their ``id`` (when they have one, as in a
Label Studio export) and their image reference.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

META_KEY = "clipseg"


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


def rank_tasks(tasks: Sequence[dict[str, Any]], image_key: str = "image") -> list[Ranked]:
    """Tasks sorted by uncertainty, highest first; tasks without a figure last, in input order."""
    rows = []
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise ValueError(f"task #{index} is not an object: {str(task)[:80]!r}")
        value, source, regions = task_uncertainty(task)
        image = str((task.get("data") or {}).get(image_key, ""))
        rows.append((index, task.get("id"), image, value, source, regions))
    rows.sort(key=lambda r: (r[3] is None, -(r[3] or 0.0), r[0]))
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
