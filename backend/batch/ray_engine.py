"""`clipseg-label predict --engine ray`: the local engine's run on a Ray cluster (Ray Data).

The driver does what the local engine does around the model (`backend.batch.predict`:
`start_run` finds what an earlier run already did, `Run.add` saves each record as it arrives,
`finish_run` rebuilds tasks.json, coco.json and failures.json from the records); the model's work
runs as one streaming Ray Data pipeline:

1. rows: one per model batch, the sources not done yet cut into batches of ``batch_size`` in
   input order, exactly as the local engine cuts them (the images of a batch go through the
   vision encoder together, and a batch's composition changes the last bits of the floats:
   the same batches give bitwise the same masks and scores);
2. `_decode` (Ray tasks, in parallel): read and decode each image of the row (`SourceReader`, the
   local engine's reader); an image that cannot be read becomes its error message;
3. `RayAnnotator` (`map_batches` over an actor pool of ``num_workers`` actors, ``gpus_per_worker``
   GPUs and ``cpus_per_worker`` CPUs each): each actor loads the model once
   (`CLIPSegBackend.load`, the local engine's loading) and runs `predict_batch`, the local
   engine's per-batch code (predictions, regions, Label Studio results, COCO RLE, overlays);
   it returns one small row per image: the record as JSON, the overlay as PNG bytes, or the
   error;
4. the driver iterates the rows (`iter_rows`, streaming: no mask is ever held there, only the
   RLE records of the rows in flight) into `Run.add`.

Faults (see docs/cli.md, "Ray engine"): an actor that dies is restarted by Ray
(``max_restarts``) and the batch it held is retried (``max_task_retries``), a decode task whose
worker dies is retried (``max_retries``), each ``RayOptions.max_retries`` times; one bad image is
a failure record as in the local engine; records are saved as they arrive, so an interrupted run,
run again, resumes.

``ray`` is an optional dependency (``pip install "clipseg-label-studio[ray]"``): this module
imports it only inside its functions, and `require_ray` says how to install it.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.batch.sources import ImageSource, SourceReader
from backend.errors import EngineError, LabelStudioError
from backend.images import ImageError
from backend.label_config import ControlSpec
from backend.settings import Settings

if TYPE_CHECKING:  # the decode tasks import this module: no torch there (backend.batch.predict)
    from backend.batch.predict import Annotator, BackendAnnotator, Outcome, Progress, RunSummary
    from backend.segmenter import Resolvers

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "clipseg-label-studio[ray]"'


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs.

    ``address``: None starts a local Ray on this machine for the run (and stops it after);
    ``"auto"`` joins the cluster this machine belongs to (``ray start --head`` / ``--address``);
    ``"ray://HOST:10001"`` connects a Ray client to a remote head. A Ray already initialised in
    this process (``ray.init`` before the call) is used as it is.
    """

    address: str | None = None
    num_workers: int = 1  # inference actors; each loads the model once
    gpus_per_worker: float = 0.0  # GPUs per actor (0: CPU inference)
    cpus_per_worker: float = 1.0  # CPUs per actor; torch threads: this rounded up
    decode_cpus: float = 0.5  # CPUs per decode task (read + decode one batch of images)
    max_retries: int = 3  # actor restarts, batch retries on a restarted actor, decode retries
    actor_class: type[RayAnnotator] | None = None  # None: RayAnnotator (tests give a subclass)

    def check(self) -> None:
        """ValueError naming the option at fault."""
        if self.num_workers < 1:
            raise ValueError(f"--num-workers must be >= 1, got {self.num_workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if self.max_retries < 0:
            raise ValueError(f"--max-retries must be >= 0, got {self.max_retries}")


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or `EngineError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra installs ray[data]: pyarrow, pandas)
    except ImportError as exc:
        raise EngineError(
            f"--engine ray needs Ray Data, which is not installed ({exc}); install it with "
            f"{INSTALL_HINT}, or use the default --engine local"
        ) from exc
    return ray


# ------------------------------------------------------------------------------ the pipeline
def _source_dict(src: ImageSource) -> dict[str, Any]:
    return asdict(src)


def _decode(row: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A Ray task: read and decode the images of one batch row with the local engine's reader.

    Images travel as raw bytes and shapes (Arrow binary and integer lists, no pickling): an
    image that cannot be read has empty bytes and its error message.
    """
    reader = SourceReader(settings)  # the driver's settings already allow the inputs' hosts
    pixels, shapes, errors = [], [], []
    for item in json.loads(row["sources"]):
        try:
            array = reader.read(ImageSource(**item)).array
        except (ImageError, LabelStudioError) as exc:  # one bad task, not the batch
            pixels.append(b"")
            shapes.append([0, 0, 0])
            errors.append(str(exc))
            continue
        array = np.ascontiguousarray(array, dtype=np.uint8)
        pixels.append(array.tobytes())
        shapes.append(list(array.shape))
        errors.append("")
    return {**row, "pixels": pixels, "shapes": shapes, "errors": errors}


class RayAnnotator:
    """The inference actor: loads the model once, then runs `predict_batch` on each batch row.

    ``settings`` are the run's (the device: CLIPSEG_DEVICE / ``--device``, ``auto`` picks the
    actor's GPU when it has one); ``controls``, ``stored`` (label -> (N, D) exemplar
    embeddings), ``resolvers`` (the project's learned state) and ``model_version`` are what the
    driver resolved, so that every actor
    predicts the same thing without reading the driver's files. An actor whose checkpoint is
    not the driver's (another file at the same path on that node) refuses to start.
    """

    def __init__(
        self,
        settings: Settings,
        controls: Sequence[ControlSpec],
        stored: dict[str, np.ndarray],
        model_version: str,
        score_mode: str,
        colors: dict[str, tuple[int, int, int]] | None,
        threads: int,
        resolvers: Resolvers | None = None,
    ) -> None:
        import torch

        from backend.batch.predict import BackendAnnotator
        from backend.model import CLIPSegBackend

        torch.set_num_threads(max(1, threads))
        backend = CLIPSegBackend.load(settings)
        if not model_version.startswith(f"{backend.base_version}+"):
            raise RuntimeError(
                f"this Ray worker loaded {backend.base_version}, the driver {model_version}: "
                "give every node the same checkpoint (a hub id, or the same files)"
            )
        self.annotator = BackendAnnotator(backend, controls, stored=stored, resolvers=resolvers)
        self.annotator.model_version = model_version
        self.score_mode = score_mode
        self.colors = colors

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        """Batch rows in (``batch_size=1``: one model batch), one row per image out."""
        out: dict[str, list[Any]] = {"index": [], "record": [], "error": [], "overlay": []}
        for first, sources, pixels, shapes, errors in zip(
            batch["first"],
            batch["sources"],
            batch["pixels"],
            batch["shapes"],
            batch["errors"],
            strict=True,
        ):
            loaded, positions = [], {}
            for i, (item, data, shape, error) in enumerate(
                zip(json.loads(sources), pixels, shapes, errors, strict=True)
            ):
                src = ImageSource(**item)
                if error:
                    self._emit(out, int(first) + i, error=error)
                    continue
                array = np.frombuffer(data, np.uint8).reshape([int(n) for n in shape])
                positions[src.key] = int(first) + i
                loaded.append((src, array))
            for outcome in self.predict(loaded):
                index = positions[outcome.source.key]
                if outcome.record is None:
                    self._emit(out, index, error=outcome.failure.error if outcome.failure else "")
                else:
                    self._emit(out, index, record=outcome.record, overlay=outcome.overlay_png)
        return out

    def predict(self, loaded: list[tuple[ImageSource, np.ndarray]]) -> list[Outcome]:
        """The local engine's per-batch code (a test subclass makes it fail on purpose)."""
        from backend.batch.predict import predict_batch

        return predict_batch(self.annotator, loaded, score_mode=self.score_mode, colors=self.colors)

    @staticmethod
    def _emit(
        out: dict[str, list[Any]],
        index: int,
        *,
        record: dict[str, Any] | None = None,
        error: str = "",
        overlay: bytes | None = None,
    ) -> None:
        out["index"].append(index)
        out["record"].append(json.dumps(record) if record is not None else "")
        out["error"].append(error)
        out["overlay"].append(overlay or b"")


def _batch_rows(todo: Sequence[ImageSource], batch_size: int) -> list[dict[str, Any]]:
    """One row per model batch: the index of its first source in ``todo`` and its sources."""
    rows = []
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        rows.append({"first": start, "sources": json.dumps([_source_dict(s) for s in chunk])})
    return rows


def build_dataset(
    todo: Sequence[ImageSource],
    *,
    reader_settings: Settings,
    settings: Settings,
    annotator: BackendAnnotator,
    options: RayOptions,
    batch_size: int,
    score_mode: str,
    colors: dict[str, tuple[int, int, int]] | None,
) -> Any:
    """The lazy Ray Dataset of the run (nothing runs until it is iterated): one output row per
    image of ``todo``: ``index`` (into ``todo``), ``record`` (JSON, or ""), ``error`` (or ""),
    ``overlay`` (PNG bytes, or b"")."""
    ray = require_ray()
    rows = _batch_rows(todo, batch_size)
    retries = options.max_retries
    threads = max(1, math.ceil(options.cpus_per_worker))
    with warnings.catch_warnings():
        # Ray 2.60 deprecates the retry keywords below (removed in 2.64, hence the extra's
        # upper bound) and offers no named parameter for them yet; its defaults retry forever,
        # which would loop on an image that kills the worker every time.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
        ds = ds.map(
            _decode,
            fn_kwargs={"settings": reader_settings},
            num_cpus=options.decode_cpus,
            max_retries=retries,
        )
        ds = ds.map_batches(
            options.actor_class or RayAnnotator,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.num_workers),
            fn_constructor_kwargs={
                "settings": settings,
                "controls": list(annotator.controls),
                "stored": annotator.stored,
                "resolvers": annotator.resolvers,
                "model_version": annotator.model_version,
                "score_mode": score_mode,
                "colors": colors,
                "threads": threads,
            },
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker or None,
            max_restarts=retries,
            max_task_retries=retries,
        )
    return ds


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of a Ray error's text (the user error under Ray's traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _connect(ray: Any, options: RayOptions) -> bool:
    """Initialise Ray unless this process already did; True when this call started it."""
    if ray.is_initialized():
        return False
    try:
        if options.address is None:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=options.address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EngineError(
            f"cannot start or reach Ray at {options.address or 'a new local cluster'}: {exc} "
            "(check --ray-address: 'auto' on a node of a running cluster, or "
            "ray://HEAD:10001)"
        ) from exc
    return True


def run_predict_ray(
    sources: Sequence[ImageSource],
    annotator: Annotator,
    reader: SourceReader,
    out_dir: str | Path,
    *,
    settings: Settings,
    options: RayOptions,
    run_fingerprint: str,
    image_value: Callable[[ImageSource], str],
    batch_size: int = 4,
    overlays: bool = False,
    score_mode: str = "confidence",
    image_key: str = "image",
    progress: Progress | None = None,
    on_record: Callable[[ImageSource, dict[str, Any]], None] | None = None,
) -> RunSummary:
    """`backend.batch.predict.run_predict` on Ray: the same records, outputs and resume.

    ``annotator`` must be a `BackendAnnotator` (its controls, exemplars and model_version go to
    the actors; the driver does not predict); ``settings`` are what each actor loads the model
    with.
    """
    from backend.batch.predict import (
        BackendAnnotator,
        Outcome,
        finish_run,
        image_failure,
        start_run,
    )

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if not isinstance(annotator, BackendAnnotator):
        raise TypeError("the Ray engine needs a BackendAnnotator (its controls go to the actors)")
    options.check()
    ray = require_ray()
    run = start_run(sources, out_dir, run_fingerprint, annotator.labels, progress, on_record)
    if run.todo:
        started = _connect(ray, options)
        if not logger.isEnabledFor(logging.DEBUG):  # Ray Data's plan and timing lines: -v
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the run's own bar counts images
        order: dict[int, int] = {}  # id(failure) -> its index in todo: failures.json in input order
        try:
            ds = build_dataset(
                run.todo,
                reader_settings=reader.settings,
                settings=settings,
                annotator=annotator,
                options=options,
                batch_size=batch_size,
                score_mode=score_mode,
                colors=run.colors if overlays else None,
            )
            try:
                for row in ds.iter_rows():
                    index = int(row["index"])
                    src = run.todo[index]
                    if row["record"]:
                        record = json.loads(row["record"])
                        outcome = Outcome(src, record=record, overlay_png=row["overlay"] or None)
                    else:
                        outcome = Outcome(src, failure=image_failure(src, row["error"]))
                        order[id(outcome.failure)] = index
                    run.add(outcome)
            except ray.exceptions.RayError as exc:  # retries spent, an actor that cannot start
                raise EngineError(
                    f"the Ray pipeline stopped after {run.summary.done} images of "
                    f"{len(run.todo)}: {_last_line(exc)} (the records done are kept: run the "
                    "same command again to resume; -v shows Ray's logs)"
                ) from exc
        finally:
            run.summary.failures.sort(key=lambda f: order.get(id(f), -1))
            if started:
                ray.shutdown()
    return finish_run(run, sources, reader, overlays, image_value, image_key)


__all__ = [
    "INSTALL_HINT",
    "RayAnnotator",
    "RayOptions",
    "build_dataset",
    "require_ray",
    "run_predict_ray",
]
