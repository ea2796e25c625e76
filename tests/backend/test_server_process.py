"""`clipseg-backend` for real: gunicorn serving a tiny random checkpoint over loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from backend_helpers import build_tiny_checkpoint, png_bytes
from test_server import REPO, backend_command

try:
    from clipseg import Predictor  # noqa: F401
except ImportError:  # until clipseg.Predictor is exported
    pytest.skip("clipseg.Predictor is not available", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gunicorn_serves_health_and_predict(tmp_path):
    checkpoint = build_tiny_checkpoint(tmp_path / "ckpt")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.png").write_bytes(png_bytes(64, 48))
    port = _free_port()
    env = {
        **os.environ,
        "CLIPSEG_MODEL": str(checkpoint),
        "CLIPSEG_DEVICE": "cpu",
        "CLIPSEG_THRESHOLD": "0",
        "MODEL_DIR": str(tmp_path / "data"),
        "LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path / "files"),
        "WORKERS": "2",
        "THREADS": "2",
    }
    proc = subprocess.Popen(
        [*backend_command(), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    health = json.load(r)
                break
            except OSError:
                time.sleep(0.3)
        assert health is not None, "server did not come up"
        assert health["status"] == "UP" and health["device"] == "cpu"
        body = {
            "tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=a.png"}}],
            "project": "3.1",
            "label_config": '<View><Image name="image" value="$image"/><BrushLabels name="tag" '
            'toName="image"><Label value="cat"/></BrushLabels></View>',
        }
        request = urllib.request.Request(
            f"{base}/predict", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            [pred] = json.load(r)["results"]
        assert pred["result"][0]["type"] == "brushlabels"
        assert pred["model_version"] == health["model_version"] + "+ex0"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "Booting worker" in out
