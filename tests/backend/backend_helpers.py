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

from clipseg.demo.vocabulary import bytes_to_unicode

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
        self.redirects: dict[
            str, str
        ] = {}  # path -> Location, for any other GET (302), a POST (307)
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
                if self.path in fake.redirects:  # 307: a client that follows resends the body
                    return self._send(307, headers={"Location": fake.redirects[self.path]})
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


class FakePredictor:
    """A stand-in for `clipseg.Predictor` with known answers, for protocol and logic tests.

    The probability of a pixel is `red(pixel) * e[0]` where `e` is the conditional embedding:
    text embeddings have e[0] = 0.9 for prompts containing "cat" or "red", else 0.1; every
    exemplar embedding has e[0] = 0.9. So "cat" finds the red rectangle, "dog" finds nothing
    until it has exemplars (0.5 * 0.1 + 0.5 * 0.9 = 0.5 > 0.3).
    """

    dim = 8

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.image = None
        self.images = None  # after set_images: predict_embeddings returns one result per image
        self.device = "cpu"
        self.dtype = torch.float32
        self.calls: list[tuple[str, object]] = []
        self.active = 0
        self.max_active = 0

    def _enter(self) -> None:
        import time

        self.active += 1
        self.max_active = max(self.max_active, self.active)
        time.sleep(0.001)
        self.active -= 1

    def set_image(self, image) -> None:
        self._enter()
        self.image = np.asarray(image)
        self.images = None
        self.calls.append(("set_image", self.image.shape))

    def set_images(self, images) -> None:
        self._enter()
        self.images = [np.asarray(image) for image in images]
        self.image = self.images[0]
        self.calls.append(("set_images", len(self.images)))

    def embed_text(self, texts):
        self.calls.append(("embed_text", list(texts)))
        out = self.torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            out[i, 0] = 0.9 if ("cat" in t.lower() or "red" in t.lower()) else 0.1
            out[i, 1] = (sum(map(ord, t)) % 97) / 97.0
        return out

    def embed_exemplar(self, image, mask=None, box=None):
        self.calls.append(("embed_exemplar", "mask" if mask is not None else box))
        out = self.torch.zeros(self.dim)
        out[0] = 0.9
        return out

    def predict_embeddings(self, embeddings):
        if self.image is None:
            raise RuntimeError("call set_image first")
        self._enter()
        self.calls.append(("predict_embeddings", tuple(embeddings.shape)))
        e0 = embeddings[:, 0].detach().cpu().numpy().astype(np.float32)

        def maps(image):
            img = image.astype(np.float32)
            red = ((img[..., 0] > 150) & (img[..., 1] < 100)).astype(np.float32)
            return np.clip(red[None] * e0[:, None, None], 0, 1).astype(np.float32)

        return [maps(image) for image in self.images] if self.images else maps(self.image)

    def predict(self, prompts):
        return self.predict_embeddings(self.embed_text(prompts))


def fake_backend(tmp_path, **settings):
    """A CLIPSegBackend over a FakePredictor, storing under tmp_path."""
    from backend.model import CLIPSegBackend
    from backend.settings import Settings

    settings.setdefault("model_dir", str(tmp_path / "model-dir"))
    return CLIPSegBackend(
        Settings(**settings),
        FakePredictor(),
        model_name="clipseg-fake",
        weights_hash="0123abcd",
        is_demo=False,
        device="cpu",
        dtype="float32",
    )


CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>'
    '<PolygonLabels name="poly" toName="image"><Label value="cat"/></PolygonLabels>'
    '<RectangleLabels name="box" toName="image" smart="true"><Label value="cat"/></RectangleLabels>'
    '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="cat"/></KeyPointLabels>'
    "</View>"
)


def check_result_item(item: dict, width: int, height: int) -> None:
    """Asserts that one Label Studio result item is well formed."""
    assert {"from_name", "to_name", "type", "value", "original_width", "original_height"} <= set(
        item
    )
    assert (item["original_width"], item["original_height"]) == (width, height)
    kind, value = item["type"], item["value"]
    assert isinstance(value[kind], list) and value[kind]
    if kind == "brushlabels":
        assert value["format"] == "rle" and all(isinstance(v, int) for v in value["rle"])
    elif kind == "polygonlabels":
        assert len(value["points"]) >= 3
        assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in value["points"])
    elif kind == "rectanglelabels":
        assert 0 <= value["x"] <= 100 and 0 <= value["y"] <= 100
        assert 0 < value["width"] <= 100 and 0 < value["height"] <= 100
    else:
        raise AssertionError(f"unexpected result type {kind}")
    if "score" in item:
        assert 0.0 <= item["score"] <= 1.0


def build_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A tiny random CLIPSeg (save_pretrained) with a byte-level CLIP vocabulary (no merges:
    every string, any language, tokenizes to its bytes) and its processor, in `directory`."""
    import torch

    from clipseg import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegImageProcessor,
        CLIPSegProcessor,
        CLIPSegTextConfig,
        CLIPSegVisionConfig,
        CLIPTokenizer,
    )

    symbols = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    text = CLIPSegTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    vision = CLIPSegVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        patch_size=32,
    )
    config = CLIPSegConfig.from_text_vision_configs(
        text,
        vision,
        projection_dim=16,
        extract_layers=[1, 2, 3],
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(config)
    model.save_pretrained(directory)
    tokenizer = CLIPTokenizer(vocab, [])
    CLIPSegProcessor(CLIPSegImageProcessor(), tokenizer).save_pretrained(directory)
    return Path(directory)
