"""`clipseg-label predict` as one library call: inputs, labels and settings in, outputs written.

The model side is the backend's own (`backend.model.CLIPSegBackend.predict_images`), so the CLI
and the server give the same results for the same image, label config and settings: labels from
``--labels`` become a generated label config with one labels control (brush, polygon or
rectangle) and go through the same parser (`backend.label_config`) as a project's config.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from backend.batch.predict import (
    LABEL_CONFIG_FILE,
    RunSummary,
    make_progress,
    run_predict,
)
from backend.batch.sources import SourceReader, collect_sources, task_image_value
from backend.batch.state import fingerprint
from backend.controls import NOTHING_TO_PREDICT, RESULT_OPTIONS
from backend.errors import LabelConfigError, Words, environment_words
from backend.label_config import ControlSpec, parse_label_config
from backend.model import CLIPSegBackend
from backend.segmenter import ImagePrediction
from backend.settings import Settings

logger = logging.getLogger(__name__)


def label_config_for(labels: Sequence[str], result_type: str = "brush") -> str:
    """A Label Studio label config with one ``<Image name="image" value="$image"/>`` and one
    labels control named ``label`` holding ``labels``, of the tag of ``result_type`` (a
    `backend.controls.RESULT_OPTIONS` key: brush, polygon, rectangle)."""
    names = [lab.strip() for lab in labels]
    if not names or any(not n for n in names):
        raise LabelConfigError(f"--labels needs non-empty comma-separated names, got {labels!r}")
    if len(set(names)) != len(names):
        raise LabelConfigError(f"--labels has duplicates: {names}")
    if result_type not in RESULT_OPTIONS:
        raise LabelConfigError(f"unknown result type {result_type!r}; use {sorted(RESULT_OPTIONS)}")
    tag = RESULT_OPTIONS[result_type]
    items = "".join(f"<Label value={quoteattr(n)}/>" for n in names)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<{tag} name="label" toName="image">{items}</{tag}></View>'
    )


class BackendAnnotator:
    """The `Annotator` of a batch: `CLIPSegBackend.predict_images` (the batch goes through the
    vision encoder together) for the parsed controls, with the exemplars of ``project`` from the
    backend's store when one is given."""

    def __init__(
        self, backend: CLIPSegBackend, controls: Sequence[ControlSpec], project: Any = None
    ) -> None:
        self.backend = backend
        self.controls = list(controls)
        self.stored = backend.store.embeddings(project) if project is not None else {}
        self.model_version = backend.model_version(project)
        labels: dict[str, None] = {}
        for control in self.controls:
            for lab in control.labels:
                labels.setdefault(lab.value, None)
        self.labels = tuple(labels)

    def annotate(self, images: Sequence[np.ndarray]) -> list[ImagePrediction]:
        return self.backend.predict_images(images, self.controls, self.stored)


def load_controls(
    labels: Sequence[str] | None, label_config: Path | None, result_type: str, threshold: float
) -> tuple[str, tuple[ControlSpec, ...]]:
    """(label config text, its controls) from ``--labels`` or ``--label-config``."""
    if label_config is not None:
        try:
            config = Path(label_config).read_text(encoding="utf-8")
        except OSError as exc:
            raise LabelConfigError(f"cannot read the label config {label_config}: {exc}") from exc
    elif labels:
        config = label_config_for(labels, result_type)
    else:
        raise LabelConfigError("give --labels or --label-config")
    return config, parse_label_config(config, threshold)


def predict(
    inputs: Sequence[str],
    *,
    settings: Settings,
    out_dir: str | Path,
    labels: Sequence[str] | None = None,
    label_config: Path | None = None,
    result_type: str = "brush",
    batch_size: int = 4,
    image_key: str | None = None,
    image_root: str | None = None,
    image_root_url: str = "",
    recursive: bool = False,
    overlays: bool = False,
    quiet: bool = False,
    exemplars_project: Any = None,
    backend: CLIPSegBackend | None = None,
    words: Words = environment_words,
) -> RunSummary:
    """Predict every image of ``inputs`` into ``out_dir`` (see `backend.batch.predict`).

    Usage problems (no input, a label config without usable controls, a path outside
    ``image_root``) raise before the model loads. ``backend`` lets a caller reuse a loaded model.
    """
    config, all_controls = load_controls(labels, label_config, result_type, settings.threshold)
    sources = collect_sources(inputs, recursive=recursive, image_key=image_key)
    if not sources:
        raise LabelConfigError("no images in the inputs")

    def image_value(src: Any) -> str:
        return task_image_value(src, image_root, image_root_url)

    for src in sources:
        image_value(src)  # a path outside --image-root is a usage error, found before any work
    if backend is None:
        backend = CLIPSegBackend.load(settings, words)
    controls = [c for c in all_controls if c in backend.controls(config)]
    if not controls:
        raise LabelConfigError(NOTHING_TO_PREDICT)
    key = image_key or controls[0].value_key
    annotator = BackendAnnotator(backend, controls, exemplars_project)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / LABEL_CONFIG_FILE).write_text(config + "\n", encoding="utf-8")
    run_fp = fingerprint(
        {
            "model_version": annotator.model_version,
            "controls": [asdict(c) for c in controls],
            "region_mode": settings.region_mode,
            "min_region_area": settings.min_region_area,
            "polygon_tolerance": settings.polygon_tolerance,
            "exemplar_weight": settings.exemplar_weight,
            "uncertain": [settings.uncertain_low, settings.uncertain_high],
            "score_mode": settings.score_mode,
        }
    )
    progress = make_progress(len(sources), quiet)
    try:
        return run_predict(
            sources,
            annotator,
            SourceReader(settings, sources),
            out,
            run_fingerprint=run_fp,
            image_value=image_value,
            batch_size=batch_size,
            overlays=overlays,
            score_mode=settings.score_mode,
            image_key=key,
            progress=progress,
        )
    finally:
        progress.close()
