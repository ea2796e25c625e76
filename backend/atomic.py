"""Atomic JSON files: readers (other threads, gunicorn workers, a resumed run) see the old file or
the new one, never half of either.

The file gets the permissions a plain ``open(path, "w")`` would give it: an existing file keeps
its mode, a new one gets ``0o666 & ~umask`` (``tempfile.mkstemp`` creates 0600, which would
carry over through ``os.replace`` and leave, say, an exemplar store built on the host unreadable
to the backend's container running as another user).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, without changing it where the system can say (Linux's
    ``/proc/self/status``); elsewhere set and restored under a lock, so that two writers of this
    module never see the other's temporary value."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """What ``open(path, "w")`` would leave: the existing file's permission bits, else
    ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def write_json_atomic(path: Path, data: Any, indent: int | None = None) -> None:
    """Write `data` as JSON to `path` through a temporary file in the same folder, fsync and
    `os.replace`; the temporary file is removed if anything fails. The result has the mode a
    plain ``open(path, "w")`` would give it (see the module doc)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, indent=indent)
            handle.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), _final_mode(path))
            else:  # Windows before Python 3.13: only the read-only bit exists there
                os.chmod(tmp, _final_mode(path))
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
