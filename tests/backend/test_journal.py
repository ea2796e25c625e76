"""Webhooks: validated before they are accepted, journaled before they are acknowledged,
replayed after a restart, applied once; model_version follows the store's content only."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from backend_helpers import CONFIG, fake_backend, png_bytes

from backend.formats import encode_brush_rle
from backend.journal import MAX_ATTEMPTS, JournalFull, WebhookJournal
from backend.server import create_app
from backend.webhooks import WebhookWorker, validate_webhook

W, H = 64, 48


# ---- the journal itself


def test_append_pending_done(tmp_path):
    journal = WebhookJournal(tmp_path, max_bytes=1 << 20)
    a = journal.append("ANNOTATION_CREATED", {"n": 1})
    b = journal.append("ANNOTATIONS_DELETED", {"n": 2})
    assert [(e.id, e.event, e.body) for e in journal.pending()] == [
        (a, "ANNOTATION_CREATED", {"n": 1}),
        (b, "ANNOTATIONS_DELETED", {"n": 2}),
    ]
    journal.started(a)
    journal.done(a)
    again = WebhookJournal(tmp_path, max_bytes=1 << 20)  # another process, or after a restart
    assert [e.id for e in again.pending()] == [b]


def test_a_torn_last_line_spoils_nothing_else(tmp_path):
    journal = WebhookJournal(tmp_path, max_bytes=1 << 20)
    a = journal.append("ANNOTATION_CREATED", {"n": 1})
    with open(journal.path, "ab") as handle:  # a crash in the middle of an append
        handle.write(b'{"id": "torn", "event": "ANNOTATION_CREA')
    b = journal.append("ANNOTATION_CREATED", {"n": 2})
    assert [e.id for e in journal.pending()] == [a, b]


def test_an_entry_that_never_finishes_is_given_up(tmp_path, caplog):
    journal = WebhookJournal(tmp_path, max_bytes=1 << 20)
    a = journal.append("ANNOTATION_CREATED", {"n": 1})
    for attempt in range(MAX_ATTEMPTS):
        [entry] = journal.pending()
        assert entry.attempts == attempt
        journal.started(a)  # ... and the process dies
    assert journal.pending() == []
    assert "given up" in caplog.text


def test_bounded_finished_entries_are_dropped_pending_ones_kept(tmp_path):
    journal = WebhookJournal(tmp_path, max_bytes=20_000)
    body = {"pad": "x" * 900}
    ids = []
    for _ in range(100):  # ten times the bound, each entry finished at once
        ids.append(journal.append("ANNOTATION_CREATED", body))
        journal.done(ids[-1])
    assert journal.path.stat().st_size <= 20_000 and journal.pending() == []
    kept = [journal.append("ANNOTATION_CREATED", body) for _ in range(19)]
    with pytest.raises(JournalFull, match="CLIPSEG_WEBHOOK_JOURNAL_BYTES=20000"):
        for _ in range(10):
            journal.append("ANNOTATION_CREATED", body)
    assert [e.id for e in journal.pending()][:19] == kept
    for entry in journal.pending():
        journal.done(entry.id)
    journal.append("ANNOTATION_CREATED", body)  # room again


def test_the_worker_replays_pending_entries_once(tmp_path):
    journal = WebhookJournal(tmp_path, max_bytes=1 << 20)
    applied: list[dict] = []
    worker = WebhookWorker(lambda event, body: applied.append(body), 10, journal=journal)
    worker.submit("ANNOTATION_CREATED", {"n": 0})
    assert worker.join(10) and applied == [{"n": 0}]
    journal.append("ANNOTATION_CREATED", {"n": 1})  # acknowledged, then the process died
    journal.append("ANNOTATION_CREATED", {"n": 2})
    restarted = WebhookWorker(lambda event, body: applied.append(body), 10, journal=journal)
    restarted.start()
    assert restarted.join(10)
    assert applied == [{"n": 0}, {"n": 1}, {"n": 2}] and journal.pending() == []


# ---- through the server


def _annotation(ann_id: int = 1, updated: str = "2026-01-01T00:00:00Z") -> dict:
    mask = np.zeros((H, W), np.uint8)
    mask[5:30, 5:40] = 255
    return {
        "id": ann_id,
        "updated_at": updated,
        "result": [
            {
                "id": "r1",
                "from_name": "tag",
                "to_name": "image",
                "type": "brushlabels",
                "original_width": W,
                "original_height": H,
                "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": ["dog"]},
            }
        ],
    }


def _webhook(ann_id: int = 1, updated: str = "2026-01-01T00:00:00Z", **extra) -> dict:
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": _annotation(ann_id, updated),
        "task": {"id": ann_id, "data": {"image": "/data/local-files/?d=a.png"}},
        "project": {"id": 1, "label_config": CONFIG},
        **extra,
    }


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes(W, H))
    backend = fake_backend(tmp_path, local_files_document_root=str(root))
    app = create_app(backend, backend.settings)
    return app, backend


def _post(client, body, path="/webhook"):
    return client.post(path, data=json.dumps(body), content_type="application/json")


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"action": "ANNOTATIONS_DELETED", "annotations": "12"}, "'annotations' must be a list"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": "1 2"}]}, "integer id"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [True]}, "integer id"),
        ({"annotation": "12"}, "'annotation' must be an object"),
        ({"annotation": {"result": []}}, "integer 'id'"),
        ({"task": None}, "'task' must be an object"),
        ({"task": {"id": 1}}, "'task.data'"),
        ({"project": None}, "'project'"),
        ({"project": "../1"}, "'project'"),
        ({"project": {"id": 1, "label_config": 5}}, "label_config"),
    ],
)
def test_malformed_webhooks_get_400_with_the_reason(served, change, reason, caplog):
    app, backend = served
    client = app.test_client()
    backend.store.replace_annotation(1, 1, [], updated_at="t")
    backend.store.replace_annotation(1, 2, [], updated_at="t")
    body = _webhook()
    body.update(change)
    if body.get("task") is None:
        del body["task"]
    r = _post(client, body)
    assert r.status_code == 400 and reason in r.get_json()["error"], r.get_json()
    assert app.extensions["clipseg_worker"].join(10)
    assert backend.store.annotation_ids(1) == {"1", "2"}  # "12" deleted nothing
    assert not [rec for rec in caplog.records if rec.exc_info]
    validate_webhook(
        "ANNOTATIONS_DELETED", {"project": 1, "annotations": [1, {"id": 2}]}
    )  # ids or objects with one


def test_an_acknowledged_webhook_is_on_disk_and_survives_a_restart(served, tmp_path):
    app, backend = served
    release = threading.Event()
    real_fit = backend.fit

    def stuck_fit(event, data):  # the process "dies" before it gets to the webhook
        release.wait(30)

    backend.fit = stuck_fit
    app = create_app(backend, backend.settings)
    client = app.test_client()
    assert _post(client, _webhook(ann_id=9)).status_code == 200  # occupies the worker
    r = _post(client, _webhook(ann_id=1))
    assert r.status_code == 200 and r.get_json()["status"] == "queued"
    journal = tmp_path / "model-dir" / "webhooks" / "journal.jsonl"
    assert b'"annotation":{"id":1,' in journal.read_bytes()
    # a new process over the same MODEL_DIR applies both at start
    fresh = fake_backend(
        tmp_path, local_files_document_root=backend.settings.local_files_document_root
    )
    restarted = create_app(fresh, fresh.settings)
    restarted.test_client().get("/health")  # the first request starts the webhook thread
    assert restarted.extensions["clipseg_worker"].join(30)
    assert fresh.store.annotation_ids(1) == {"1", "9"}
    release.set()
    backend.fit = real_fit


def test_the_same_webhook_twice_is_applied_once_and_keeps_model_version(served):
    app, backend = served
    client = app.test_client()
    setup = {"project": "1.5", "schema": CONFIG}
    v0 = _post(client, setup, "/setup").get_json()["model_version"]
    assert _post(client, _webhook()).status_code == 200
    assert app.extensions["clipseg_worker"].join(30)
    v1 = _post(client, setup, "/setup").get_json()["model_version"]
    embeds = sum(c[0] == "embed_exemplar" for c in backend.predictor.calls)
    assert v1 != v0 and embeds == 1
    for _ in range(2):
        assert _post(client, _webhook()).status_code == 200
    assert app.extensions["clipseg_worker"].join(30)
    assert _post(client, setup, "/setup").get_json()["model_version"] == v1
    assert sum(c[0] == "embed_exemplar" for c in backend.predictor.calls) == embeds  # skipped
    # a new updated_at with the same regions: embedded again, still the same content
    assert _post(client, _webhook(updated="2026-01-02T00:00:00Z")).status_code == 200
    assert app.extensions["clipseg_worker"].join(30)
    assert _post(client, setup, "/setup").get_json()["model_version"] == v1
    assert backend.store.known_annotation(1, 1, "2026-01-02T00:00:00Z")


def test_a_full_queue_or_journal_answers_503_with_retry_after(tmp_path, served):
    import dataclasses

    _, backend = served
    release = threading.Event()
    backend.fit = lambda event, data: release.wait(30)
    app = create_app(backend, dataclasses.replace(backend.settings, webhook_queue_size=1))
    client = app.test_client()
    try:
        codes = [_post(client, _webhook(ann_id=i)).status_code for i in range(1, 5)]
        assert codes[0] == 200 and codes[-1] == 503
        r = _post(client, _webhook(ann_id=7))
        assert r.status_code == 503 and "queue is full" in r.get_json()["error"]
        assert int(r.headers["Retry-After"]) > 0
    finally:
        release.set()
    assert app.extensions["clipseg_worker"].join(30)

    small = dataclasses.replace(
        backend.settings, webhook_journal_bytes=70_000, model_dir=str(tmp_path / "other")
    )
    release.clear()
    app = create_app(backend, small)
    client = app.test_client()
    big = _webhook(ann_id=3)
    big["task"]["data"]["pad"] = "x" * 30_000
    try:
        codes = [_post(client, big).status_code for _ in range(4)]
        assert codes[:2] == [200, 200] and codes[-1] == 503
        r = _post(client, big)
        assert "CLIPSEG_WEBHOOK_JOURNAL_BYTES" in r.get_json()["error"]
        assert int(r.headers["Retry-After"]) > 0
    finally:
        release.set()


def test_a_webhook_for_a_fifo_does_not_stall_the_worker(served):
    app, backend = served
    root = backend.settings.local_files_document_root
    os.mkfifo(os.path.join(root, "pipe.png"))
    client = app.test_client()
    stalled = _webhook(ann_id=2)
    stalled["task"]["data"]["image"] = "/data/local-files/?d=pipe.png"
    assert _post(client, stalled).status_code == 200
    assert _post(client, _webhook(ann_id=3)).status_code == 200
    assert app.extensions["clipseg_worker"].join(10)
    assert backend.store.annotation_ids(1) == {"3"}
