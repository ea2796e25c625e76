"""Replay the bodies a live Label Studio 1.23.2 sent (../shared/ls-protocol) against the real
backend: a tiny random CLIPSeg saved with save_pretrained, loaded through CLIPSegBackend.load
(the same path as `clipseg-backend`), images from a local-files root and a fake Label Studio."""

from __future__ import annotations

import json
import logging

import pytest
from backend_helpers import (
    FakeLabelStudio,
    build_tiny_checkpoint,
    check_result_item,
    load_recorded,
    png_bytes,
)

try:
    from clipseg import Predictor  # noqa: F401
except ImportError:  # until clipseg.Predictor is exported
    pytest.skip("clipseg.Predictor is not available", allow_module_level=True)

from backend.model import CLIPSegBackend
from backend.server import create_app
from backend.settings import Settings

W, H = 320, 240


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-clipseg"))


@pytest.fixture
def served(tmp_path, checkpoint):
    ls = FakeLabelStudio(token="legacy-key")
    root = tmp_path / "files"
    (root / "images").mkdir(parents=True)
    (root / "images" / "cat1.png").write_bytes(png_bytes(W, H, seed=1))
    ls.files["/data/upload/1/920b9618-upload_dog.jpg"] = png_bytes(W, H, seed=2, fmt="JPEG")
    settings = Settings(
        model=str(checkpoint),
        device="cpu",
        threshold=0.0,  # random weights: every pixel counts, so each label yields regions
        model_dir=str(tmp_path / "model-dir"),
        local_files_document_root=str(root),
        label_studio_url=ls.url,
        label_studio_api_key="legacy-key",
    )
    backend = CLIPSegBackend.load(settings)
    yield create_app(backend, settings), backend
    ls.close()


def _post(client, path, body):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def test_health_names_the_loaded_model(served, checkpoint):
    app, backend = served
    body = app.test_client().get("/health").get_json()
    assert body["status"] == "UP" and body["device"] == "cpu" and body["demo"] is False
    assert body["model_version"] == backend.base_version
    assert body["model_version"].startswith(f"clipseg-{checkpoint.name}@")


@pytest.mark.parametrize(
    ("name", "answered"),
    [
        ("predict_retrieve_tasks_predictions.json", {"cat", "dog"}),
        ("predict_ml_predict_test_random.json", {"cat", "dog"}),
        # the annotator typed "a cat" in a TextArea: only the label it names is answered
        ("predict_interactive_context.json", {"cat"}),
    ],
)
def test_replay_predict(served, name, answered):
    app, backend = served
    client = app.test_client()
    setup = _post(client, "/setup", load_recorded("setup_before_predict.json")["body"])
    version = setup.get_json()["model_version"]
    body = load_recorded(name)["body"]
    r = _post(client, "/predict", body)
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert len(results) == len(body["tasks"])
    for pred in results:
        assert pred["model_version"] == version
        kinds = {(item["from_name"], item["type"]) for item in pred["result"]}
        assert kinds == {("tag", "brushlabels"), ("poly", "polygonlabels")}
        labels = {item["value"][item["type"]][0] for item in pred["result"]}
        assert labels == answered
        for item in pred["result"]:
            check_result_item(item, W, H)
        assert 0.0 <= pred["score"] <= 1.0 and 0.0 <= pred["uncertainty"] <= 1.0


def test_replay_webhook_then_exemplars_change_predictions(served):
    app, backend = served
    client = app.test_client()
    setup_body = load_recorded("setup_before_predict.json")["body"]
    v0 = _post(client, "/setup", setup_body).get_json()["model_version"]
    r = _post(client, "/webhook", load_recorded("webhook_ANNOTATION_CREATED.json")["body"])
    assert r.status_code == 200
    assert app.extensions["clipseg_worker"].join(timeout=60)
    assert backend.store.counts(1) == {"cat": 1}
    v1 = _post(client, "/setup", setup_body).get_json()["model_version"]
    assert v1 != v0
    body = load_recorded("predict_ml_predict_test_random.json")["body"]
    [pred] = _post(client, "/predict", body).get_json()["results"]
    assert pred["model_version"] == v1


def test_half_precision_on_the_cpu_is_warned_about(tmp_path, checkpoint, caplog):
    settings = Settings(
        model=str(checkpoint), device="cpu", dtype="bfloat16", model_dir=str(tmp_path / "m")
    )
    with caplog.at_level(logging.WARNING, logger="backend.model"):
        backend = CLIPSegBackend.load(settings)
    assert backend.dtype == "bfloat16"
    assert any("bfloat16 on the CPU" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="backend.model"):
        CLIPSegBackend.load(Settings(model=str(checkpoint), device="cpu", model_dir=str(tmp_path)))
    assert not any("on the CPU" in r.getMessage() for r in caplog.records)
