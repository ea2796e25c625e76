"""`clipseg-backend` as a real process (gunicorn) on loopback, for the tests that need the real
server: slow clients, kill -9."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_command() -> list[str]:
    """The installed `clipseg-backend` console script (or its entry point when not installed)."""
    script = Path(sys.executable).with_name("clipseg-backend")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from backend.server import main; main()"]


class BackendProcess:
    """`clipseg-backend --port P` with `env` on top of ours; its output goes to `log`."""

    def __init__(self, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "CLIPSEG_DEVICE": "cpu", **env}
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        )
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> BackendProcess:
        handle = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self._handle = handle
        self.proc = subprocess.Popen(
            [*backend_command(), "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clipseg-backend exited: {self.log.read_text()[-3000:]}")
            try:
                self.get("/health", timeout=2)
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"clipseg-backend did not come up: {self.log.read_text()[-3000:]}")

    def get(self, path: str, timeout: float = 5) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
            return json.load(r)

    def post(self, path: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the children of the master (this process)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in children.read_text().split()]

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._handle.close()

    def __enter__(self) -> BackendProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
