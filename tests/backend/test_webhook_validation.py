"""Webhook bodies are validated before they are queued (issue 16, items 6 and 8): a bad one gets
400 with the reason and never reaches the worker; a full queue says when to come back."""

from __future__ import annotations

import json

import pytest
from backend_helpers import load_recorded

from backend.webhooks import WebhookDataError, validate_webhook

PROJECT = {"id": 3}
GOOD_ANNOTATION = {"id": 12, "result": []}
GOOD_TASK = {"id": 5, "data": {"image": "/data/upload/3/a.png"}}


@pytest.mark.parametrize(
    ("event", "body", "reason"),
    [
        # "12" was iterated as annotations 1 and 2, deleting both for good
        ("ANNOTATIONS_DELETED", {"project": PROJECT, "annotations": "12"}, "must be a list"),
        ("ANNOTATIONS_DELETED", {"project": PROJECT, "annotations": ["12"]}, "integer id"),
        ("ANNOTATIONS_DELETED", {"project": PROJECT, "annotations": [{"id": True}]}, "integer"),
        ("ANNOTATIONS_DELETED", {"annotations": [1]}, "'project'"),
        (
            "ANNOTATION_CREATED",
            {"project": PROJECT, "annotation": "x", "task": GOOD_TASK},
            "annotation",
        ),
        ("ANNOTATION_CREATED", {"project": PROJECT, "annotation": GOOD_ANNOTATION}, "'task'"),
        (
            "ANNOTATION_UPDATED",
            {"project": PROJECT, "annotation": {"id": 1, "result": {}}, "task": GOOD_TASK},
            "result",
        ),
        (
            "ANNOTATION_CREATED",
            {"project": PROJECT, "annotation": GOOD_ANNOTATION, "task": {"id": 5, "data": 1}},
            "task.data",
        ),
    ],
)
def test_bad_bodies_are_refused_with_the_reason(event, body, reason):
    with pytest.raises(WebhookDataError, match=reason):
        validate_webhook(event, body)


def test_label_studio_s_own_bodies_pass():
    for name in ("webhook_ANNOTATION_CREATED.json", "webhook_START_TRAINING.json"):
        body = load_recorded(name)["body"]
        validate_webhook(body["action"], body)
    validate_webhook("ANNOTATIONS_DELETED", {"project": PROJECT, "annotations": [{"id": 1}, 2]})


def test_the_server_answers_400_and_queues_nothing(tmp_path):
    from backend_helpers import fake_backend

    from backend.server import create_app

    backend = fake_backend(tmp_path)
    client = create_app(backend, backend.settings).test_client()
    bad = {"action": "ANNOTATIONS_DELETED", "project": PROJECT, "annotations": "12"}
    response = client.post("/webhook", data=json.dumps(bad), content_type="application/json")
    assert response.status_code == 400
    assert "must be a list" in response.get_json()["error"]
    good = {"action": "ANNOTATIONS_DELETED", "project": PROJECT, "annotations": [12]}
    response = client.post("/webhook", data=json.dumps(good), content_type="application/json")
    assert response.status_code == 200 and response.get_json()["status"] == "queued"
