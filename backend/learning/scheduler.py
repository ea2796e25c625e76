"""Background training: one run per project at a time, across threads and processes.

`Trainer.request(project)` returns at once (a webhook is answered within Label Studio's 1 s):
it leaves a `pending` marker in the project's folder and, unless a thread of this process is
already on the project, starts one. The thread takes the project's `training.lock` (`fcntl`,
non-blocking, so it also excludes the other gunicorn workers) and, while the marker is there,
removes it and runs one training. A request during a run leaves the marker again, so that
exactly one more run follows however many requests came. A thread that finds the lock taken by
another process leaves: that process sees the marker when its run ends (it looks again after
releasing the lock, so a request that came between its last look and the release is not lost).

A run killed (kill -9) releases the lock with the process; what it wrote is atomic
(`backend.learning.states`), so the serving state is the one before it.

`state(project)`: "training" while anyone holds the lock, "queued" while only the marker is
there, "idle" otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from backend.exemplars import project_key

logger = logging.getLogger(__name__)


class Trainer:
    """Runs ``train(project)`` in the background, at most one per project (``root``: the
    folder holding each project's folder, `StateStore.root`)."""

    def __init__(self, root: str | os.PathLike[str], train: Callable[[str], Any]) -> None:
        self.root = Path(root)
        self.train = train
        self._mutex = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._pid = os.getpid()

    def _folder(self, project: str) -> Path:
        folder = self.root / project
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _pending(self, project: str) -> Path:
        return self._folder(project) / "pending"

    @contextlib.contextmanager
    def _try_lock(self, project: str, tries: int = 1) -> Iterator[bool]:
        """The project's training lock if it is free (``tries`` times, 50 ms apart: `state`
        takes it for an instant to see whether it is held)."""
        with open(self._folder(project) / "training.lock", "a+") as handle:
            for attempt in range(tries):
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == tries - 1:
                        yield False
                        return
                    time.sleep(0.05)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self, project: Any) -> Iterator[bool]:
        """The project's training lock for a run outside the backend (`clipseg-label learn`):
        True when it was free, False when a training is running."""
        with self._try_lock(project_key(project), tries=10) as got:
            yield got

    def request(self, project: Any, reason: str = "") -> None:
        """Ask for a training of ``project`` (one more after the running one, if any)."""
        key = project_key(project)
        with self._mutex:
            if self._pid != os.getpid():  # forked (gunicorn): the parent's threads are not ours
                self._threads, self._pid = {}, os.getpid()
            self._pending(key).touch()
            logger.info("project %s: training requested%s", key, f" ({reason})" if reason else "")
            thread = self._threads.get(key)
            if thread is not None and thread.is_alive():
                return
            thread = threading.Thread(
                target=self._loop, args=(key,), name=f"training-{key}", daemon=True
            )
            self._threads[key] = thread
            thread.start()

    def _loop(self, key: str) -> None:
        pending = self._pending(key)
        try:
            while True:
                with self._try_lock(key, tries=10) as got:
                    if not got:
                        logger.info("project %s: another process is training; it runs next", key)
                        return
                    while pending.exists():
                        pending.unlink(missing_ok=True)
                        self._run(key)
                with self._mutex:  # a request after the last look either sees us or we it
                    if not pending.exists():
                        return
        finally:
            with self._mutex:
                if self._threads.get(key) is threading.current_thread():
                    del self._threads[key]

    def _run(self, key: str) -> None:
        started = time.monotonic()
        try:
            self.train(key)
        except Exception:
            logger.exception("project %s: training failed", key)
        logger.info("project %s: training over in %.1f s", key, time.monotonic() - started)

    def state(self, project: Any) -> str:
        """ "training", "queued" or "idle" (for any process of this MODEL_DIR)."""
        key = project_key(project)
        folder = self.root / key
        if not folder.is_dir():
            return "idle"
        with self._try_lock(key) as got:
            if not got:
                return "training"
        return "queued" if (folder / "pending").exists() else "idle"

    def join(self, project: Any, timeout: float = 60.0) -> bool:
        """Wait until this process's thread on ``project`` is done; False if ``timeout`` passes."""
        key = project_key(project)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._mutex:
                thread = self._threads.get(key)
            if thread is None:
                return True
            thread.join(max(0.0, min(0.2, deadline - time.monotonic())))
        return False
