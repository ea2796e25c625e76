"""Webhooks: what a body must hold before it is accepted, and the worker that applies them.

`webhook_problem(event, body)` says what is wrong with a body `fit` could not use (the types and
ids it reads), so that /webhook answers 400 with the reason instead of queueing something that
fails later in the background (`"annotations": "12"` was once read as the ids "1" and "2").

`WebhookWorker` applies accepted webhooks one at a time, in arrival order, on a background
thread of the process that received them (Label Studio waits 1 s for the answer). With a
journal (`backend.journal`), `submit` writes the webhook to it before it returns, and the
thread first applies what the journal holds from before the process started.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from backend.exemplars import project_key
from backend.journal import JournalEntry, JournalFull, WebhookJournal

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


def _id_problem(value: Any, what: str) -> str | None:
    """Why `value` is not an id (Label Studio's are integers; a short token is accepted)."""
    if isinstance(value, bool) or value is None:
        return f"{what} must be an integer id, not {value!r}"
    if isinstance(value, int):
        return None if value >= 0 else f"{what} must not be negative: {value}"
    if isinstance(value, str) and _ID_RE.fullmatch(value):
        return None
    return f"{what} must be an integer id, not {type(value).__name__} {value!r:.40}"


def _annotation_problem(annotation: Any, task: Any) -> str | None:
    if not isinstance(annotation, dict):
        return f"'annotation' must be an object, not {type(annotation).__name__}"
    problem = _id_problem(annotation.get("id"), "'annotation.id'")
    if problem:
        return problem
    updated = annotation.get("updated_at")
    if updated is not None and not isinstance(updated, str):
        return f"'annotation.updated_at' must be a string, not {type(updated).__name__}"
    result = annotation.get("result")
    if result is not None and not (
        isinstance(result, list) and all(isinstance(r, dict) for r in result)
    ):
        return "'annotation.result' must be a list of objects"
    if not isinstance(annotation.get("was_cancelled", False), bool):
        return "'annotation.was_cancelled' must be true or false"
    if not isinstance(task, dict):
        return f"'task' must be an object, not {type(task).__name__}"
    if task.get("id") is not None:
        problem = _id_problem(task["id"], "'task.id'")
        if problem:
            return problem
    if not isinstance(task.get("data"), dict):
        return "'task.data' must be an object"
    return None


def webhook_problem(event: str, body: dict[str, Any]) -> str | None:
    """What makes a webhook body unusable for `event`, or None when `fit` can apply it."""
    project = body.get("project")
    try:
        project_key(project)
    except ValueError as exc:
        return f"'project': {exc} (an id, or an object with an 'id')"
    if isinstance(project, dict):
        config = project.get("label_config")
        if config is not None and not isinstance(config, str):
            return "'project.label_config' must be a string"
    if event in _ANNOTATION_EVENTS:
        return _annotation_problem(body.get("annotation"), body.get("task"))
    if event == "ANNOTATIONS_DELETED":
        items = body.get("annotations")
        if not isinstance(items, list):
            return (
                "'annotations' must be a list of annotations (objects with an 'id') or of ids, "
                f"not {type(items).__name__}"
            )
        for i, item in enumerate(items):
            value = item.get("id") if isinstance(item, dict) else item
            problem = _id_problem(value, f"'annotations[{i}]'")
            if problem:
                return problem
        return None
    if event == "START_TRAINING" and (body.get("annotation") or body.get("task")):
        return _annotation_problem(body.get("annotation"), body.get("task"))
    return None


class WebhookBusy(Exception):
    """The webhook was not accepted (queue or journal full, journal not writable): 503."""


class WebhookWorker:
    """A background thread that runs webhook jobs one at a time, in arrival order.

    The thread starts with `start()` (or the first `submit`) in each process: gunicorn forks
    after the app is built, and a thread does not survive a fork. With `journal`, every job is
    written to it before `submit` returns, and the thread, when it starts, first runs the
    journal's pending jobs (at most one process at a time replays: `replay.lock`).
    """

    def __init__(
        self,
        handler: Callable[[str, dict], Any],
        maxsize: int = 1000,
        expected: tuple[type[Exception], ...] = (),
        journal: WebhookJournal | None = None,
    ) -> None:
        self.handler = handler
        self.expected = expected  # failures that explain themselves: logged without traceback
        self.journal = journal
        self.queue: queue.Queue[tuple[str, dict, str | None]] = queue.Queue(maxsize=maxsize)
        self._slots = threading.BoundedSemaphore(maxsize)
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._replayed = threading.Event()

    def start(self) -> None:
        """Start this process's thread (once; again after a fork)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            if self._pid != os.getpid():
                self._replayed = threading.Event()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="webhook-worker", daemon=True)
            self._thread.start()

    def submit(self, event: str, data: dict) -> None:
        """Queue a job, journaled first when there is a journal; WebhookBusy when it cannot be
        accepted now (the queue or the journal is full, or the journal cannot be written)."""
        self.start()
        if not self._slots.acquire(blocking=False):
            raise WebhookBusy(f"the webhook queue is full ({self.queue.maxsize} waiting)")
        try:
            entry_id = self.journal.append(event, data) if self.journal is not None else None
        except JournalFull as exc:
            self._slots.release()
            raise WebhookBusy(str(exc)) from exc
        except OSError as exc:
            self._slots.release()
            logger.error("webhook journal %s cannot be written: %s", self.journal.path, exc)
            raise WebhookBusy("the webhook journal cannot be written (see the log)") from exc
        self.queue.put_nowait((event, data, entry_id))

    def _apply(self, event: str, data: dict, entry_id: str | None) -> None:
        started = time.monotonic()
        if entry_id is not None and self.journal is not None:
            try:
                self.journal.started(entry_id)
            except OSError as exc:  # only the count of attempts is lost
                logger.error("webhook journal: cannot mark %s started: %s", entry_id, exc)
        try:
            self.handler(event, data)
            logger.info("webhook %s handled in %.2f s", event, time.monotonic() - started)
        except self.expected as exc:
            logger.error("webhook %s failed: %s", event, exc)
        except Exception:
            logger.exception("webhook %s failed", event)
        if entry_id is not None and self.journal is not None:
            try:
                self.journal.done(entry_id)
            except OSError as exc:  # it will be applied again at the next start: harmless
                logger.error("webhook journal: cannot mark %s done: %s", entry_id, exc)

    def _replay(self) -> None:
        """Apply what the journal holds from before this process started."""
        if self.journal is None:
            return
        self.journal.directory.mkdir(parents=True, exist_ok=True)
        with open(self.journal.directory / "replay.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("webhook journal: another process is replaying it")
                return
            try:
                entries: list[JournalEntry] = self.journal.pending()
            except OSError as exc:
                logger.error("webhook journal %s cannot be read: %s", self.journal.path, exc)
                return
            with self.queue.mutex:  # jobs this process already queued are not replayed
                queued = {job[2] for job in self.queue.queue}
            entries = [e for e in entries if e.id not in queued]
            if entries:
                logger.info("webhook journal: applying %d webhook(s) left pending", len(entries))
            for entry in entries:
                self._apply(entry.event, entry.body, entry.id)

    def _run(self) -> None:
        try:
            self._replay()
        except Exception:
            logger.exception("webhook journal replay failed")
        finally:
            self._replayed.set()
        while True:
            event, data, entry_id = self.queue.get()
            try:
                self._apply(event, data, entry_id)
            finally:
                self._slots.release()
                self.queue.task_done()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the replay and every queued job are done; False if `timeout` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None and not self._replayed.wait(timeout):
            return False
        with self.queue.all_tasks_done:
            while self.queue.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.queue.all_tasks_done.wait(remaining)
        return True


__all__ = ["WebhookBusy", "WebhookWorker", "webhook_problem"]
