"""Build and inspect exemplar stores offline, in the layout the backend reads.

The backend keeps exemplars under ``MODEL_DIR/exemplars/<model_version base>/<project>.json``
(`backend.model.CLIPSegBackend.store`). `build_store` loads the same model, embeds the regions
of every annotation of a Label Studio export exactly as the backend's training does
(`CLIPSegBackend.exemplars_of`), and stores them per annotation (a rebuild replaces them).

Images: with ``images_root``, a task's reference is read from that folder:
``/data/local-files/?d=<path>`` -> ``<root>/<path>``; ``/data/upload/<p>/<name>`` ->
``<root>/upload/<p>/<name>`` (Label Studio's media folder layout); a plain relative path ->
``<root>/<path>``. Without it, references are fetched as the backend does (Label Studio URL and
API key for relative URLs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

from backend.batch.outputs import Failure
from backend.batch.predict import make_progress
from backend.errors import LabelStudioError, Words, environment_words
from backend.exemplars import ExemplarStore, project_key
from backend.images import ImageError
from backend.model import CLIPSegBackend
from backend.settings import Settings

logger = logging.getLogger(__name__)

_LOCAL = "/data/local-files/?d="


@dataclass
class BuildReport:
    """What a build stored, and what it could not."""

    store: Path
    annotations: int = 0
    exemplars: int = 0
    failures: list[Failure] = field(default_factory=list)


def local_reference(ref: str) -> str | None:
    """The path under an images root that a task's image reference names (None for URLs)."""
    parsed = urlparse(ref)
    if parsed.scheme in ("http", "https", "s3", "gs", "azure-blob"):
        return None
    if parsed.path.startswith("/data/local-files"):
        values = parse_qs(parsed.query).get("d") or [""]
        return values[-1].lstrip("/") or None
    if parsed.path.startswith("/data/upload/"):
        return "upload/" + parsed.path[len("/data/upload/") :]
    return ref.lstrip("/")


def _localise(task: dict[str, Any]) -> dict[str, Any]:
    """The task with every local-looking image reference rewritten to a local-files URL."""
    data = dict(task.get("data") or {})
    for key, value in data.items():
        if isinstance(value, str) and value:
            rel = local_reference(value)
            if rel is not None:
                data[key] = _LOCAL + quote(rel)
    return {**task, "data": data}


def _image_reference(task: dict[str, Any]) -> str:
    """The task's image reference for messages: ``data.image``, else its first string value."""
    data = task.get("data") or {}
    if isinstance(data.get("image"), str):
        return data["image"]
    values = [v for v in data.values() if isinstance(v, str) and v]
    return values[0] if values else f"task {task.get('id')}"


def build_store(
    tasks: Sequence[dict[str, Any]],
    *,
    settings: Settings,
    project: Any,
    images_root: str | None = None,
    label_config: str | None = None,
    quiet: bool = False,
    backend: CLIPSegBackend | None = None,
    words: Words = environment_words,
) -> BuildReport:
    """Embed the regions of every (not cancelled) annotation of ``tasks`` into the store of
    ``project`` under ``settings.model_dir``. A task whose image cannot be read is a failure;
    the others are stored."""
    key = project_key(project)
    if images_root is not None:
        root = Path(images_root)
        if not root.is_dir():
            raise ValueError(f"--images-root {images_root} is not a folder")
        settings = replace(settings, local_files_document_root=str(root.resolve()))
    if backend is None:
        backend = CLIPSegBackend.load(settings, words)
        backend.images.reveal_paths = (
            True  # the operator's own run: say where files were looked for
        )
    report = BuildReport(store=backend.store.root)
    progress = make_progress(len(tasks), quiet, desc="exemplars")
    try:
        for original in tasks:
            progress.update(1)
            task = _localise(original) if images_root is not None else original
            for annotation in task.get("annotations") or []:
                ann_id = annotation.get("id")
                if ann_id is None or annotation.get("was_cancelled"):
                    continue
                try:
                    exemplars = backend.exemplars_of(
                        task, annotation.get("result") or [], label_config, key
                    )
                except (ImageError, LabelStudioError) as exc:
                    ref = _image_reference(original)  # as in the export, not as rewritten
                    report.failures.append(Failure(ref, "export", str(exc), task.get("id")))
                    break  # the task's image is unreadable: its other annotations are too
                backend.store.replace_annotation(
                    key,
                    ann_id,
                    exemplars,
                    task_id=task.get("id"),
                    updated_at=annotation.get("updated_at"),
                )
                report.annotations += 1
                report.exemplars += len(exemplars)
    finally:
        progress.close()
    return report


def describe_store(model_dir: str | Path, project: Any = None) -> list[dict[str, Any]]:
    """Every (model, project) store under ``MODEL_DIR/exemplars``: counts per label, version."""
    base = Path(model_dir) / "exemplars"
    if not base.is_dir():
        raise ValueError(f"no exemplar stores in {model_dir} (no {base} folder)")
    want = project_key(project) if project is not None else None
    out = []
    for model_root in sorted(p for p in base.iterdir() if p.is_dir()):
        store = ExemplarStore(model_root, max_per_label=1 << 30)
        for path in sorted(model_root.glob("*.json")):
            key = path.stem
            if want is not None and key != want:
                continue
            out.append(
                {
                    "model": model_root.name,
                    "project": key,
                    "version": store.version(key),
                    "annotations": len(store.annotation_ids(key)),
                    "labels": dict(sorted(store.counts(key).items())),
                }
            )
    return out


def format_listing(listing: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of `describe_store`'s output."""
    if not listing:
        return "no exemplars"
    lines = []
    for entry in listing:
        lines.append(
            f"{entry['model']}  project {entry['project']}  {entry['version']}  "
            f"({entry['annotations']} annotations)"
        )
        for label, count in entry["labels"].items():
            lines.append(f"    {count:>5}  {label}")
    return "\n".join(lines)
