"""Webhook bodies checked at the door: `/webhook` answers 400 with the reason for a body the
background worker could not apply, instead of queueing it and logging a traceback later.

Shapes are Label Studio 1.23's (../shared/ls-protocol): `project` an object with an integer
`id`; ANNOTATION_CREATED / ANNOTATION_UPDATED carry `annotation` (an object with an integer `id`
and a `result` list) and `task` (an object with an integer `id` and a `data` object);
ANNOTATIONS_DELETED carries `annotations`, a list of annotation objects or ids; START_TRAINING
carries `project`, and optionally an annotation and its task.
"""

from __future__ import annotations

from typing import Any

from backend.errors import WebhookDataError
from backend.exemplars import project_key


def _is_id(value: Any) -> bool:
    """A positive integer id (bool is not one, nor is "12": a string would be iterated)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_annotation_and_task(event: str, body: dict) -> None:
    annotation, task = body.get("annotation"), body.get("task")
    if not isinstance(annotation, dict) or not _is_id(annotation.get("id")):
        raise WebhookDataError(f"{event}: 'annotation' must be an object with an integer 'id'")
    if not isinstance(annotation.get("result", []), list):
        raise WebhookDataError(f"{event}: 'annotation.result' must be a list")
    if not isinstance(task, dict) or not _is_id(task.get("id")):
        raise WebhookDataError(f"{event}: 'task' must be an object with an integer 'id'")
    if not isinstance(task.get("data"), dict):
        raise WebhookDataError(f"{event}: 'task.data' must be an object")


def validate_webhook(event: str, body: dict) -> None:
    """Raise WebhookDataError naming what is wrong with a webhook body `fit` would act on."""
    try:
        project_key(body.get("project"))
    except ValueError as exc:
        raise WebhookDataError(f"{event}: 'project': {exc}") from exc
    if event == "ANNOTATIONS_DELETED":
        annotations = body.get("annotations")
        if not isinstance(annotations, list):
            raise WebhookDataError(f"{event}: 'annotations' must be a list")
        for item in annotations:
            ann_id = item.get("id") if isinstance(item, dict) else item
            if not _is_id(ann_id):
                raise WebhookDataError(
                    f"{event}: every annotation must be an integer id or an object with one, "
                    f"got {item!r:.80}"
                )
    elif event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        _check_annotation_and_task(event, body)
    elif event == "START_TRAINING" and (body.get("annotation") or body.get("task")):
        _check_annotation_and_task(event, body)
