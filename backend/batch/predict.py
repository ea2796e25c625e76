"""`clipseg-label predict` as one library call, and its loop: inputs, labels and settings in,
outputs written.

`predict` is the entry point: the labels (``--labels`` become a generated label config with one
labels control of the ``--type``'s tag; a ``--label-config`` is read) go through the same parser
(`backend.label_config`) as a project's config, and the model side is the backend's own
(`backend.model.CLIPSegBackend.predict_images`), so the CLI and the server give the same
results for the same image, label config and settings.

`run_predict` is the loop: it reads images in batches, hands them to an `Annotator` (the model
side: image -> Label Studio results, regions with exact masks, uncertainty), stores one record
per image in the `StateStore` as soon as it is done, skips images whose record exists, and
collects failures (unreadable image, bad URL, malformed task) without stopping. The outputs
are rebuilt from the records at the end (`backend.batch.outputs`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from xml.sax.saxutils import quoteattr

import numpy as np

from backend.batch.outputs import (
    LABEL_CONFIG_FILE,
    OVERLAY_DIR,
    Failure,
    image_record,
    overlay_name,
    write_outputs,
)
from backend.batch.sources import ImageSource, SourceReader, collect_sources, task_image_value
from backend.batch.state import StateStore, fingerprint
from backend.controls import NOTHING_TO_PREDICT, RESULT_OPTIONS
from backend.errors import (
    LabelConfigError,
    LabelStudioError,
    SourceError,
    Words,
    environment_words,
)
from backend.formats.coco import rle_to_mask
from backend.images import ImageError
from backend.label_config import ControlSpec, parse_label_config
from backend.model import CLIPSegBackend
from backend.overlays import label_colors, overlay_png, save_overlay
from backend.segmenter import ImagePrediction, Resolvers
from backend.settings import Settings

if TYPE_CHECKING:
    from backend.batch.ray_engine import RayOptions

logger = logging.getLogger(__name__)

#: The engines of `predict`: "local" (this process, the default) and "ray" (Ray Data; the
#: optional extra ``ray``).
ENGINES = ("local", "ray")


# ------------------------------------------------------------------------------- entry point
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
    engine: str = "local",
    ray_options: RayOptions | None = None,
    project: int | None = None,
    client: Any = None,
    push: bool = False,
) -> RunSummary:
    """Predict every image of ``inputs`` into ``out_dir``: ``engine`` "local" runs
    `run_predict` in this process, "ray" `backend.batch.ray_engine.run_predict_ray` on a Ray
    cluster (``ray_options``; the driver then loads the model on the CPU only to resolve the
    controls and model_version, the actors load it on their devices).

    Usage problems (no input, a label config without usable controls, a path outside
    ``image_root``, ray not installed) raise before the model loads. ``backend`` lets a caller
    reuse a loaded model.

    With ``project`` (and ``client``, label-studio-sdk's), the inputs are that project's tasks
    without a prediction of this model_version (`backend.batch.project`), and with ``push``
    their predictions are imported into it in batches as they are done.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {ENGINES}")
    if engine == "ray":
        from backend.batch import ray_engine

        ray_engine.require_ray()
        (ray_options or ray_engine.RayOptions()).check()
    config, all_controls = load_controls(labels, label_config, result_type, settings.threshold)
    if project is not None and (inputs or client is None):
        raise SourceError("a project is the input: give no INPUT, and a Label Studio client")
    if push and project is None:
        raise SourceError("--push needs --project")
    sources = (
        []
        if project is not None
        else collect_sources(inputs, recursive=recursive, image_key=image_key)
    )
    if project is None and not sources:
        raise SourceError("no images in the inputs")

    def image_value(src: ImageSource) -> str:
        return task_image_value(src, image_root, image_root_url)

    for src in sources:
        image_value(src)  # a path outside --image-root is a usage error, found before any work
    if backend is None:
        # Ray's actors predict on their own devices: the driver's copy only answers questions
        backend = CLIPSegBackend.load(
            replace(settings, device="cpu") if engine == "ray" else settings, words
        )
    controls = [c for c in all_controls if c in backend.controls(config)]
    if not controls:
        raise LabelConfigError(NOTHING_TO_PREDICT)
    key = image_key or controls[0].value_key
    if project is not None and exemplars_project is None:
        exemplars_project = project  # its stored exemplars and model_version, as the backend's
    annotator = BackendAnnotator(backend, controls, exemplars_project)
    already = 0
    if project is not None:
        from backend.batch.project import project_sources

        sources, already = project_sources(client, project, annotator.model_version, key)
        for src in sources:
            image_value(src)
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
    pusher = None
    if push:
        from backend.batch.project import PredictionPusher
        from backend.batch.state import StateStore

        pusher = PredictionPusher(client, project)
        pusher.resume(sources, StateStore(out, run_fp))  # saved before, never sent
    progress = make_progress(len(sources), quiet)
    run_kwargs: dict[str, Any] = {
        "on_record": pusher.add if pusher is not None else None,
        "run_fingerprint": run_fp,
        "image_value": image_value,
        "batch_size": batch_size,
        "overlays": overlays,
        "score_mode": settings.score_mode,
        "image_key": key,
        "progress": progress,
    }
    reader = SourceReader(settings, sources)
    try:
        if engine == "ray":
            from backend.batch.ray_engine import RayOptions, run_predict_ray

            summary = run_predict_ray(
                sources,
                annotator,
                reader,
                out,
                settings=settings,
                options=ray_options or RayOptions(),
                **run_kwargs,
            )
        else:
            summary = run_predict(sources, annotator, reader, out, **run_kwargs)
    finally:
        progress.close()
        if pusher is not None:
            pusher.close()  # what was saved goes to Label Studio, also after an interruption
    summary.already = already
    summary.pushed = pusher.report.created_predictions if pusher is not None else 0
    return summary


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


# ---------------------------------------------------------------------------------- the loop
class Progress(Protocol):
    """A progress bar as tqdm's: `update(n)` after n more images, `close()` at the end."""

    def update(self, n: int = 1) -> object: ...

    def close(self) -> None: ...


class Annotator(Protocol):
    """The model side of a batch: (H, W, 3) uint8 images in, one `ImagePrediction` each out
    (Label Studio results, regions with exact masks, uncertainty, confidence, per-label details;
    see `backend.model`)."""

    labels: Sequence[str]  # COCO categories, in order
    model_version: str

    def annotate(self, images: Sequence[np.ndarray]) -> list[ImagePrediction]: ...


class BackendAnnotator:
    """The `Annotator` of a batch: `CLIPSegBackend.predict_images` (the batch goes through the
    vision encoder together) for the parsed controls, with the exemplars and the serving learned
    state of ``project`` from the backend's stores when one is given (or ``stored``, label ->
    (N, D) embeddings, and ``resolvers``, control -> `RegionResolver`, as given)."""

    def __init__(
        self,
        backend: CLIPSegBackend,
        controls: Sequence[ControlSpec],
        project: Any = None,
        *,
        stored: dict[str, np.ndarray] | None = None,
        resolvers: Resolvers | None = None,
    ) -> None:
        self.backend = backend
        self.controls = list(controls)
        if stored is not None:  # resolved elsewhere (the Ray engine's driver)
            self.stored = stored
            self.resolvers = resolvers
        else:
            self.stored = backend.store.embeddings(project) if project is not None else {}
            state = backend.serving_state(project) if project is not None else None
            self.resolvers = state.resolvers if state is not None else None
        self.model_version = backend.model_version(project)
        labels: dict[str, None] = {}
        for control in self.controls:
            for lab in control.labels:
                labels.setdefault(lab.value, None)
        self.labels = tuple(labels)

    def annotate(self, images: Sequence[np.ndarray]) -> list[ImagePrediction]:
        return self.backend.predict_images(images, self.controls, self.stored, self.resolvers)


@dataclass
class RunSummary:
    """Counts of a run, and its failures."""

    total: int = 0
    done: int = 0  # predicted in this run
    skipped: int = 0  # already done in an earlier run (resume)
    already: int = 0  # --project: tasks that hold a prediction of this model_version already
    pushed: int = 0  # --push: predictions imported into the project
    failures: list[Failure] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


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
    progress: Progress | None = None,
    on_record: Callable[[ImageSource, dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Predict every source not done yet, store each record, and rebuild the outputs: the local
    engine (the Ray engine, `backend.batch.ray_engine`, runs the same steps on a cluster).

    ``image_value`` gives each output task's ``data[image_key]`` (see `task_image_value`);
    ``score_mode`` picks the prediction's top-level score ("confidence" or "uncertainty").
    ``progress`` is a tqdm-like bar or None; ``on_record(source, record)`` is called after each
    record is saved (``--push``). Returns the summary; the caller decides the exit code
    (failures -> 1).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    run = start_run(sources, out_dir, run_fingerprint, annotator.labels, progress, on_record)
    colors = run.colors if overlays else None
    for batch in _batches(run.todo, batch_size):
        loaded = []
        for src in batch:
            try:
                loaded.append((src, reader.read(src).array))
            except (ImageError, LabelStudioError) as exc:  # one bad task, not the batch
                run.add(Outcome(src, failure=image_failure(src, str(exc))))
        for outcome in predict_batch(annotator, loaded, score_mode=score_mode, colors=colors):
            run.add(outcome)
    return finish_run(run, sources, reader, overlays, image_value, image_key)


@dataclass
class Outcome:
    """What one image gave: its state record (`image_record`; with its overlay picture as PNG
    bytes when overlays are drawn), or the failure that stopped it."""

    source: ImageSource
    record: dict[str, Any] | None = None
    failure: Failure | None = None
    overlay_png: bytes | None = None


def predict_batch(
    annotator: Annotator,
    loaded: Sequence[tuple[ImageSource, np.ndarray]],
    *,
    score_mode: str = "confidence",
    colors: dict[str, tuple[int, int, int]] | None = None,
) -> list[Outcome]:
    """The model's work on one batch of decoded images, the same in both engines: predictions
    (`_annotate`: one image the model cannot take is a failure, the others are done), records,
    and with ``colors`` the overlay pictures. ``loaded`` holds (source, (H, W, 3) uint8 RGB)
    pairs; one `Outcome` each, in order."""
    outcomes = []
    for (src, array), prediction in _annotate(annotator, list(loaded)):
        if isinstance(prediction, str):
            outcomes.append(Outcome(src, failure=image_failure(src, prediction)))
            continue
        record = image_record(src, array.shape[:2], prediction, annotator.model_version, score_mode)
        png = None
        if colors is not None:
            png = overlay_png(array, [(r.label, r.mask) for r in prediction.regions], colors)
        outcomes.append(Outcome(src, record=record, overlay_png=png))
    return outcomes


@dataclass
class Run:
    """A run in progress on the driver: its store, summary and bar; `add` takes each
    `Outcome` as it arrives (from this process or from Ray workers)."""

    out: Path
    store: StateStore
    summary: RunSummary
    labels: Sequence[str]  # COCO categories, in order
    colors: dict[str, tuple[int, int, int]]  # overlay color of each label
    todo: list[ImageSource]
    progress: Progress | None = None
    on_record: Callable[[ImageSource, dict[str, Any]], None] | None = None  # after each save

    def add(self, outcome: Outcome) -> None:
        """Store the record (and overlay) of a done image at once, or note its failure."""
        src = outcome.source
        if outcome.record is None:
            if outcome.failure is not None:
                self.summary.failures.append(outcome.failure)
        else:
            record = outcome.record
            if outcome.overlay_png is not None:
                name = overlay_name(src.key, src.ref)
                path = self.out / OVERLAY_DIR / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(outcome.overlay_png)
                record = {**record, "overlay": f"{OVERLAY_DIR}/{name}"}
            self.store.save(src.key, record)
            self.summary.done += 1
            if self.on_record is not None:
                self.on_record(src, record)
        if self.progress is not None:
            self.progress.update(1)


def start_run(
    sources: Sequence[ImageSource],
    out_dir: str | Path,
    run_fingerprint: str,
    labels: Sequence[str],
    progress: Progress | None = None,
    on_record: Callable[[ImageSource, dict[str, Any]], None] | None = None,
) -> Run:
    """The run's state: the output folder, the sources already done by an earlier run with
    the same settings (skipped: resume) and those to do (`Run.todo`, in input order)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = StateStore(out, run_fingerprint)
    summary = RunSummary(total=len(sources))
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
    return Run(out, store, summary, labels, label_colors(labels), todo, progress, on_record)


def finish_run(
    run: Run,
    sources: Sequence[ImageSource],
    reader: SourceReader,
    overlays: bool,
    image_value: Callable[[ImageSource], str],
    image_key: str,
) -> RunSummary:
    """Draw the overlays missing from earlier runs, rebuild the outputs from every record."""
    summary = run.summary
    if overlays:
        _missing_overlays(sources, run.store, reader, run.out, run.colors, summary)
    summary.outputs = write_outputs(
        sources, run.store, run.out, run.labels, summary.failures, image_value, image_key
    )
    return summary


def _annotate(
    annotator: Annotator, loaded: list[tuple[ImageSource, np.ndarray]]
) -> list[tuple[tuple[ImageSource, np.ndarray], ImagePrediction | str]]:
    """Annotate a batch; if the model fails on it, image by image, so that one image the model
    cannot take (an error, not a crash of the process) is a failure (its error message in place
    of the prediction) and the others are done."""
    if not loaded:
        return []
    try:
        outcomes = annotator.annotate([array for _, array in loaded])
        return list(zip(loaded, outcomes, strict=True))
    except Exception as exc:  # retried one by one below; each failure is logged and reported
        if len(loaded) == 1:
            logger.debug("prediction failed for %s", loaded[0][0].ref, exc_info=True)
            return [(loaded[0], f"prediction failed: {type(exc).__name__}: {exc}")]
    done = []
    for item in loaded:
        done.extend(_annotate(annotator, [item]))
    return done


def image_failure(src: ImageSource, error: str) -> Failure:
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
        except (ImageError, LabelStudioError) as exc:  # one bad task, not the batch
            summary.failures.append(image_failure(src, f"overlay: {exc}"))
            continue
        name = overlay_name(src.key, src.ref)
        pairs = [(r["label"], rle_to_mask(r["segmentation"])) for r in record["regions"]]
        save_overlay(out / OVERLAY_DIR / name, image, pairs, colors)
        record["overlay"] = f"{OVERLAY_DIR}/{name}"
        store.save(src.key, record)


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def make_progress(total: int, quiet: bool, desc: str = "predict") -> Progress:
    """A tqdm bar on stderr (rate and ETA), disabled with ``quiet`` or when stderr is no TTY."""
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=disable, dynamic_ncols=True)


__all__ = [
    "Annotator",
    "BackendAnnotator",
    "Failure",
    "RunSummary",
    "label_config_for",
    "load_controls",
    "predict",
    "run_predict",
    "task_image_value",
]
