"""Our `clipseg-backend` as the end-to-end tests run it: started next to a Label Studio, asked
for its model_version and its learning loop's status.

Plumbing shared by the test modules (no assertions about the backend's answers).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from .label_studio import LabelStudio, ManagedProcess, ProcessRegistry, free_port, wait_http

BACKEND_MODEL = "demo"  # CLIPSEG_MODEL of the backend: the bundled demo model
BACKEND_START_TIMEOUT = 180.0


def console_script(name: str) -> Path:
    """The console script ``name`` of the interpreter running the tests (a PATH lookup may find
    a shim of another environment)."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return exe
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed: pip install -e . in this environment")
    return Path(found)


def start_backend(
    reg: ProcessRegistry,
    ls: LabelStudio,
    workdir: Path,
    docroot: Path,
    env: Mapping[str, str] | None = None,
    name: str = "",
) -> tuple[str, Path, ManagedProcess]:
    """`clipseg-backend` on 127.0.0.1:<free port> with the demo model: (url, MODEL_DIR, process).

    Its environment is this process's without our settings (PYTHONPATH stays: a checkout on it
    is what the backend imports), plus the demo model, a fresh MODEL_DIR under ``workdir``,
    LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY of ``ls`` and LOCAL_FILES_DOCUMENT_ROOT; ``env``
    adds or overrides settings (CLIPSEG_TRAIN_EVERY, ...).
    """
    port = free_port()
    label = f"{name}-{ls.mode}" if name else ls.mode
    model_dir = workdir / f"model-dir-{label}"
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLIPSEG_", "LABEL_STUDIO_", "BASIC_AUTH_"))
    }
    full.update(
        CLIPSEG_MODEL=BACKEND_MODEL,
        CLIPSEG_DEVICE="cpu",
        MODEL_DIR=str(model_dir),
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY=ls.api_key,
        LOCAL_FILES_DOCUMENT_ROOT=str(docroot),
        WORKERS="1",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    full.update(env or {})
    proc = reg.start(
        f"clipseg-backend[{label}]",
        [str(console_script("clipseg-backend")), "--host", "127.0.0.1", "--port", str(port)],
        env=full,
        cwd=workdir,
        log=workdir / f"backend-{label}.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc, BACKEND_START_TIMEOUT)
    return url, model_dir, proc


def backend_model_version(backend_url: str, project: int) -> str:
    """The model_version the backend reports for ``project`` (what /setup answers Label
    Studio)."""
    r = requests.post(backend_url + "/setup", json={"project": str(project)}, timeout=30)
    r.raise_for_status()
    return str(r.json()["model_version"])


def learning_status(backend_url: str, project: int) -> dict[str, Any]:
    """``GET /learning/<project>`` of the backend (no basic auth: the tests start it without)."""
    r = requests.get(f"{backend_url}/learning/{project}", timeout=30)
    r.raise_for_status()
    return dict(r.json())
