"""A Label Studio project as the input and output of `clipseg-label predict --project P`.

`project_sources` lists the project's tasks page by page (label-studio-sdk's pager over
``GET /api/tasks?project=P&fields=all``) and keeps those without a prediction of this run's
model_version: each becomes an `ImageSource` holding its task (id and data), so its record, its
row of tasks.json and its prediction go back to that task.

`PredictionPusher` (``--push``) imports the predictions into the project in batches
(``POST /api/projects/P/import/predictions``, `push_every` at a time) as the records are saved.
A rerun lists the project again: the tasks whose prediction arrived are skipped there, and a
task whose record was saved but whose prediction never reached Label Studio (the run stopped
between the two) is pushed from its record first (`PredictionPusher.resume`), so a resumed run
duplicates no prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from backend.batch.push import PushReport, _call, _field, _prediction_fields, _reporting, _requests
from backend.batch.sources import ImageSource
from backend.batch.state import StateStore

logger = logging.getLogger(__name__)

PAGE_SIZE = 100
PUSH_EVERY = 50


def _has_version(task: Any, model_version: str) -> bool:
    return any(
        _field(p, "model_version") == model_version for p in _field(task, "predictions") or []
    )


def project_sources(
    client: Any, project: int, model_version: str, image_key: str, page_size: int = PAGE_SIZE
) -> tuple[list[ImageSource], int]:
    """(the sources of the tasks of ``project`` without a prediction of ``model_version``, in
    the project's order; how many tasks had one). A task without ``data[image_key]`` is a
    source with ``problem`` set (a failure record, as a bad export task)."""
    sources, already = [], 0
    origin = f"project {project}"
    with _requests(f"list the tasks of project {project}"):
        for task in client.tasks.list(project=project, fields="all", page_size=page_size):
            if _has_version(task, model_version):
                already += 1
                continue
            task_id = _field(task, "id")
            data = _field(task, "data") or {}
            ref = data.get(image_key) if isinstance(data, dict) else None
            kept = {"id": task_id, "data": data}
            if isinstance(ref, str) and ref.strip():
                sources.append(ImageSource(ref=ref.strip(), task=kept, origin=origin))
            else:
                problem = f"task {task_id} has no data.{image_key}; pass --image-key"
                sources.append(
                    ImageSource(
                        ref=f"{origin}#{task_id}", task=kept, origin=origin, problem=problem
                    )
                )
    return sources, already


class PredictionPusher:
    """Imports each saved record's prediction into its project task, ``push_every`` at a time.

    `add` is the run's record callback (`backend.batch.predict.Run.on_record`); `close` sends
    the rest. ``report`` counts what was sent; a request that fails raises `PushError` with it.
    """

    def __init__(self, client: Any, project: int, push_every: int | None = None) -> None:
        self.client = client
        self.project = project
        self.push_every = max(1, push_every or PUSH_EVERY)
        self.pending: list[dict[str, Any]] = []
        self.report = PushReport()

    def add(self, source: ImageSource, record: dict[str, Any]) -> None:
        task_id = (source.task or {}).get("id")
        if task_id is None:
            return
        self.pending.append({"task": task_id, **_prediction_fields(record["prediction"])})
        if len(self.pending) >= self.push_every:
            self.flush()

    def resume(self, sources: Sequence[ImageSource], store: StateStore) -> None:
        """Push the records of an earlier run whose tasks are still without the prediction
        (``sources`` are the listed tasks: a record among them never reached Label Studio)."""
        for src in sources:
            record = store.load(src.key)
            if record is not None:
                self.add(src, record)

    def flush(self) -> None:
        if not self.pending:
            return
        chunk, self.pending = self.pending, []
        with _reporting(self.report):
            _call(
                f"import predictions into project {self.project}",
                self.client.projects.import_predictions,
                id=self.project,
                request=chunk,
            )
        self.report.created_predictions += len(chunk)

    def close(self) -> None:
        self.flush()
