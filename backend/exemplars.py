"""The exemplar store: embeddings of annotators' regions, per project and label, under MODEL_DIR.

Layout: `<root>/<project id>.json`, where the caller picks `root` per model (embeddings of one
checkpoint mean nothing to another), e.g. `MODEL_DIR/exemplars/<weights hash>/`. One file per
project holds every label's exemplars:

    {"format": 1, "seq": <last sequence number>,
     "annotations": {"<annotation id>": {"updated_at": ..., "task": ...}},
     "exemplars": [{"label", "annotation", "task", "region", "type", "seq", "embedding"}, ...]}

with embeddings as base64 of little-endian float32. Writes are atomic (a temporary file, then
`os.replace`) and serialised across processes by an `fcntl` lock, so gunicorn workers and
restarts see either the old or the new set, never half of one. Readers reload a project's file
when it changes on disk. Each label keeps its newest CLIPSEG_MAX_EXEMPLARS_PER_LABEL exemplars;
storing an annotation again replaces its exemplars.
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend.atomic import write_json_atomic

logger = logging.getLogger(__name__)

_FORMAT = 1
_PROJECT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Exemplar:
    """One annotator region turned into a conditional embedding of its label."""

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
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def _empty() -> dict[str, Any]:
    return {"format": _FORMAT, "seq": 0, "annotations": {}, "exemplars": []}


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

    def _read(self, project: Any) -> dict[str, Any]:
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
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.error("exemplar store %s is unreadable (%s); treating it as empty", path, exc)
            return _empty()
        if data.get("format") != _FORMAT:
            logger.error("exemplar store %s has unknown format %r", path, data.get("format"))
            return _empty()
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
        exemplars: Iterable[Exemplar],
        task_id: Any = None,
        updated_at: str | None = None,
    ) -> None:
        """Store `exemplars` as annotation `annotation_id`'s, replacing what it had before."""
        ann = str(annotation_id)
        with self._write_lock(project):
            data = json.loads(json.dumps(self._read(project)))  # a private copy to modify
            data["exemplars"] = [it for it in data["exemplars"] if it["annotation"] != ann]
            for ex in exemplars:
                data["seq"] += 1
                data["exemplars"].append(
                    {
                        "label": ex.label,
                        "annotation": ann,
                        "task": task_id,
                        "region": ex.region,
                        "type": ex.type,
                        "seq": data["seq"],
                        "embedding": _encode(ex.embedding),
                    }
                )
            data["annotations"][ann] = {"updated_at": updated_at, "task": task_id}
            self._bound(data)
            self._write(project, data)

    def remove_annotations(self, project: Any, annotation_ids: Iterable[Any]) -> int:
        """Forget the exemplars of these annotations; returns how many exemplars went."""
        gone = {str(a) for a in annotation_ids}
        with self._write_lock(project):
            data = json.loads(json.dumps(self._read(project)))
            before = len(data["exemplars"])
            data["exemplars"] = [it for it in data["exemplars"] if it["annotation"] not in gone]
            removed = before - len(data["exemplars"])
            known = gone & set(data["annotations"])
            for ann in known:
                del data["annotations"][ann]
            if removed or known:
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
        """`ex0` for none, else `ex<count>-<hash>`: changes whenever the project's set changes."""
        items = self._read(project)["exemplars"]
        if not items:
            return "ex0"
        digest = hashlib.sha1()
        for item in sorted(items, key=lambda it: it["seq"]):
            digest.update(f"{item['label']}\x1f{item['annotation']}\x1f{item['seq']}\x1e".encode())
            digest.update(item["embedding"].encode("ascii"))
        return f"ex{len(items)}-{digest.hexdigest()[:8]}"
