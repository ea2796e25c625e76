"""Request and memory limits: chunked bodies over MAX_CONTENT_LENGTH, CLIPSEG_MAX_IMAGE_PIXELS
read from the header before decoding (not PIL's own limit), and the pixel budget shared by
concurrent requests (issue 16, 8)."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib

import pytest
from backend_helpers import CONFIG, fake_backend, png_bytes
from PIL import Image

from backend.images import ImageError, ImageLoader, ImagesBusy, decode_image
from backend.pixel_budget import PixelBudget, PixelBudgetExceeded
from backend.server import create_app
from backend.settings import Settings, SettingsError


def _chunked(client, body: bytes):
    """POST /predict without Content-Length, as a WSGI server hands a chunked body over."""
    return client.post(
        "/predict",
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_the_limit_is_413(tmp_path):
    backend = fake_backend(tmp_path, max_content_length=2000)
    client = create_app(backend, backend.settings).test_client()
    r = _chunked(client, json.dumps({"tasks": [], "label_config": "x" * 5000}).encode())
    assert r.status_code == 413 and "MAX_CONTENT_LENGTH=2000" in r.get_json()["error"]
    exact = json.dumps({"tasks": [], "label_config": CONFIG, "pad": ""}).encode()
    exact = exact.replace(b'"pad": ""', b'"pad": "' + b"x" * (2000 - len(exact)) + b'"')
    assert len(exact) == 2000
    r = _chunked(client, exact)  # exactly at the limit: read whole, answered
    assert r.status_code == 200 and r.get_json() == {"results": []}


def _png_header(width: int, height: int) -> bytes:
    """A PNG claiming width x height with one row of pixel data: a bomb's header, 60 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_max_image_pixels_is_ours_not_pils():
    bomb = _png_header(20_000, 10_000)  # 200 Mpx: over PIL's own limit (about 179 Mpx)
    with pytest.raises(ImageError, match="200000000 pixels, over CLIPSEG_MAX_IMAGE_PIXELS=50000"):
        decode_image(bomb, Settings())
    assert Image.MAX_IMAGE_PIXELS and 20_000 * 10_000 > 2 * Image.MAX_IMAGE_PIXELS
    # allowed by the operator: the size passes and decoding starts (and fails: no pixels here)
    with pytest.raises(ImageError, match="corrupt image") as caught:
        decode_image(bomb, Settings(max_image_pixels=300_000_000))
    assert "decompression bomb" not in str(caught.value).lower()
    assert decode_image(png_bytes(40, 30), Settings(max_image_pixels=1200)).width == 40
    with pytest.raises(ImageError, match="CLIPSEG_MAX_IMAGE_PIXELS=1199"):
        decode_image(png_bytes(40, 30), Settings(max_image_pixels=1199))


def test_pixel_budget_waits_then_refuses():
    budget = PixelBudget(100)
    a = budget.reserve(60, wait=0)
    with pytest.raises(PixelBudgetExceeded, match="CLIPSEG_PIXEL_BUDGET=100"):
        budget.reserve(50, wait=0.05)
    threading.Timer(0.1, a.release).start()
    start = time.monotonic()
    b = budget.reserve(50, wait=5)  # room once the first is given back
    assert time.monotonic() - start < 2
    a.release()  # a second release gives nothing back twice
    assert budget.in_flight == 50
    b.release()
    assert budget.in_flight == 0
    with pytest.raises(PixelBudgetExceeded, match="more than the whole budget"):
        budget.reserve(101, wait=10)


def test_images_hold_the_budget_until_released(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(40, 30))
    settings = Settings(
        local_files_document_root=str(tmp_path), max_image_pixels=1200, pixel_budget=2000
    )
    loader = ImageLoader(settings)
    task = {"id": 1, "data": {"image": "/data/local-files/?d=a.png"}}
    first = loader.load(task, "image", None)
    assert loader.budget.in_flight == 1200
    with pytest.raises(ImagesBusy, match="CLIPSEG_PIXEL_BUDGET=2000"):
        loader.load(task, "image", None, budget_wait=0.05)
    first.release()
    with loader.load(task, "image", None, budget_wait=0.05) as second:
        assert second.width == 40 and loader.budget.in_flight == 1200
    assert loader.budget.in_flight == 0
    loader.load(task, "image", None)  # dropped without release: given back when collected
    assert loader.budget.in_flight == 0
    with pytest.raises(SettingsError, match="CLIPSEG_PIXEL_BUDGET=10 is below"):
        Settings.from_env({"CLIPSEG_PIXEL_BUDGET": "10"})


def test_predict_answers_503_with_retry_after_when_the_budget_is_spent(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(40, 30))
    backend = fake_backend(tmp_path, local_files_document_root=str(tmp_path))
    backend.images.budget_wait = 0.05
    client = create_app(backend, backend.settings).test_client()
    task = {"id": 1, "data": {"image": "/data/local-files/?d=a.png"}}
    body = {"tasks": [task, dict(task, id=2)], "label_config": CONFIG}
    held = backend.images.budget.reserve(backend.images.budget.capacity, wait=0)
    r = client.post("/predict", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 503 and "CLIPSEG_PIXEL_BUDGET" in r.get_json()["error"]
    assert int(r.headers["Retry-After"]) > 0
    held.release()
    r = client.post("/predict", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 200 and all("result" in p for p in r.get_json()["results"])
    assert backend.images.budget.in_flight == 0  # every image gave its pixels back

    # spent after the first task: that one is answered, the next asks to be retried
    real_load = backend.images.load
    calls = []

    def load_when_spent(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # someone else took every pixel meanwhile
            budget = backend.images.budget
            load_when_spent.held = budget.reserve(budget.capacity, 0)
        return real_load(*args, **kwargs)

    backend.images.load = load_when_spent
    r = client.post("/predict", data=json.dumps(body), content_type="application/json")
    first, second = r.get_json()["results"]
    assert "result" in first and "result" not in second and "busy" in second["error"]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"CLIPSEG_HEADER_TIMEOUT": "30", "CLIPSEG_BODY_TIMEOUT": "5"}, "CLIPSEG_BODY_TIMEOUT"),
        ({"CLIPSEG_HEADER_TIMEOUT": "0"}, "CLIPSEG_HEADER_TIMEOUT"),
        ({"CLIPSEG_WEBHOOK_JOURNAL_BYTES": "100"}, "CLIPSEG_WEBHOOK_JOURNAL_BYTES"),
        ({"CLIPSEG_MAX_IMAGE_PIXELS": "200000000"}, None),  # the budget follows a larger cap
    ],
)
def test_limit_settings(env, message):
    if message is None:
        settings = Settings.from_env(env)
        assert settings.pixel_budget == settings.max_image_pixels == 200_000_000
        return
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
