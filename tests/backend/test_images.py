"""Task image loading: sources, host policy, local-files root, limits, EXIF, tokens."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from backend_helpers import FakeLabelStudio, make_jwt, png_bytes
from PIL import Image

from backend.errors import LabelStudioError
from backend.images import (
    DisallowedSourceError,
    ImageError,
    ImageLoader,
    decode_image,
)
from backend.ls_client import LabelStudioClient
from backend.settings import Settings


def _settings(**kw) -> Settings:
    return Settings(**kw)


def test_upload_is_fetched_from_label_studio_with_legacy_token(fake_ls):
    fake_ls.files["/data/upload/1/a.png"] = png_bytes(64, 48)
    ls = LabelStudioClient(fake_ls.url, "legacy-key", 5)
    img = ImageLoader(_settings()).load(
        {"id": 1, "data": {"image": "/data/upload/1/a.png"}}, "image", ls
    )
    assert (img.width, img.height) == (64, 48)
    assert img.array.dtype == np.uint8 and img.array.shape == (48, 64, 3)
    assert fake_ls.requests[-1] == ("GET", "/data/upload/1/a.png", "Token legacy-key")


def test_personal_access_token_is_exchanged_and_refreshed_on_401():
    refresh = make_jwt({"token_type": "refresh", "exp": 4102444800})
    fake = FakeLabelStudio(token=refresh, personal=True)
    try:
        fake.files["/data/upload/1/a.png"] = png_bytes(32, 32)
        ls = LabelStudioClient(fake.url, refresh, 5)
        loader = ImageLoader(_settings())
        task = {"id": 1, "data": {"image": "/data/upload/1/a.png"}}
        loader.load(task, "image", ls)
        assert [r[1] for r in fake.requests] == ["/api/token/refresh/", "/data/upload/1/a.png"]
        assert fake.requests[-1][2] == "Bearer access-1"
        loader.load(task, "image", ls)  # cached access token: no new exchange
        assert sum(r[1] == "/api/token/refresh/" for r in fake.requests) == 1
        fake.expire_access_tokens()
        loader.load(task, "image", ls)  # 401 -> exchange again -> retry
        assert sum(r[1] == "/api/token/refresh/" for r in fake.requests) == 2
        assert fake.requests[-1][2] == "Bearer access-2"
    finally:
        fake.close()


def test_wrong_token_is_a_clear_error(fake_ls):
    fake_ls.files["/data/upload/1/a.png"] = png_bytes(32, 32)
    ls = LabelStudioClient(fake_ls.url, "wrong", 5)
    with pytest.raises(LabelStudioError, match="401.*personal access token"):
        ImageLoader(_settings()).load(
            {"id": 1, "data": {"image": "/data/upload/1/a.png"}}, "image", ls
        )


def test_local_files_read_under_document_root(tmp_path, fake_ls):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat 1.png").write_bytes(png_bytes(40, 30))
    loader = ImageLoader(_settings(local_files_document_root=str(tmp_path)))
    ls = LabelStudioClient(fake_ls.url, "legacy-key", 5)
    img = loader.load(
        {"id": 1, "data": {"image": "/data/local-files/?d=images/cat%201.png"}}, "image", ls
    )
    assert (img.width, img.height) == (40, 30)
    assert fake_ls.requests == []  # read from disk, not fetched


@pytest.mark.parametrize(
    "ref",
    [
        "/data/local-files/?d=../secret.png",
        "/data/local-files/?d=images/../../secret.png",
        "/data/local-files/?d=%2E%2E/secret.png",
        "/data/local-files/?d=images/link.png",
    ],
)
def test_local_files_path_traversal_is_refused(tmp_path, ref):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(png_bytes(8, 8))
    os.symlink(tmp_path / "secret.png", root / "images" / "link.png")
    loader = ImageLoader(_settings(local_files_document_root=str(root)))
    with pytest.raises(DisallowedSourceError, match="outside LOCAL_FILES_DOCUMENT_ROOT"):
        loader.load({"id": 1, "data": {"image": ref}}, "image", None)


def test_local_files_without_root_go_through_label_studio(fake_ls):
    fake_ls.files["/data/local-files/?d=images/cat1.png"] = png_bytes(20, 10)
    ls = LabelStudioClient(fake_ls.url, "legacy-key", 5)
    img = ImageLoader(_settings()).load(
        {"id": 1, "data": {"image": "/data/local-files/?d=images/cat1.png"}}, "image", ls
    )
    assert (img.width, img.height) == (20, 10)


def test_disallowed_host_is_refused_without_a_request(fake_ls):
    other = FakeLabelStudio()
    try:
        other.files["/public/x.png"] = png_bytes(8, 8)
        ls = LabelStudioClient(fake_ls.url, "legacy-key", 5)
        # same host, other port: not Label Studio, not allowed
        url = other.url.replace("127.0.0.1", "localhost") + "/public/x.png"
        with pytest.raises(DisallowedSourceError, match="CLIPSEG_ALLOWED_HOSTS"):
            ImageLoader(_settings()).load({"id": 1, "data": {"image": url}}, "image", ls)
        assert other.requests == [] and fake_ls.requests == []
        # allowed once the operator lists it; no credentials are sent there
        port = other.server.server_port
        loader = ImageLoader(_settings(allowed_hosts=(f"localhost:{port}",)))
        assert loader.load({"id": 1, "data": {"image": url}}, "image", ls).width == 8
        assert other.requests == [("GET", "/public/x.png", None)]
    finally:
        other.close()


def test_cloud_uri_goes_through_presign_and_follows_its_redirect(fake_ls):
    storage = FakeLabelStudio()
    try:
        storage.files["/public/bucket/img.png"] = png_bytes(16, 12)
        fake_ls.redirect_to = storage.url
        ls = LabelStudioClient(fake_ls.url, "legacy-key", 5)
        img = ImageLoader(_settings()).load(
            {"id": 7, "data": {"image": "s3://bucket/img.png"}}, "image", ls
        )
        assert (img.width, img.height) == (16, 12)
        assert fake_ls.requests[0][1].startswith("/tasks/7/presign/?fileuri=")
        assert storage.requests == [("GET", "/public/bucket/img.png", None)]  # no credentials
    finally:
        storage.close()


def test_redirect_to_a_disallowed_host_is_refused(fake_ls):
    other = FakeLabelStudio()
    try:
        other.files["/public/x.png"] = png_bytes(8, 8)
        fake_ls.redirects["/data/upload/x.png"] = (
            other.url.replace("127.0.0.1", "localhost") + "/public/x.png"
        )
        ls = LabelStudioClient(fake_ls.url, "legacy-key", 5)
        with pytest.raises(DisallowedSourceError):
            ImageLoader(_settings()).load(
                {"id": 1, "data": {"image": "/data/upload/x.png"}}, "image", ls
            )
        assert other.requests == []
    finally:
        other.close()


def test_missing_key_and_bad_references(fake_ls):
    loader = ImageLoader(_settings())
    with pytest.raises(ImageError, match="no data key 'image'"):
        loader.load({"id": 1, "data": {"img": "x"}}, "image", None)
    with pytest.raises(ImageError, match="LABEL_STUDIO_URL"):
        loader.load({"id": 1, "data": {"image": "/data/upload/1/a.png"}}, "image", None)
    with pytest.raises(DisallowedSourceError):
        loader.load({"id": 1, "data": {"image": "file:///etc/passwd"}}, "image", None)
    ls = LabelStudioClient(fake_ls.url, "legacy-key", 5)
    with pytest.raises(ImageError, match="HTTP 404"):
        loader.load({"id": 1, "data": {"image": "/data/upload/missing.png"}}, "image", ls)


def test_download_size_cap(fake_ls):
    fake_ls.files["/data/upload/big.png"] = png_bytes(64, 64)
    ls = LabelStudioClient(fake_ls.url, "legacy-key", 5)
    loader = ImageLoader(_settings(max_download_bytes=100))
    with pytest.raises(ImageError, match="CLIPSEG_MAX_DOWNLOAD_BYTES"):
        loader.load({"id": 1, "data": {"image": "/data/upload/big.png"}}, "image", ls)


def test_pixel_cap_is_checked_before_decoding(monkeypatch):
    data = png_bytes(100, 100)
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(1))
    with pytest.raises(ImageError, match="CLIPSEG_MAX_IMAGE_PIXELS"):
        decode_image(data, _settings(max_image_pixels=9999))
    assert loaded == []


def test_corrupt_and_unsupported_images():
    with pytest.raises(ImageError, match="not a supported image"):
        decode_image(b"not an image at all", _settings())
    truncated = png_bytes(64, 64)[:200]
    with pytest.raises(ImageError):
        decode_image(truncated, _settings())
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PDF")
    with pytest.raises(ImageError, match="not a supported image"):
        decode_image(buf.getvalue(), _settings())


def test_what_came_instead_of_an_image_is_named():
    page = b"<!DOCTYPE html>\n<html><head><title>Log in</title></head></html>"
    with pytest.raises(ImageError, match="an HTML page, not an image .*LABEL_STUDIO_API_KEY"):
        decode_image(page, _settings(), "/data/upload/1/a.png")
    with pytest.raises(ImageError, match="JSON, not an image"):
        decode_image(b'{"detail": "not found"}', _settings())
    with pytest.raises(ImageError, match="empty file"):
        decode_image(b"", _settings())
    with pytest.raises(ImageError, match=r"19 bytes starting b'not an image at " + "'"):
        decode_image(b"not an image at all", _settings())
    with pytest.raises(ImageError, match="valueList"):
        ImageLoader(_settings()).load({"id": 1, "data": {"image": ["a", "b"]}}, "image", None)


def test_base64_data_uris_are_decoded_within_the_byte_cap():
    import base64

    uri = "data:image/png;base64," + base64.b64encode(png_bytes(64, 48)).decode()
    img = ImageLoader(_settings()).load({"id": 1, "data": {"image": uri}}, "image", None)
    assert (img.width, img.height) == (64, 48)
    assert img.source.startswith("data:image/png;base64,") and len(img.source) < 100
    with pytest.raises(ImageError, match="CLIPSEG_MAX_DOWNLOAD_BYTES"):
        ImageLoader(_settings(max_download_bytes=100)).load(
            {"id": 1, "data": {"image": uri}}, "image", None
        )
    for bad, message in (("data:image/png,rawbytes", "only base64"), ("data:;base64,@@", "base64")):
        with pytest.raises(ImageError, match=message):
            ImageLoader(_settings()).load({"id": 1, "data": {"image": bad}}, "image", None)


def test_exif_orientation_applied_and_modes_converted():
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, :5] = 255  # white strip on the left
    image = Image.fromarray(arr)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    img = decode_image(buf.getvalue(), _settings())
    assert (img.width, img.height) == (10, 30)  # as Label Studio shows it
    assert img.array[:5].mean() > 200  # the strip is now on top
    for mode in ("L", "RGBA", "P", "I;16", "1", "CMYK"):
        buf = io.BytesIO()
        src = Image.new(mode, (6, 4))
        src.save(buf, format="TIFF")
        out = decode_image(buf.getvalue(), _settings())
        assert out.array.shape == (4, 6, 3) and out.array.dtype == np.uint8, mode


@pytest.fixture
def dripping_url():
    """A server that sends a PNG one byte every 50 ms: never a 0.5 s silence, never done soon."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    data = png_bytes(64, 48)

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass  # the client gave up

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/slow.png"
    server.shutdown()
    server.server_close()


def test_a_server_that_drips_its_bytes_is_cut_off_at_the_timeout(dripping_url):
    """CLIPSEG_HTTP_TIMEOUT bounds the whole download, not only each wait for bytes."""
    import time

    loader = ImageLoader(_settings(http_timeout=0.5, allowed_hosts=("127.0.0.1",)))
    start = time.monotonic()
    with pytest.raises(ImageError, match="took over 0.5 s"):
        loader.load({"id": 1, "data": {"image": dripping_url}}, "image", None)
    assert time.monotonic() - start < 3.0


def test_the_callers_deadline_cuts_a_download_short(dripping_url):
    """A /predict's time budget ends downloads before CLIPSEG_HTTP_TIMEOUT would."""
    import time

    loader = ImageLoader(_settings(http_timeout=30, allowed_hosts=("127.0.0.1",)))
    start = time.monotonic()
    with pytest.raises(ImageError, match="took over 0.[45]"):
        loader.load({"id": 1, "data": {"image": dripping_url}}, "image", None, start + 0.5)
    assert time.monotonic() - start < 3.0
    with pytest.raises(ImageError, match="out of time"):
        loader.load({"id": 1, "data": {"image": dripping_url}}, "image", None, start - 1)
