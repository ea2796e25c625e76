"""Send predictions and uncertainty scores to a Label Studio project through label-studio-sdk.

The client is label-studio-sdk's, made by `backend.ls_client.sdk_client` (``LabelStudio(base_url,
api_key)``; the SDK exchanges a personal access token for access tokens itself, a legacy token is
sent as is). Then:

- `import_tasks`: the tasks of ``tasks.json`` become new tasks, with their predictions;
- `attach_predictions`: each task's prediction is added to the project's existing task with the
  same ``data[image_key]``; tasks with no match are returned, not guessed;
- `push_scores`: the predictions' ``score`` is set to the ranking's uncertainty, so that Label
  Studio's Data Manager can sort by it.

Every failure of a request, whether Label Studio answered with an error (HTTP 401, 404, ...) or
could not be reached (connection refused, unknown host, timeout: httpx's errors, which the SDK
lets through after its retries), is a `PushError` that names the request and the fix, and carries
what the push had done before it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from backend.errors import LabelStudioError

logger = logging.getLogger(__name__)

_IMPORT_CHUNK = 500


@dataclass
class PushReport:
    """What a push did."""

    created_tasks: int = 0
    created_predictions: int = 0
    updated_predictions: int = 0
    unmatched: list[str] = field(default_factory=list)  # image references with no task

    @property
    def changed(self) -> bool:
        """Whether anything was written to Label Studio."""
        return bool(self.created_tasks or self.created_predictions or self.updated_predictions)


class PushError(LabelStudioError):
    """Label Studio refused a request or could not be reached; the message says which and why.

    ``report`` is what the push had done before (nothing, when the first request failed).
    """

    def __init__(self, message: str, report: PushReport | None = None) -> None:
        super().__init__(message)
        self.report = report or PushReport()


def _origin(exc: httpx.HTTPError) -> str:
    """scheme://host[:port] of the request that failed (or a placeholder)."""
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised without its request
        return "the given URL"
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}"


@contextlib.contextmanager
def _requests(what: str) -> Iterator[None]:
    """Turn the SDK's API errors and httpx's transport errors (connection refused, DNS, timeouts;
    the SDK lets them through after its retries) into a `PushError` naming the request."""
    try:
        yield
    except ApiError as exc:
        hint = ""
        if exc.status_code == 401:
            hint = " (check the API key; Label Studio 1.23 refuses legacy tokens unless enabled)"
        elif exc.status_code == 404:
            hint = " (check the project id)"
        raise PushError(
            f"{what}: Label Studio answered HTTP {exc.status_code}{hint}: {exc.body}"
        ) from exc
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise PushError(
            f"{what}: cannot reach Label Studio at {_origin(exc)}: {reason} "
            "(check --url / LABEL_STUDIO_URL, and that Label Studio is running)"
        ) from exc
    except httpx.InvalidURL as exc:
        raise PushError(f"{what}: invalid Label Studio URL: {exc} (check --url)") from exc


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one SDK call; its failures become a `PushError` that names the request."""
    with _requests(what):
        return fn(*args, **kwargs)


@contextlib.contextmanager
def _reporting(report: PushReport) -> Iterator[None]:
    """Attach ``report`` (what was done so far) to a `PushError` raised inside."""
    try:
        yield
    except PushError as exc:
        exc.report = report
        raise


def _prediction_fields(pred: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"result": pred.get("result") or []}
    if pred.get("model_version") is not None:
        out["model_version"] = str(pred["model_version"])
    if isinstance(pred.get("score"), (int, float)):
        out["score"] = float(pred["score"])
    return out


def import_tasks(client: LabelStudio, project: int, tasks: Sequence[dict[str, Any]]) -> PushReport:
    """Create new tasks (data, predictions, meta) in ``project``, in chunks."""
    report = PushReport()
    with _reporting(report):
        for start in range(0, len(tasks), _IMPORT_CHUNK):
            chunk = [
                {
                    k: v
                    for k, v in task.items()
                    if k in ("data", "predictions", "meta", "annotations")
                }
                for task in tasks[start : start + _IMPORT_CHUNK]
            ]
            _call(
                f"import into project {project}",
                client.projects.import_tasks,
                id=project,
                request=chunk,
            )
            report.created_tasks += len(chunk)
            report.created_predictions += sum(len(t.get("predictions") or []) for t in chunk)
    return report


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def project_tasks_by_image(client: LabelStudio, project: int, image_key: str) -> dict[str, Any]:
    """``data[image_key]`` -> task id of every task of ``project`` (the first when repeated)."""
    index: dict[str, Any] = {}
    with _requests(f"list the tasks of project {project}"):
        for task in client.tasks.list(project=project):  # later pages are fetched here
            data = _field(task, "data") or {}
            ref = data.get(image_key) if isinstance(data, dict) else None
            if isinstance(ref, str):
                index.setdefault(ref, _field(task, "id"))
    return index


def attach_predictions(
    client: LabelStudio, project: int, tasks: Sequence[dict[str, Any]], image_key: str = "image"
) -> PushReport:
    """Add each task's predictions to the existing task with the same ``data[image_key]``."""
    report = PushReport()
    with _reporting(report):
        index = project_tasks_by_image(client, project, image_key)
        for task in tasks:
            ref = str((task.get("data") or {}).get(image_key, ""))
            task_id = index.get(ref)
            if task_id is None:
                report.unmatched.append(ref)
                continue
            for pred in task.get("predictions") or []:
                _call(
                    f"add a prediction to task {task_id}",
                    client.predictions.create,
                    task=task_id,
                    **_prediction_fields(pred),
                )
                report.created_predictions += 1
    return report


def push_scores(
    client: LabelStudio,
    project: int,
    scores: Sequence[tuple[Any, str, float]],
    model_version: str | None = None,
    image_key: str = "image",
) -> PushReport:
    """Set the score of the predictions of each (task id or None, image, score) to ``score``.

    A task without an id is found by its image. Only predictions with ``model_version`` are
    updated when it is given (the newest of the task otherwise).
    """
    report = PushReport()
    with _reporting(report):
        index: dict[str, Any] | None = None
        for task_id, image, score in scores:
            if task_id is None:
                if index is None:
                    index = project_tasks_by_image(client, project, image_key)
                task_id = index.get(image)
                if task_id is None:
                    report.unmatched.append(image)
                    continue
            preds = _call(
                f"list predictions of task {task_id}", client.predictions.list, task=task_id
            )
            if model_version is not None:
                chosen = [p for p in preds if _field(p, "model_version") == model_version]
            else:
                chosen = sorted(preds, key=lambda p: _field(p, "id") or 0)[-1:]
            if not chosen:
                report.unmatched.append(image)
                continue
            for pred in chosen:
                _call(
                    f"update prediction {_field(pred, 'id')}",
                    client.predictions.update,
                    _field(pred, "id"),
                    score=float(score),
                )
                report.updated_predictions += 1
    return report
