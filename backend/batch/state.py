"""Per-image results of a batch run, one JSON file each under ``OUT/.state/``.

A record is written atomically (a temporary file in the same folder, fsync, ``os.replace``) as
soon as its image is done, so an interrupted run loses at most the images in flight, and a rerun
skips every image whose record exists *and* was made with the same settings (the run's
fingerprint: model, labels, thresholds, region options). Records of other settings are redone.
The outputs (tasks.json, coco.json) are rebuilt from the records at the end of every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from backend.atomic import write_json_atomic

logger = logging.getLogger(__name__)

STATE_DIR = ".state"
RECORD_FORMAT = 1


def fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of the settings that change a record's content (JSON-serialisable dict)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


class StateStore:
    """The records of one output folder for one settings fingerprint."""

    def __init__(self, out_dir: str | os.PathLike[str], run_fingerprint: str) -> None:
        self.dir = Path(out_dir) / STATE_DIR
        self.fingerprint = run_fingerprint

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        """The record of ``key`` if it exists and matches this run's settings, else None.

        An unreadable record (truncated by a crash before atomic writes, edited by hand) is
        logged and treated as missing, so the image is simply done again.
        """
        path = self.path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("state record %s is unreadable (%s); redoing that image", path, exc)
            return None
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            logger.warning("state record %s has an unknown format; redoing that image", path)
            return None
        if record.get("fingerprint") != self.fingerprint:
            logger.debug("state record %s is from other settings; redoing that image", path)
            return None
        return record

    def save(self, key: str, record: dict[str, Any]) -> None:
        """Store ``record`` (stamped with the format and this run's fingerprint) atomically."""
        record = {**record, "format": RECORD_FORMAT, "fingerprint": self.fingerprint, "key": key}
        write_json_atomic(self.path(key), record)
