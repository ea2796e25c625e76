"""Where the API key may go (issue 16, items 1 and 2): one strict URL parser both checks and
connects, every redirect hop is re-checked, and /setup's hostname never redirects the configured
key. Two loopback servers play Label Studio (127.0.0.1) and another host (127.0.0.2); the other
host must never receive the key."""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from backend.images import (
    DisallowedSourceError,
    ImageError,
    ImageLoader,
    parse_http_url,
)
from backend.ls_client import LabelStudioClient, label_studio_client
from backend.settings import Settings

KEY = "secret-legacy-key"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class Recorder:
    """A loopback HTTP server that records (path, Authorization) and serves a PNG, or a
    redirect for paths in `redirects`."""

    def __init__(self, host: str) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.redirects: dict[str, str] = {}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                recorder.seen.append((self.path, self.headers.get("Authorization")))
                if self.path in recorder.redirects:
                    self.send_response(302)
                    self.send_header("Location", recorder.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = _png()
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    label_studio, other = Recorder("127.0.0.1"), Recorder("127.0.0.2")
    yield label_studio, other
    label_studio.close()
    other.close()


def _loader(ls_url: str, **kw) -> tuple[ImageLoader, LabelStudioClient]:
    settings = Settings(label_studio_url=ls_url, label_studio_api_key=KEY, http_timeout=5, **kw)
    return ImageLoader(settings), label_studio_client(settings, None, None)


def _other_port(other: Recorder) -> int:
    return other.server.server_port


def test_a_backslash_userinfo_url_is_refused_and_the_other_host_gets_nothing(servers):
    ls, other = servers
    loader, client = _loader(ls.url)
    authority = ls.url.removeprefix("http://")
    sneaky = f"http://127.0.0.2:{_other_port(other)}\\@{authority}/img.png"
    with pytest.raises(DisallowedSourceError):
        loader.load({"id": 1, "data": {"image": sneaky}}, "image", client)
    assert other.seen == []
    # the plain form of the same trick (userinfo) is refused too
    with pytest.raises(DisallowedSourceError):
        loader.load({"id": 1, "data": {"image": f"http://x@{authority}/img.png"}}, "image", client)
    assert other.seen == []


def test_the_bypass_through_allowed_hosts_is_refused(servers):
    ls, other = servers
    loader, client = _loader(ls.url, allowed_hosts=("127.0.0.1",))
    sneaky = f"http://127.0.0.2:{_other_port(other)}\\@127.0.0.1:1/img.png"
    with pytest.raises(DisallowedSourceError):
        loader.load({"id": 1, "data": {"image": sneaky}}, "image", client)
    assert other.seen == []


def test_label_studio_gets_the_key_and_a_redirect_elsewhere_never_does(servers):
    ls, other = servers
    loader, client = _loader(ls.url)
    ls.redirects["/data/upload/1/a.png"] = f"{other.url}/stolen.png"
    with pytest.raises(DisallowedSourceError, match="not the Label Studio host"):
        loader.load({"id": 1, "data": {"image": "/data/upload/1/a.png"}}, "image", client)
    assert ls.seen == [("/data/upload/1/a.png", f"Token {KEY}")]
    assert other.seen == []
    # a presigned redirect may lead anywhere, but without the key
    ls.redirects["/tasks/7/presign/?fileuri=czM6Ly9iL2EucG5n"] = f"{other.url}/bucket/a.png"
    image = loader.load({"id": 7, "data": {"image": "s3://b/a.png"}}, "image", client)
    assert image.width == 8
    assert other.seen == [("/bucket/a.png", None)]


def test_a_redirect_hop_that_hides_another_host_is_refused(servers):
    ls, other = servers
    loader, client = _loader(ls.url, allowed_hosts=("127.0.0.1",))
    authority = ls.url.removeprefix("http://")
    ls.redirects["/a.png"] = f"http://127.0.0.2:{_other_port(other)}\\@{authority}/b.png"
    with pytest.raises(DisallowedSourceError):
        loader.load({"id": 1, "data": {"image": "/a.png"}}, "image", client)
    assert other.seen == []


def test_setup_hostname_never_takes_the_configured_key_elsewhere(servers):
    ls, other = servers
    # key configured, no LABEL_STUDIO_URL: a /setup hostname is not used at all
    settings = Settings(label_studio_api_key=KEY)
    assert label_studio_client(settings, other.url, None) is None
    # LABEL_STUDIO_URL configured: it wins over any hostname
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=KEY)
    assert label_studio_client(settings, other.url, "their-token").base_url == ls.url
    # nothing configured: Label Studio's own behaviour, its host with its token
    client = label_studio_client(Settings(), other.url, "their-token")
    assert client.base_url == other.url and client.api_key == "their-token"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2:1\\@127.0.0.1:2/a.png",
        "http://user:pw@127.0.0.1/a.png",
        "ftp://127.0.0.1/a.png",
        "http://127.0.0.1%2e/a.png",
        "http://127.0.0.1/a b.png",
        "http://127.0.0.1/a\x00.png",
        "http:///a.png",
        "http://127.0.0.1:99999/a.png",
    ],
)
def test_the_parser_refuses_what_parsers_disagree_on(url):
    with pytest.raises(DisallowedSourceError):
        parse_http_url(url)


def test_the_parser_keeps_what_it_checked():
    parsed = parse_http_url("HTTP://LocalHost/x/y.png?a=1")
    assert parsed.origin == ("http", "localhost", 80)
    assert parsed.url == "http://localhost:80/x/y.png?a=1"
    assert parse_http_url("https://[::1]:8443/a").origin == ("https", "[::1]", 8443)
    assert isinstance(DisallowedSourceError("x"), ImageError)
