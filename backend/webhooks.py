"""Webhooks: bodies checked at the door, and the worker that applies them durably.

`validate_webhook` makes `/webhook` answer 400 with the reason for a body the background worker
could not apply, instead of queueing it and logging a traceback later. Shapes are Label Studio
1.23's (../shared/ls-protocol): `project` an object with an integer `id`; ANNOTATION_CREATED /
ANNOTATION_UPDATED carry `annotation` (an object with an integer `id` and a `result` list) and
`task` (an object with an integer `id` and a `data` object); ANNOTATIONS_DELETED carries
`annotations`, a list of annotation objects or ids; START_TRAINING carries `project`, and
optionally an annotation and its task.

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
import threading
import time
from collections.abc import Callable
from typing import Any

from backend.errors import WebhookDataError
from backend.exemplars import project_key
from backend.journal import JournalEntry, JournalFull, WebhookJournal

logger = logging.getLogger(__name__)


def _is_id(value: Any) -> bool:
    """A positive integer id (bool is not one, nor is "12": a string would be iterated)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_annotation_and_task(event: str, body: dict) -> None:
    annotation, task = body.get("annotation"), body.get("task")
    if not isinstance(annotation, dict) or not _is_id(annotation.get("id")):
        raise WebhookDataError(f"{event}: 'annotation' must be an object with an integer 'id'")
    if not isinstance(annotation.get("result", []), list):
        raise WebhookDataError(f"{event}: 'annotation.result' must be a list")
    if not isinstance(task, dict) or not _is_id(task.get("id")):
        raise WebhookDataError(f"{event}: 'task' must be an object with an integer 'id'")
    if not isinstance(task.get("data"), dict):
        raise WebhookDataError(f"{event}: 'task.data' must be an object")


def validate_webhook(event: str, body: dict) -> None:
    """Raise WebhookDataError naming what is wrong with a webhook body `fit` would act on."""
    project = body.get("project")
    try:
        project_key(project)
    except ValueError as exc:
        raise WebhookDataError(f"{event}: 'project': {exc}") from exc
    if isinstance(project, dict) and not isinstance(project.get("label_config", ""), str):
        raise WebhookDataError(f"{event}: 'project.label_config' must be a string")
    if event == "ANNOTATIONS_DELETED":
        annotations = body.get("annotations")
        if not isinstance(annotations, list):
            raise WebhookDataError(f"{event}: 'annotations' must be a list")
        for item in annotations:
            ann_id = item.get("id") if isinstance(item, dict) else item
            if not _is_id(ann_id):
                raise WebhookDataError(
                    f"{event}: every annotation must be an integer id or an object with one, "
                    f"got {item!r:.80}"
                )
    elif event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        _check_annotation_and_task(event, body)
    elif event == "START_TRAINING" and (body.get("annotation") or body.get("task")):
        _check_annotation_and_task(event, body)


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


__all__ = ["WebhookBusy", "WebhookWorker", "validate_webhook"]
