"""The exemplar store: embeddings of annotators' regions, per project and label, under MODEL_DIR.

Layout: `<root>/<project id>.json`, where the caller picks `root` per model (embeddings of one
checkpoint mean nothing to another), e.g. `MODEL_DIR/exemplars/<weights hash>/`. One file per
project holds every label's exemplars:

    {"format": 1, "seq": <last sequence number>,
     "annotations": {"<annotation id>": {"updated_at": ..., "task": ...}},
     "deleted": ["<annotation id>", ...],
     "exemplars": [{"label", "annotation", "task", "region", "type", "seq", "embedding"}, ...]}

with embeddings as base64 of little-endian float32. Writes are atomic (a temporary file, then
`os.replace`) and serialised across processes by an `fcntl` lock, so gunicorn workers and
restarts see either the old or the new set, never half of one. Readers reload a project's file
when it changes on disk. Each label keeps its newest CLIPSEG_MAX_EXEMPLARS_PER_LABEL exemplars;
storing an annotation again replaces its exemplars (the same exemplars again change nothing, and
`version`, a hash of the content, stays the same).

Webhooks can be handled out of order (each gunicorn worker has its own queue, and embedding an
annotation takes longer than deleting one), so a write never goes back in time: an annotation
that was deleted (`deleted`, the newest 10,000 ids) is not stored again, and one already stored
with a newer `updated_at` is not replaced by an older version. A file that is not a store of
this format is moved aside (`<project>.json.unreadable-<time>`) before the next write instead
of being overwritten.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from backend.atomic import write_json_atomic

logger = logging.getLogger(__name__)

_FORMAT = 1
_PROJECT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class LabelEmbedding:
    """One annotator region turned into a conditional embedding of its label (what the store
    keeps; `clipseg.Exemplar` is the image + mask it was embedded from)."""

    label: str
    embedding: np.ndarray  # (D,) float32
    region: str = ""  # the region's id in the annotation
    type: str = ""  # "brushlabels", "polygonlabels", "rectanglelabels"


def project_key(project: Any) -> str:
    """The store's key for a project: `1` from 1, "1" or "1.1795712334" (what /setup sends)."""
    if isinstance(project, dict):
        project = project.get("id")
    if project is None:
        raise ValueError("no project id")
    key = str(project).split(".", 1)[0].strip()
    if not _PROJECT_RE.match(key):
        raise ValueError(f"not a project id: {project!r}")
    return key


