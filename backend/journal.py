"""The webhook journal: a webhook is on disk before Label Studio hears "queued".

Label Studio sends each webhook once and waits 1 s for the answer, so /webhook answers before
the work is done; the journal is what makes that answer a promise. `append` writes the webhook
to `MODEL_DIR/webhooks/journal.jsonl` and fsyncs it before /webhook answers 200. The worker
marks an entry `started` before it applies it and `done` after (applied, or failed with a logged
reason). At start, entries without `done` are applied again (`pending`); applying is idempotent
(the exemplar store skips an annotation it holds at the same `updated_at`, and a deletion
deletes nothing the second time), so a webhook acknowledged before a crash is applied once.

One JSON object a line, each written with a newline before it (a line torn by a crash, which
was never acknowledged, cannot swallow the next one):

    {"id": "<hex>", "event": "ANNOTATION_CREATED", "body": {...}, "at": <unix time>}
    {"started": "<id>"}
    {"done": "<id>"}

Only `append` is fsynced: a lost `started` or `done` mark means one more (harmless) attempt. An
entry started `MAX_ATTEMPTS` times without finishing (a webhook whose handling kills the
process, say) is given up at the next start, with an error in the log, so it cannot stop the
backend for good.

Bounded: when the file would grow past `max_bytes`, finished entries are dropped (the file is
rewritten with the pending ones, atomically); if the pending ones alone fill it, `append` raises
JournalFull and /webhook answers 503. The file is also rewritten as it grows (each time it
doubles since the last rewrite, from 1 MiB), so it stays near the size of what is pending.
Appends from several gunicorn workers are serialised by an `fcntl` lock on `journal.lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Starts of one entry after which it is given up (see the module doc).
MAX_ATTEMPTS = 3
_MIN_COMPACT_BYTES = 1 << 20


class JournalFull(Exception):
    """The journal holds `max_bytes` of webhooks not yet applied; try again later."""


@dataclass(frozen=True)
class JournalEntry:
    id: str
    event: str
    body: dict[str, Any]
    attempts: int = 0  # how many times it was started before


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WebhookJournal:
    """The append-only journal of acknowledged webhooks in `directory` (see the module doc)."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "journal.jsonl"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._compact_at = _MIN_COMPACT_BYTES

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.directory / "journal.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _write(self, records: list[dict[str, Any]], sync: bool, path: Path | None = None) -> None:
        """Append `records` to `path` (the journal by default), each after a newline."""
        path = self.path if path is None else path
        data = b"".join(b"\n" + _line(r) + b"\n" for r in records)
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if created and sync:
            _fsync_dir(self.directory)  # the new file's name is durable too

    # ---- writes
    def append(self, event: str, body: dict[str, Any]) -> str:
        """Write a webhook durably (fsync) and return its entry id. JournalFull when the
        pending webhooks fill `max_bytes`; OSError when the disk refuses."""
        entry_id = uuid.uuid4().hex
        record = {"id": entry_id, "event": event, "body": body, "at": round(time.time(), 3)}
        size = len(_line(record)) + 2
        with self._locked():
            if self._size() + size > self.max_bytes:
                self._compact()
                if self._size() + size > self.max_bytes:
                    raise JournalFull(
                        f"the webhook journal holds {self._size()} bytes of webhooks not yet "
                        f"applied (CLIPSEG_WEBHOOK_JOURNAL_BYTES={self.max_bytes})"
                    )
            self._write([record], sync=True)
        return entry_id

    def started(self, entry_id: str) -> None:
        with self._locked():
            self._write([{"started": entry_id}], sync=False)

    def done(self, entry_id: str) -> None:
        """Mark an entry finished; rewrites the file when it has doubled since the last time."""
        with self._locked():
            self._write([{"done": entry_id}], sync=False)
            if self._size() >= self._compact_at:
                self._compact()

    # ---- reads
    def _scan(self) -> tuple[list[dict[str, Any]], dict[str, int], set[str]]:
        """(entries in order, starts per id, finished ids); unreadable lines are skipped."""
        entries: list[dict[str, Any]] = []
        starts: dict[str, int] = {}
        done: set[str] = set()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return entries, starts, done
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                logger.warning("webhook journal: a torn line (%d bytes) skipped", len(line))
                continue
            if not isinstance(record, dict):
                continue
            if isinstance(record.get("done"), str):
                done.add(record["done"])
            elif isinstance(record.get("started"), str):
                starts[record["started"]] = starts.get(record["started"], 0) + 1
            elif isinstance(record.get("id"), str) and isinstance(record.get("body"), dict):
                entries.append(record)
        return entries, starts, done

    def _compact(self) -> None:
        """Rewrite the file with the pending entries only (atomically; under the lock)."""
        entries, starts, done = self._scan()
        keep: list[dict[str, Any]] = []
        for record in entries:
            if record["id"] in done:
                continue
            keep.append(record)
            keep.extend({"started": record["id"]} for _ in range(starts.get(record["id"], 0)))
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            self._write(keep, sync=True, path=tmp)
            os.replace(tmp, self.path)
            _fsync_dir(self.directory)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._compact_at = max(_MIN_COMPACT_BYTES, 2 * self._size())

    def pending(self) -> list[JournalEntry]:
        """The entries not finished, oldest first. One started MAX_ATTEMPTS times is given up:
        logged and marked done."""
        out: list[JournalEntry] = []
        with self._locked():
            entries, starts, done = self._scan()
            given_up = []
            for record in entries:
                entry_id = record["id"]
                if entry_id in done:
                    continue
                attempts = starts.get(entry_id, 0)
                if attempts >= MAX_ATTEMPTS:
                    logger.error(
                        "webhook journal: %s %s was started %d times without finishing; given up",
                        record.get("event"),
                        entry_id,
                        attempts,
                    )
                    given_up.append({"done": entry_id})
                    continue
                out.append(
                    JournalEntry(entry_id, str(record.get("event")), record["body"], attempts)
                )
            if given_up:
                self._write(given_up, sync=False)
        return out


__all__ = ["MAX_ATTEMPTS", "JournalEntry", "JournalFull", "WebhookJournal"]
