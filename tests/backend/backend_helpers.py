"""Fixtures for the backend tests: a fake Label Studio over loopback HTTP, test images, and a
tiny random CLIPSeg checkpoint saved with save_pretrained."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path | None:
    """../shared (or $CLIPSEG_SHARED_DIR) when present."""
    override = os.environ.get("CLIPSEG_SHARED_DIR")
    path = Path(override) if override else REPO.parent / "shared"
    return path if path.is_dir() else None


def protocol_dir() -> Path:
    """The recorded Label Studio bodies, or skip."""
    shared = shared_dir()
    if shared is None or not (shared / "ls-protocol").is_dir():
        pytest.skip("../shared/ls-protocol is absent (set CLIPSEG_SHARED_DIR to its parent)")
    return shared / "ls-protocol"


def load_recorded(name: str) -> dict:
    return json.loads((protocol_dir() / name).read_text(encoding="utf-8"))


def png_bytes(width: int = 320, height: int = 240, seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.zeros((height, width, 3), np.uint8)
    arr[..., 0] = 40
    y0, x0 = height // 4, width // 4
    arr[y0 : y0 + height // 2, x0 : x0 + width // 3] = (220, 30, 30)
    arr += rng.integers(0, 10, arr.shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


class FakeLabelStudio:
    """A loopback HTTP server that plays Label Studio: uploads, token refresh, presign, export.

    `token` is the key it accepts: a legacy token (`Token <key>`), or, when `personal` is true,
    a JWT refresh token exchanged at /api/token/refresh/ for `access-<n>` (sent as Bearer).
    """

    def __init__(self, token: str = "legacy-key", personal: bool = False) -> None:
        self.files: dict[str, bytes] = {}
        self.export: list[dict] = []
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, auth)
        self.token = token
        self.personal = personal
        self.access_serial = 0
        self.valid_access: set[str] = set()
        self.redirect_to: str | None = None  # presign redirects here + the decoded uri's path
        self.redirects: dict[str, str] = {}  # path -> Location, for any other GET
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status, body=b"", ctype="application/json", headers=None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization")
                if fake.personal:
                    return auth is not None and auth.removeprefix("Bearer ") in fake.valid_access
                return auth == f"Token {fake.token}"

            def do_POST(self):  # noqa: N802
                fake.requests.append(("POST", self.path, self.headers.get("Authorization")))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/api/token/refresh/":
                    if fake.personal and body.get("refresh") == fake.token:
                        fake.access_serial += 1
                        access = f"access-{fake.access_serial}"
                        fake.valid_access.add(access)
                        return self._send(200, json.dumps({"access": access}).encode())
                    return self._send(401, b'{"detail": "bad token"}')
                return self._send(404)

            def do_GET(self):  # noqa: N802
                fake.requests.append(("GET", self.path, self.headers.get("Authorization")))
                parsed = urlparse(self.path)
                if parsed.path.startswith("/public/"):
                    data = fake.files.get(parsed.path)
                    return self._send(200, data, "image/png") if data else self._send(404)
                if parsed.path in fake.redirects:
                    return self._send(302, headers={"Location": fake.redirects[parsed.path]})
                if not self._authorized():
                    return self._send(401, b'{"detail": "unauthorized"}')
                if parsed.path.startswith("/tasks/") and parsed.path.endswith("/presign/"):
                    uri = base64.urlsafe_b64decode(parse_qs(parsed.query)["fileuri"][0]).decode()
                    target = (fake.redirect_to or fake.url) + "/public/" + uri.split("://", 1)[1]
                    return self._send(303, headers={"Location": target})
                if parsed.path.startswith("/api/projects/") and parsed.path.endswith("/export"):
                    return self._send(200, json.dumps(fake.export).encode())
                key = self.path if parsed.path.startswith("/data/local-files") else parsed.path
                data = fake.files.get(key)
                if data is None:
                    return self._send(404, b'{"detail": "not found"}')
                return self._send(200, data, "image/png")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def expire_access_tokens(self) -> None:
        self.valid_access.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_jwt(payload: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"
