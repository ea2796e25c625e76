"""The HTTP protocol through Flask's test client: routes, shapes, auth, limits, webhooks,
bad input, concurrency; and `clipseg-backend` failing fast on a missing model."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from backend_helpers import (
    CONFIG,
    FakeLabelStudio,
    check_result_item,
    fake_backend,
    load_recorded,
    png_bytes,
)

from backend.server import create_app

W, H = 320, 240


@pytest.fixture
def env(tmp_path):
    """A fake Label Studio serving uploads, a local-files root, and the app over a fake model."""
    ls = FakeLabelStudio(token="legacy-key")
    root = tmp_path / "files"
    (root / "images").mkdir(parents=True)
    (root / "images" / "cat1.png").write_bytes(png_bytes(W, H, seed=1))
    ls.files["/data/upload/1/920b9618-upload_dog.jpg"] = png_bytes(W, H, seed=2, fmt="JPEG")
    backend = fake_backend(
        tmp_path,
        local_files_document_root=str(root),
        label_studio_url=ls.url,
        label_studio_api_key="legacy-key",
    )
    app = create_app(backend, backend.settings)
    yield app, ls, backend
    ls.close()


def _post(client, path, body, **kw):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kw)


def test_health(env):
    app, _, _ = env
    r = app.test_client().get("/health")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "UP" and body["model_class"] == "CLIPSegBackend"
    assert body["model_version"] == "clipseg-fake@0123abcd" and body["demo"] is False
    assert {"model_name", "device"} <= set(body)


def test_replay_setup_predict_and_webhook(env):
    app, ls, backend = env
    client = app.test_client()
    setup = load_recorded("setup_on_connect.json")
    r = _post(client, "/setup", setup["body"])
    assert r.status_code == 200 and r.get_json() == {"model_version": "clipseg-fake@0123abcd+ex0"}

    for name in (
        "predict_retrieve_tasks_predictions.json",
        "predict_ml_predict_test_random.json",
        "predict_interactive_context.json",
    ):
        body = load_recorded(name)["body"]
        r = _post(client, "/predict", body)
        assert r.status_code == 200, r.get_data(as_text=True)
        out = r.get_json()
        assert list(out) == ["results"]
        assert len(out["results"]) == len(body["tasks"])
        for pred in out["results"]:
            assert pred["result"], name  # the images have a red block that "cat" finds
            assert pred["model_version"] == "clipseg-fake@0123abcd+ex0"
            assert isinstance(pred["score"], float)
            for item in pred["result"]:
                check_result_item(item, W, H)
    # the upload came from Label Studio with the token; the local file was read from disk
    assert ("GET", "/data/upload/1/920b9618-upload_dog.jpg", "Token legacy-key") in ls.requests
    assert not any("local-files" in path for _, path, _ in ls.requests)

    webhook = load_recorded("webhook_ANNOTATION_CREATED.json")["body"]
    r = _post(client, "/webhook", webhook)
    assert r.status_code == 200 and r.get_json()["status"] == "queued"
    assert app.extensions["clipseg_worker"].join(timeout=30)
    # the polygon; the recorded brush stroke's RLE is truncated, so it is skipped
    assert backend.store.counts(1) == {"cat": 1}
    r = _post(client, "/setup", load_recorded("setup_before_predict.json")["body"])
    assert r.get_json()["model_version"].startswith("clipseg-fake@0123abcd+ex1-")

    r = _post(client, "/webhook", load_recorded("webhook_PROJECT_UPDATED.json")["body"])
    assert r.status_code == 200 and r.get_json()["status"] == "ignored"


def test_webhook_with_two_regions_changes_model_version(env):
    app, _, backend = env
    client = app.test_client()
    body = {"project": "1.1795712334", "schema": CONFIG, "hostname": "", "access_token": ""}
    v0 = _post(client, "/setup", body).get_json()["model_version"]
    mask = np.zeros((H, W), np.uint8)
    mask[10:50, 10:80] = 255
    from backend.formats import encode_brush_rle

    annotation = {
        "id": 5,
        "updated_at": "t",
        "result": [
            {
                "id": "r1",
                "from_name": "tag",
                "to_name": "image",
                "type": "brushlabels",
                "original_width": W,
                "original_height": H,
                "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": ["dog"]},
            },
            {
                "id": "r2",
                "from_name": "box",
                "to_name": "image",
                "type": "rectanglelabels",
                "original_width": W,
                "original_height": H,
                "value": {"x": 50, "y": 50, "width": 20, "height": 10, "rectanglelabels": ["cat"]},
            },
        ],
    }
    task = {"id": 1, "data": {"image": "/data/local-files/?d=images/cat1.png"}}
    r = _post(
        client,
        "/webhook",
        {
            "action": "ANNOTATION_CREATED",
            "annotation": annotation,
            "task": task,
            "project": {"id": 1, "label_config": CONFIG},
        },
    )
    assert r.status_code == 200
    assert app.extensions["clipseg_worker"].join(timeout=30)
    assert backend.store.counts(1) == {"dog": 1, "cat": 1}
    v1 = _post(client, "/setup", body).get_json()["model_version"]
    assert v1 != v0 and v1.startswith("clipseg-fake@0123abcd+ex2-")
    r = _post(
        client,
        "/predict",
        {"tasks": [task], "project": "1.1795712334", "label_config": CONFIG},
    )
    assert r.get_json()["results"][0]["model_version"] == v1


def test_basic_auth(tmp_path):
    backend = fake_backend(tmp_path, basic_auth_user="user", basic_auth_pass="pa:ss")
    client = create_app(backend, backend.settings).test_client()
    for method, path in (
        ("get", "/health"),
        ("post", "/setup"),
        ("post", "/predict"),
        ("post", "/webhook"),
    ):
        r = getattr(client, method)(path)
        assert r.status_code == 401 and "WWW-Authenticate" in r.headers, path
    wrong = base64.b64encode(b"user:nope").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    good = base64.b64encode(b"user:pa:ss").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {good}"}).status_code == 200


def test_bad_input(tmp_path):
    backend = fake_backend(tmp_path, max_content_length=2000)
    client = create_app(backend, backend.settings).test_client()
    r = client.post("/predict", data="{not json", content_type="application/json")
    assert r.status_code == 400 and "malformed JSON" in r.get_json()["error"]
    r = client.post("/predict", data="[1, 2]", content_type="application/json")
    assert r.status_code == 400 and "object" in r.get_json()["error"]
    r = client.post("/predict", data="[" * 1900, content_type="application/json")
    assert r.status_code == 400 and "nested too deeply" in r.get_json()["error"]
    r = _post(client, "/predict", {"tasks": "nope", "label_config": CONFIG})
    assert r.status_code == 400 and "tasks" in r.get_json()["error"]
    r = _post(client, "/webhook", {"no": "action"})
    assert r.status_code == 400
    r = client.post("/predict", data="x" * 5000, content_type="application/json")
    assert r.status_code == 413 and "MAX_CONTENT_LENGTH" in r.get_json()["error"]
    assert client.get("/nope").status_code == 404


def test_path_traversal_and_disallowed_host_give_no_result(env, tmp_path):
    app, ls, _ = env
    (tmp_path / "secret.png").write_bytes(png_bytes(W, H))
    other = FakeLabelStudio()
    try:
        other.files["/public/x.png"] = png_bytes(W, H)
        tasks = [
            {"id": 1, "data": {"image": "/data/local-files/?d=../secret.png"}},
            {
                "id": 2,
                "data": {"image": other.url.replace("127.0.0.1", "localhost") + "/public/x.png"},
            },
            {"id": 3, "data": {"image": "/data/local-files/?d=images/cat1.png"}},
        ]
        r = _post(
            app.test_client(),
            "/predict",
            {"tasks": tasks, "label_config": CONFIG, "project": "1.1"},
        )
        assert r.status_code == 200
        results = r.get_json()["results"]
        assert ["result" in p for p in results] == [False, False, True]
        assert other.requests == []  # no request made to the disallowed host
    finally:
        other.close()


def test_concurrent_predicts_are_correct(env):
    _, _, backend = env
    app = create_app(backend, dataclasses.replace(backend.settings, threads=7))  # 6 predict slots
    body = load_recorded("predict_retrieve_tasks_predictions.json")["body"]
    expected = _post(app.test_client(), "/predict", body).get_json()["results"]

    def strip(results):
        return [
            [{k: v for k, v in item.items() if k != "id"} for item in p["result"]] for p in results
        ]

    outputs, errors = [], []

    def run():
        try:
            client = app.test_client()
            for _ in range(3):
                r = _post(client, "/predict", copy.deepcopy(body))
                outputs.append(r.get_json()["results"])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(outputs) == 18
    assert all(strip(o) == strip(expected) for o in outputs)
    assert backend.predictor.max_active == 1  # the Predictor's image state was never shared


def test_one_thread_stays_free_for_health_and_webhooks(env, monkeypatch):
    """With THREADS=2 one /predict runs at a time; another is answered 503 at once rather than
    taking the last thread, which /health and /webhook need within Label Studio's 1 s."""
    _, _, backend = env
    app = create_app(backend, dataclasses.replace(backend.settings, threads=2))
    entered, release = threading.Event(), threading.Event()
    real_predict = backend.predict

    def slow_predict(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(backend, "predict", slow_predict)
    body = load_recorded("predict_ml_predict_test_random.json")["body"]
    first: list = []
    runner = threading.Thread(
        target=lambda: first.append(_post(app.test_client(), "/predict", body))
    )
    runner.start()
    try:
        assert entered.wait(30)
        client = app.test_client()
        busy = _post(client, "/predict", body)
        assert busy.status_code == 503 and "busy" in busy.get_json()["error"]
        assert busy.headers["Retry-After"] == "5"
        assert client.get("/health").status_code == 200
    finally:
        release.set()
        runner.join(60)
    assert first[0].status_code == 200
    assert _post(app.test_client(), "/predict", body).status_code == 200  # the slot came back


REPO = Path(__file__).resolve().parents[2]


def backend_command() -> list[str]:
    """The installed `clipseg-backend` console script (or its entry point when not installed)."""
    script = Path(sys.executable).with_name("clipseg-backend")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from backend.server import main; main()"]


@pytest.mark.parametrize("model", ["/nonexistent", "broken"])
def test_cli_exits_nonzero_with_a_clear_message_when_the_model_is_missing(tmp_path, model):
    if model == "broken":  # a directory that is not a checkpoint
        model = str(tmp_path / "broken")
        Path(model).mkdir()
        Path(model, "config.json").write_text("{not json")
    env = {**os.environ, "CLIPSEG_MODEL": model, "MODEL_DIR": str(tmp_path)}
    proc = subprocess.run(
        [*backend_command(), "--port", "0"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert model in proc.stderr and "CLIPSEG_MODEL=demo" in proc.stderr
    assert "Traceback" not in proc.stderr
