"""A project's annotations kept for training, under MODEL_DIR beside its learned states.

Layout: `MODEL_DIR/learning/<model>@<weights hash>/<project>/annotations.json`

    {"format": 1, "seq": <last change number>, "trained_seq": <seq when the last run started>,
     "label_config": <the project's label config, as the last webhook sent it>,
     "annotations": {"<annotation id>": {"updated_at", "task": {"id", "data"}, "result",
                                         "seq": <change number>}},
     "deleted": ["<annotation id>", ...]}

Writes are atomic (`backend.atomic.write_json_atomic`) and serialised across gunicorn workers by
an `fcntl` lock on `annotations.lock`, so a reader, a restart or a kill sees the old file or the
new one. Webhooks may be applied out of order (one queue per worker), so a write never goes back
in time: an older `updated_at` does not replace a newer one, and a deleted annotation (the
newest 10,000 ids) is not stored again by a late ANNOTATION_CREATED/UPDATED. A cancelled
(skipped) annotation is removed. Annotations are stored as Label Studio sent them; whether they
can be drawn (garbage RLE, points out of range, a label the config lacks) is decided at training
time, where the bad ones are reported and skipped (`backend.learning.annotations.to_examples`).

"New or changed since the last run" (CLIPSEG_TRAIN_EVERY) is the number of stored annotations
whose change number is above `trained_seq`.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from backend.atomic import write_json_atomic
from backend.exemplars import _newer, project_key

logger = logging.getLogger(__name__)

_FORMAT = 1
_MAX_DELETED = 10_000


def _empty() -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "seq": 0,
        "trained_seq": 0,
        "label_config": None,
        "annotations": {},
        "deleted": [],
    }


def _valid(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and data.get("format") == _FORMAT
        and isinstance(data.get("seq"), int)
        and isinstance(data.get("annotations"), dict)
    )


class AnnotationStore:
    """The annotations of every project of one model, under ``root`` (the `StateStore`'s)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def path(self, project: Any) -> Path:
        return self.root / project_key(project) / "annotations.json"

    @contextlib.contextmanager
    def _locked(self, project: Any) -> Iterator[dict[str, Any]]:
        """The project's data, under the in-process and the cross-process lock; written back
        atomically when the block changed it (and did not raise)."""
        path = self.path(project)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(path.with_name("annotations.lock"), "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                data = self._read(path, for_write=True)
                before = json.dumps(data, sort_keys=True)
                yield data
                if json.dumps(data, sort_keys=True) != before:
                    write_json_atomic(path, data)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self, path: Path, for_write: bool = False) -> dict[str, Any]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _empty()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not _valid(data):
            if for_write:  # never overwrite what we cannot read: it may be worth a look
                aside = path.with_name(f"{path.name}.unreadable-{time.time_ns()}")
                os.replace(path, aside)
                logger.error("annotation store %s is not valid; moved to %s", path, aside.name)
            else:
                logger.error("annotation store %s is not valid; read as empty", path)
            return _empty()
        for key, value in _empty().items():
            data.setdefault(key, value)
        return data

    # ---- reads
    def snapshot(self, project: Any) -> dict[str, Any]:
        """A private copy of the project's data (`_empty()`'s keys)."""
        return copy.deepcopy(self._read(self.path(project)))

    def count(self, project: Any) -> int:
        return len(self._read(self.path(project))["annotations"])

    def ids(self, project: Any) -> set[str]:
        return set(self._read(self.path(project))["annotations"])

    def changed_since_run(self, project: Any) -> int:
        """Stored annotations new or changed since the last training run started."""
        data = self._read(self.path(project))
        mark = data.get("trained_seq", 0)
        return sum(1 for a in data["annotations"].values() if a.get("seq", 0) > mark)

    # ---- writes
    @staticmethod
    def _put(data: dict[str, Any], annotation: dict, task: dict) -> bool:
        ann = str(annotation["id"])
        if ann in data["deleted"]:
            logger.info("annotation %s was deleted; its late update is not stored", ann)
            return False
        if annotation.get("was_cancelled"):
            return data["annotations"].pop(ann, None) is not None
        stored = data["annotations"].get(ann)
        updated_at = annotation.get("updated_at")
        if stored is not None and _newer(stored.get("updated_at"), updated_at):
            return False  # a late webhook: the stored version is newer
        item = {
            "updated_at": updated_at,
            "task": {"id": task.get("id"), "data": task.get("data")},
            "result": annotation.get("result") or [],
        }
        if stored is not None and all(stored.get(k) == v for k, v in item.items()):
            return False  # the same again (a webhook replayed, a sync)
        data["seq"] += 1
        data["annotations"][ann] = {**item, "seq": data["seq"]}
        return True

    def put(
        self, project: Any, annotation: dict, task: dict, label_config: str | None = None
    ) -> bool:
        """Store (or, cancelled, remove) one annotation of ``task``; whether it changed."""
        with self._locked(project) as data:
            if label_config:
                data["label_config"] = label_config
            return self._put(data, annotation, task)

    def remove(self, project: Any, ids: Iterable[Any], deleted: bool = True) -> int:
        """Drop annotations ``ids`` (``deleted``: never store them again); how many were held."""
        ids = [str(i) for i in ids]
        with self._locked(project) as data:
            removed = sum(data["annotations"].pop(i, None) is not None for i in ids)
            if deleted:
                known = set(data["deleted"])
                data["deleted"] = (data["deleted"] + [i for i in ids if i not in known])[
                    -_MAX_DELETED:
                ]
            return removed

    def sync(
        self, project: Any, tasks: Sequence[dict], label_config: str | None = None
    ) -> tuple[int, int]:
        """Make the store the project's export ``tasks`` (each with its "annotations"): add the
        missing and changed annotations, drop those no longer in it. (changed, dropped)."""
        with self._locked(project) as data:
            if label_config:
                data["label_config"] = label_config
            seen: set[str] = set()
            changed = 0
            for task in tasks:
                if not isinstance(task, dict):
                    continue
                for annotation in task.get("annotations") or []:
                    if not isinstance(annotation, dict) or annotation.get("id") is None:
                        continue
                    # one deleted after the export was read stays deleted (ids are not reused)
                    seen.add(str(annotation["id"]))
                    changed += self._put(data, annotation, task)
            stale = [i for i in data["annotations"] if i not in seen]
            for i in stale:
                del data["annotations"][i]
            return changed, len(stale)

    def mark_run(self, project: Any, seq: int) -> None:
        """A training run started on the annotations up to change ``seq``."""
        with self._locked(project) as data:
            data["trained_seq"] = max(int(data.get("trained_seq", 0)), int(seq))
