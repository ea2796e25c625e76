"""Issue 16's reproductions beyond tests/backend/test_url_policy.py, against real HTTP servers on
127.0.0.1 (Label Studio) and 127.0.0.2 (another host): the key only to Label Studio's origin
(scheme included), redirects bounded, /setup through the HTTP routes; local files that are not
regular files, read deadlines, null bytes and server paths through /predict."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from backend_helpers import CONFIG, FakeLabelStudio, fake_backend, make_jwt, png_bytes

from backend.errors import LabelStudioError
from backend.images import DisallowedSourceError, ImageLoader
from backend.ls_client import LabelStudioClient
from backend.server import create_app
from backend.settings import Settings

KEY = "legacy-key"


class OtherHost:
    """An HTTP server on 127.0.0.2 (not Label Studio) that records every request it gets and
    serves a PNG for any path (so a request that reaches it would succeed)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        image = png_bytes(16, 16)
        other = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                other.requests.append((self.path, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)

        self.server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.2:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keys_received(self) -> list[str]:
        return [h["Authorization"] for _, h in self.requests if "Authorization" in h]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def other():
    server = OtherHost()
    yield server
    server.close()


def _ls_port(fake_ls: FakeLabelStudio) -> int:
    return fake_ls.server.server_port


def _load(loader: ImageLoader, ref: str, ls: LabelStudioClient | None):
    return loader.load({"id": 1, "data": {"image": ref}}, "image", ls)


# ---- the reproductions: the other host never receives the key (nor any request)


def test_backslash_userinfo_bypass_of_the_label_studio_origin(fake_ls, other):
    """Issue 16, 1: the URL passed the check as Label Studio's host and connected to the other,
    which received `Authorization: Token <key>`."""
    ls = LabelStudioClient(fake_ls.url, KEY, 5)
    url = f"{other.url}\\@127.0.0.1:{_ls_port(fake_ls)}/img.png"
    with pytest.raises(DisallowedSourceError, match="backslash"):
        _load(ImageLoader(Settings()), url, ls)
    assert other.requests == [] and fake_ls.requests == []


def test_backslash_userinfo_bypass_of_the_allowlist(fake_ls, other):
    loader = ImageLoader(Settings(allowed_hosts=(f"127.0.0.1:{_ls_port(fake_ls)}",)))
    url = f"{other.url}\\@127.0.0.1:{_ls_port(fake_ls)}/img.png"
    with pytest.raises(DisallowedSourceError):
        _load(loader, url, LabelStudioClient(fake_ls.url, KEY, 5))
    assert other.requests == []


class RecordingOther(OtherHost):
    """`OtherHost` that also records POST bodies (a redirected token exchange would land here)."""

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[bytes] = []
        handler = self.server.RequestHandlerClass
        recorder = self

        def do_POST(self):  # noqa: N802
            recorder.posts.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        handler.do_POST = do_POST


def test_label_studio_api_redirects_are_not_followed_with_credentials(fake_ls, other):
    """An API answer that redirects (to another host, or to the same host under another
    scheme, which `requests` would follow with the Authorization header) is an error that names
    the redirect; nothing reaches the other host."""
    ls = LabelStudioClient(fake_ls.url, KEY, 5)
    fake_ls.redirects["/api/projects/1/export"] = f"{other.url}/export"
    with pytest.raises(LabelStudioError, match="redirect to .*127.0.0.2.*LABEL_STUDIO_URL"):
        ls.get_json("/api/projects/1/export", params={"exportType": "JSON"})
    assert other.requests == []
    assert [p for _, p, _ in fake_ls.requests] == ["/api/projects/1/export?exportType=JSON"]


def test_the_token_exchange_is_not_redirected_with_the_refresh_token():
    """A 307 from /api/token/refresh/ would make `requests` resend the JSON body, the refresh
    token itself, to the Location; the exchange refuses the redirect instead."""
    fake_ls_personal = FakeLabelStudio(
        token=make_jwt({"token_type": "refresh", "exp": 4102444800}), personal=True
    )
    recorder = RecordingOther()
    try:
        fake_ls_personal.redirects["/api/token/refresh/"] = f"{recorder.url}/api/token/refresh/"
        ls = LabelStudioClient(fake_ls_personal.url, fake_ls_personal.token, 5)
        with pytest.raises(LabelStudioError, match="HTTP 307 for /api/token/refresh/"):
            ls.get_json("/api/projects/1/export")
        assert recorder.posts == [] and recorder.requests == []
    finally:
        recorder.close()
        fake_ls_personal.close()


@pytest.mark.parametrize("allow_other", [False, True])
def test_redirect_from_label_studio_is_rechecked_and_carries_no_key(fake_ls, other, allow_other):
    ls = LabelStudioClient(fake_ls.url, KEY, 5)
    fake_ls.redirects["/data/upload/1/a.png"] = f"{other.url}/img.png"
    fake_ls.redirects["/data/upload/1/b.png"] = f"{other.url}\\@{fake_ls.url[7:]}/img.png"
    allowed = (f"127.0.0.2:{other.port}",) if allow_other else ()
    loader = ImageLoader(Settings(allowed_hosts=allowed))
    if allow_other:  # followed to an allowed host, without the key
        assert _load(loader, "/data/upload/1/a.png", ls).width == 16
        assert [p for p, _ in other.requests] == ["/img.png"]
    else:
        with pytest.raises(DisallowedSourceError, match="CLIPSEG_ALLOWED_HOSTS"):
            _load(loader, "/data/upload/1/a.png", ls)
        assert other.requests == []
    with pytest.raises(DisallowedSourceError, match="backslash"):
        _load(loader, "/data/upload/1/b.png", ls)
    assert other.keys_received() == []
    assert len(other.requests) == (1 if allow_other else 0)


def test_redirect_loop_is_bounded(fake_ls):
    fake_ls.redirects["/data/upload/loop.png"] = "/data/upload/loop.png"
    with pytest.raises(Exception, match="too many redirects"):
        _load(
            ImageLoader(Settings()), "/data/upload/loop.png", LabelStudioClient(fake_ls.url, KEY, 5)
        )
    assert len(fake_ls.requests) == 4  # the first request and 3 redirects


def test_the_key_goes_only_to_the_label_studio_origin(fake_ls, other):
    """Same host and port but another scheme is another origin: no key (and not allowed)."""
    ls = LabelStudioClient(fake_ls.url, KEY, 5)
    assert ls.owns(f"{fake_ls.url}/data/upload/x.png")
    assert not ls.owns(fake_ls.url.replace("http://", "https://") + "/data/upload/x.png")
    assert not ls.owns(f"{other.url}/x.png")
    with pytest.raises(DisallowedSourceError):
        ls.get(f"{other.url}/x.png")
    loader = ImageLoader(Settings(allowed_hosts=(f"127.0.0.2:{other.port}",)))
    assert _load(loader, f"{other.url}/x.png", ls).width == 16
    assert other.keys_received() == []


def test_predict_never_sends_the_key_to_the_other_host(tmp_path, fake_ls, other):
    """Through /predict: every variant answers the task without a result, and the other host
    is never contacted."""
    fake_ls.redirects["/data/upload/r.png"] = f"{other.url}/img.png"
    backend = fake_backend(
        tmp_path,
        label_studio_url=fake_ls.url,
        label_studio_api_key=KEY,
        allowed_hosts=(f"127.0.0.1:{_ls_port(fake_ls)}",),
    )
    client = create_app(backend, backend.settings).test_client()
    refs = [
        f"{other.url}\\@127.0.0.1:{_ls_port(fake_ls)}/img.png",
        f"{other.url}/\\@127.0.0.1:{_ls_port(fake_ls)}/img.png",
        "/data/upload/r.png",
    ]
    body = {
        "tasks": [{"id": i, "data": {"image": ref}} for i, ref in enumerate(refs)],
        "label_config": CONFIG,
        "project": "1.1",
    }
    r = client.post("/predict", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 200
    assert ["result" in p for p in r.get_json()["results"]] == [False, False, False]
    assert other.requests == []


# ---- /setup's hostname (issue 16, 2)


def _setup_then_predict(client, hostname: str, token: str | None, ref: str) -> dict:
    setup = {"project": "5.1", "schema": CONFIG, "hostname": hostname}
    if token is not None:
        setup["access_token"] = token
    r = client.post("/setup", data=json.dumps(setup), content_type="application/json")
    assert r.status_code == 200
    body = {"tasks": [{"id": 1, "data": {"image": ref}}], "label_config": CONFIG, "project": "5.1"}
    r = client.post("/predict", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 200
    return r.get_json()["results"][0]


def test_setup_cannot_point_the_configured_key_at_another_host(tmp_path, other):
    """The reproduction: a key, no LABEL_STUDIO_URL, no basic auth; /setup names the other
    host; /predict of an upload. The other host must not receive the key (nor any request)."""
    backend = fake_backend(tmp_path, label_studio_api_key=KEY)
    client = create_app(backend, backend.settings).test_client()
    pred = _setup_then_predict(client, other.url, None, "/data/upload/5/img.png")
    assert "result" not in pred and "LABEL_STUDIO_URL" in pred["error"]
    pred = _setup_then_predict(client, other.url, "its-own-token", "/data/upload/5/img.png")
    assert "result" not in pred
    pred = _setup_then_predict(client, other.url, "x", f"{other.url}/img.png")
    assert "result" not in pred
    assert other.requests == []


def test_setup_hostname_other_than_label_studio_url_is_ignored(tmp_path, fake_ls, other):
    fake_ls.files["/data/upload/5/img.png"] = png_bytes(32, 32)
    backend = fake_backend(tmp_path, label_studio_url=fake_ls.url, label_studio_api_key=KEY)
    client = create_app(backend, backend.settings).test_client()
    pred = _setup_then_predict(client, other.url, "its-own-token", "/data/upload/5/img.png")
    assert "result" in pred  # from LABEL_STUDIO_URL, with the configured key
    assert fake_ls.requests[-1] == ("GET", "/data/upload/5/img.png", f"Token {KEY}")
    assert other.requests == []


def test_setup_token_is_used_only_with_its_own_hostname(tmp_path, fake_ls, other):
    """No key configured: /setup's token goes to /setup's hostname when it is LABEL_STUDIO_URL's
    origin, or when no URL is configured; never to another host."""
    fake_ls.files["/data/upload/5/img.png"] = png_bytes(32, 32)
    backend = fake_backend(tmp_path, label_studio_url=fake_ls.url)
    client = create_app(backend, backend.settings).test_client()
    assert "result" in _setup_then_predict(client, fake_ls.url, KEY, "/data/upload/5/img.png")
    assert fake_ls.requests[-1][2] == f"Token {KEY}"
    # a token that came with another hostname is not sent to LABEL_STUDIO_URL either
    _setup_then_predict(client, other.url, "stolen-elsewhere", "/data/upload/5/img.png")
    assert fake_ls.requests[-1][2] is None and other.requests == []

    backend = fake_backend(tmp_path / "b")  # nothing configured: Label Studio's own behaviour
    client = create_app(backend, backend.settings).test_client()
    assert "result" in _setup_then_predict(client, fake_ls.url, KEY, "/data/upload/5/img.png")
    assert fake_ls.requests[-1] == ("GET", "/data/upload/5/img.png", f"Token {KEY}")
    pred = _setup_then_predict(client, other.url, None, "/data/upload/5/img.png")
    assert "result" not in pred and other.requests == []  # a hostname without a token: unused


# ---- local files that are not regular files, null bytes, server paths (issue 16, 4 and 8)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (root / "images" / "ok.png").write_bytes(png_bytes(24, 16))
    return root


def _local(loader: ImageLoader, relative: str, deadline: float | None = None):
    task = {"id": 1, "data": {"image": f"/data/local-files/?d={relative}"}}
    return loader.load(task, "image", None, deadline)


def test_a_fifo_is_refused_before_it_is_opened(root):
    import os
    import time

    os.mkfifo(root / "images" / "pipe.png")
    loader = ImageLoader(Settings(local_files_document_root=str(root)))
    start = time.monotonic()
    with pytest.raises(DisallowedSourceError, match="images/pipe.png is a FIFO"):
        _local(loader, "images/pipe.png")
    assert time.monotonic() - start < 1.0  # did not wait for a writer


def test_sockets_devices_and_directories_are_refused(root):
    import os
    import socket
    import stat

    loader = ImageLoader(Settings(local_files_document_root=str(root)))
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / "images" / "sock.png"))
        with pytest.raises(DisallowedSourceError, match="is a socket"):
            _local(loader, "images/sock.png")
    with pytest.raises(DisallowedSourceError, match="is a directory"):
        _local(loader, "images")
    try:
        os.mknod(root / "images" / "null.png", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        return  # creating a device node needs privileges; the check is the same as above
    with pytest.raises(DisallowedSourceError, match="is a character device"):
        _local(loader, "images/null.png")


def test_a_local_read_has_a_deadline(root):
    import time

    loader = ImageLoader(Settings(local_files_document_root=str(root)))
    assert _local(loader, "images/ok.png").width == 24
    with pytest.raises(Exception, match="took over"):
        _local(loader, "images/ok.png", deadline=time.monotonic() - 1)


def test_null_byte_in_a_path_is_a_clear_error_without_traceback(tmp_path, root, caplog):
    loader = ImageLoader(Settings(local_files_document_root=str(root)))
    with pytest.raises(DisallowedSourceError, match="null byte"):
        _local(loader, "images/ok.png%00.jpg")
    backend = fake_backend(tmp_path, local_files_document_root=str(root))
    client = create_app(backend, backend.settings).test_client()
    body = {
        "tasks": [
            {"id": 1, "data": {"image": "/data/local-files/?d=images/ok.png%00.jpg"}},
            {"id": 2, "data": {"image": "/data/local-files/?d=images/ok.png"}},
        ],
        "label_config": CONFIG,
    }
    with caplog.at_level("INFO"):
        r = client.post("/predict", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 200
    first, second = r.get_json()["results"]
    assert "null byte" in first["error"] and "result" in second
    assert not [rec for rec in caplog.records if rec.exc_info]


def test_client_facing_errors_carry_no_server_paths(tmp_path, root, monkeypatch):
    import os

    os.mkfifo(root / "images" / "pipe.png")
    (root / "images" / "big.png").write_bytes(b"\0" * 2000)
    backend = fake_backend(tmp_path, local_files_document_root=str(root), max_download_bytes=1000)
    client = create_app(backend, backend.settings).test_client()
    refs = ["missing.png", "images", "images/pipe.png", "images/big.png", "../outside.png"]
    body = {
        "tasks": [
            {"id": i, "data": {"image": f"/data/local-files/?d={ref}"}}
            for i, ref in enumerate(refs)
        ],
        "label_config": CONFIG,
    }
    r = client.post("/predict", data=json.dumps(body), content_type="application/json")
    errors = [p["error"] for p in r.get_json()["results"]]
    assert len(errors) == len(refs) and all(errors)
    assert not [e for e in errors if str(tmp_path) in e], errors

    def boom(*args, **kwargs):
        raise ValueError(f"cannot map {tmp_path}/model-dir/weights")

    monkeypatch.setattr(backend.predictor, "set_image", boom)
    body["tasks"] = [{"id": 9, "data": {"image": "/data/local-files/?d=images/ok.png"}}]
    r = client.post("/predict", data=json.dumps(body), content_type="application/json")
    [pred] = r.get_json()["results"]
    assert "ValueError" in pred["error"] and str(tmp_path) not in pred["error"]