def _encode(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")


def _decode(text: str) -> np.ndarray:
    """(D,) float32 from `_encode`'s text; ValueError for anything else."""
    vec = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4")
    if vec.size == 0:
        raise ValueError("empty embedding")
    return vec.astype(np.float32)


_MAX_DELETED = 10_000  # deleted annotation ids remembered per project
_EXEMPLAR_KEYS = ("label", "annotation", "seq", "embedding")


def _content(item: dict[str, Any]) -> tuple[str, ...]:
    """What an exemplar is, leaving out when it was stored (`seq`) and the task's id."""
    return (
        str(item["label"]),
        str(item["annotation"]),
        str(item.get("region", "")),
        str(item.get("type", "")),
        str(item["embedding"]),
    )


def _empty() -> dict[str, Any]:
    return {"format": _FORMAT, "seq": 0, "annotations": {}, "deleted": [], "exemplars": []}


def _problem(data: Any) -> str | None:
    """What makes `data` not a store of this format, or None."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if data.get("format") != _FORMAT:
        return f"format {data.get('format')!r}, not {_FORMAT}"
    if not isinstance(data.get("seq"), int):
        return "no integer 'seq'"
    if not isinstance(data.get("annotations"), dict):
        return "no 'annotations' object"
    if not isinstance(data.get("deleted", []), list):
        return "'deleted' is not a list"
    items = data.get("exemplars")
    if not isinstance(items, list):
        return "no 'exemplars' list"
    for i, item in enumerate(items):
        if not isinstance(item, dict) or any(k not in item for k in _EXEMPLAR_KEYS):
            return f"exemplar {i} lacks one of {', '.join(_EXEMPLAR_KEYS)}"
        try:
            _decode(item["embedding"])
        except (TypeError, ValueError) as exc:
            return f"exemplar {i} has an undecodable embedding ({exc})"
    return None


def _newer(stored: Any, incoming: Any) -> bool:
    """Whether the stored `updated_at` is strictly newer than the incoming one (ISO 8601 times;
    anything that does not parse compares as not newer, so the incoming version is kept)."""
    try:
        return datetime.fromisoformat(str(stored)) > datetime.fromisoformat(str(incoming))
    except (TypeError, ValueError):
        return False


class ExemplarStore:
    """Per-project, per-label exemplar embeddings persisted as JSON files under `root`."""

    def __init__(self, root: str | os.PathLike[str], max_per_label: int) -> None:
        if max_per_label < 1:
            raise ValueError("max_per_label must be >= 1")
        self.root = Path(root)
        self.max_per_label = max_per_label
        self._cache: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
        self._lock = threading.Lock()  # guards the cache and in-process writers

    # ---- files
    def _path(self, project: Any) -> Path:
        return self.root / f"{project_key(project)}.json"

    @contextlib.contextmanager
    def _write_lock(self, project: Any) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / f"{project_key(project)}.lock"
        with self._lock, open(lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self, project: Any, for_write: bool = False) -> dict[str, Any]:
        """The project's store (empty when there is none). A file that cannot be read as a
        store is logged and treated as empty; `for_write` (under the write lock) moves it aside
        first, so that the write does not destroy it."""
        path = self._path(project)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return _empty()
        stamp = (stat.st_mtime_ns, stat.st_ino)
        key = project_key(project)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:  # permissions, I/O: the file may be fine, never move it aside
            if for_write:
                raise
            logger.error("exemplar store %s cannot be read (%s); using no exemplars", path, exc)
            return _empty()
        try:
            data = json.loads(text)
            problem = _problem(data)
        except (ValueError, RecursionError) as exc:
            problem = f"unreadable JSON ({exc})"
        if problem is not None:
            if for_write:
                aside = path.with_name(f"{path.name}.unreadable-{time.time_ns()}")
                os.replace(path, aside)
                logger.error("exemplar store %s: %s; moved to %s", path, problem, aside.name)
            else:
                logger.error("exemplar store %s: %s; treating it as empty", path, problem)
            return _empty()
        data.setdefault("deleted", [])
        self._cache[key] = (stamp, data)
        return data

    def _write(self, project: Any, data: dict[str, Any]) -> None:
        path = self._path(project)
        write_json_atomic(path, data)

    def _bound(self, data: dict[str, Any]) -> None:
        by_label: dict[str, list[dict[str, Any]]] = {}
        for item in data["exemplars"]:
            by_label.setdefault(item["label"], []).append(item)
        keep: set[int] = set()
        for items in by_label.values():
            items.sort(key=lambda it: it["seq"], reverse=True)
            keep.update(it["seq"] for it in items[: self.max_per_label])
        data["exemplars"] = [it for it in data["exemplars"] if it["seq"] in keep]

    # ---- writes
    def replace_annotation(
        self,
        project: Any,
        annotation_id: Any,
        exemplars: Iterable[LabelEmbedding],
        task_id: Any = None,
        updated_at: str | None = None,
    ) -> bool:
        """Store `exemplars` as annotation `annotation_id`'s, replacing what it had before.

        Returns False, storing nothing, when the annotation was deleted or is already stored
        with a newer `updated_at` (a webhook that arrived late)."""
        ann = str(annotation_id)
        with self._write_lock(project):
            data = json.loads(json.dumps(self._read(project, for_write=True)))  # a private copy
            if ann in data["deleted"]:
                logger.info("annotation %s was deleted; its late update is not stored", ann)
                return False
            stored = data["annotations"].get(ann, {}).get("updated_at")
            if _newer(stored, updated_at):
                logger.info(
                    "annotation %s is stored at %s; its older version %s is not",
                    ann,
                    stored,
                    updated_at,
                )
                return False
            new = [
                {
                    "label": ex.label,
                    "annotation": ann,
                    "task": task_id,
                    "region": ex.region,
                    "type": ex.type,
                    "embedding": _encode(ex.embedding),
                }
                for ex in exemplars
            ]
            old = [it for it in data["exemplars"] if it["annotation"] == ann]
            record = {"updated_at": updated_at, "task": task_id}
            if sorted(map(_content, old)) == sorted(map(_content, new)):
                # the same exemplars (a webhook delivered again, an edit outside the regions):
                # they keep their place, and the store's content and version stay the same
                if data["annotations"].get(ann) == record:
                    return False
                data["annotations"][ann] = record
                self._write(project, data)
                return True
            data["exemplars"] = [it for it in data["exemplars"] if it["annotation"] != ann]
            for item in new:
                data["seq"] += 1
                data["exemplars"].append({**item, "seq": data["seq"]})
            data["annotations"][ann] = record
            self._bound(data)
            self._write(project, data)
            return True

    def remove_annotations(
        self, project: Any, annotation_ids: Iterable[Any], deleted: bool = False
    ) -> int:
        """Forget the exemplars of these annotations; returns how many exemplars went.

        `deleted`: the annotations no longer exist in Label Studio, so a late webhook must not
        bring them back (a cancelled annotation may be submitted again: not `deleted`)."""
        gone = {str(a) for a in annotation_ids}
        with self._write_lock(project):
            data = json.loads(json.dumps(self._read(project, for_write=True)))
            before = len(data["exemplars"])
            data["exemplars"] = [it for it in data["exemplars"] if it["annotation"] not in gone]
            removed = before - len(data["exemplars"])
            known = gone & set(data["annotations"])
            for ann in known:
                del data["annotations"][ann]
            fresh = sorted(gone - set(data["deleted"])) if deleted else []
            data["deleted"] = (data["deleted"] + fresh)[-_MAX_DELETED:]
            if removed or known or fresh:
                self._write(project, data)
            return removed

    # ---- reads
    def known_annotation(self, project: Any, annotation_id: Any, updated_at: str | None) -> bool:
        """Whether this annotation was stored at this `updated_at` (so it need not be redone)."""
        info = self._read(project)["annotations"].get(str(annotation_id))
        return info is not None and updated_at is not None and info.get("updated_at") == updated_at

    def annotation_ids(self, project: Any) -> set[str]:
        return set(self._read(project)["annotations"])

    def embeddings(self, project: Any) -> dict[str, np.ndarray]:
        """label -> (N, D) float32 exemplar embeddings, newest last."""
        out: dict[str, list[np.ndarray]] = {}
        for item in sorted(self._read(project)["exemplars"], key=lambda it: it["seq"]):
            out.setdefault(item["label"], []).append(_decode(item["embedding"]))
        return {label: np.stack(vecs) for label, vecs in out.items()}

    def counts(self, project: Any) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self._read(project)["exemplars"]:
            counts[item["label"]] = counts.get(item["label"], 0) + 1
        return counts

    def version(self, project: Any) -> str:
        """`ex0` for none, else `ex<count>-<hash>` of the store's content (labels, annotations,
        embeddings; not the order they were stored in): the same webhook delivered twice leaves
        it as it was, so Label Studio is not told to predict every task again."""
        items = self._read(project)["exemplars"]
        if not items:
            return "ex0"
        digest = hashlib.sha1()
        for line in sorted(
            f"{it['label']}\x1f{it['annotation']}\x1f{it['embedding']}" for it in items
        ):
            digest.update(line.encode() + b"\x1e")
        return f"ex{len(items)}-{digest.hexdigest()[:8]}"
