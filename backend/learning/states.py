"""A project's learned states under MODEL_DIR: what is served, what was rejected, pins, rollback.

Layout, per model (a state learned on one checkpoint's maps means nothing to another):
`MODEL_DIR/learning/<model>@<weights hash>/<project>/`

    states/<id>/resolvers.safetensors   the learned arrays, "c<i>.<name>" per control i
    states/<id>/state.json              {"id", "created", "controls": [[name, [labels]], ...],
                                         "figures": {...}, "annotations": [...], "promoted",
                                         "reason"}
    serving.json                        {"serving": <id> or null (the base model),
                                         "pinned": bool, "history": [<id>, ...]}

A state directory is written whole under a temporary name and renamed into place, and
serving.json is replaced atomically (`backend.atomic`), so a kill at any moment leaves the
serving state as it was: a state is served only after serving.json names it. The base model (no
learned state) is served when serving.json is missing or names none. The newest `keep` states
are kept, and always the serving one and those in the history (rollback targets).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.atomic import write_json_atomic
from backend.learning.regions import RegionResolver

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"^s\d{6}$")
BASE = "base"
"""The name of the state without learning, for pins and listings."""


@dataclass(frozen=True)
class LearnedState:
    """One trained state: its id ("s000003"), its resolvers by control name, and its record."""

    id: str
    resolvers: dict[str, RegionResolver]
    info: dict[str, Any] = field(default_factory=dict)


class StateStore:
    """The learned states of every project of one model, under ``root``."""

    def __init__(self, root: str | os.PathLike[str], keep: int = 5) -> None:
        self.root = Path(root)
        self.keep = max(int(keep), 1)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, LearnedState | None]] = {}

    # ---- paths
    def _project(self, project: str) -> Path:
        return self.root / project

    def _serving_file(self, project: str) -> Path:
        return self._project(project) / "serving.json"

    def _pointer(self, project: str) -> dict[str, Any]:
        try:
            data = json.loads(self._serving_file(project).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"serving": None, "pinned": False, "history": []}
        if not isinstance(data, dict):
            raise ValueError(f"{self._serving_file(project)} is not a serving pointer")
        return {
            "serving": data.get("serving"),
            "pinned": bool(data.get("pinned")),
            "history": [h for h in data.get("history") or [] if isinstance(h, str)],
        }

    def _write_pointer(self, project: str, pointer: dict[str, Any]) -> None:
        write_json_atomic(self._serving_file(project), pointer, indent=1)

    # ---- states
    def state_ids(self, project: str) -> list[str]:
        """Every saved state's id, oldest first."""
        folder = self._project(project) / "states"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if _ID_RE.match(p.name) and p.is_dir())

    def save(
        self, project: str, resolvers: Mapping[str, RegionResolver], info: dict[str, Any]
    ) -> str:
        """Write a new state (not served yet); returns its id."""
        with self._lock:
            ids = self.state_ids(project)
            number = int(ids[-1][1:]) + 1 if ids else 1
            state_id = f"s{number:06d}"
            folder = self._project(project) / "states"
            folder.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{state_id}.", dir=folder))
            try:
                arrays: dict[str, np.ndarray] = {}
                controls = []
                for i, (name, resolver) in enumerate(resolvers.items()):
                    controls.append([name, list(resolver.labels)])
                    for key, value in resolver.to_arrays().items():
                        arrays[f"c{i}.{key}"] = np.ascontiguousarray(value, dtype=np.float32)
                from safetensors.numpy import save_file

                save_file(arrays, str(tmp / "resolvers.safetensors"))
                record = {
                    **info,
                    "id": state_id,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "controls": controls,
                }
                write_json_atomic(tmp / "state.json", record, indent=1)
                os.replace(tmp, folder / state_id)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return state_id

    def info(self, project: str, state_id: str) -> dict[str, Any]:
        path = self._project(project) / "states" / state_id / "state.json"
        return json.loads(path.read_text(encoding="utf-8"))

    def update_info(self, project: str, state_id: str, **changes: Any) -> None:
        path = self._project(project) / "states" / state_id / "state.json"
        record = self.info(project, state_id)
        record.update(changes)
        write_json_atomic(path, record, indent=1)

    def load(self, project: str, state_id: str) -> LearnedState:
        """A saved state; ValueError when it does not exist or does not read."""
        if not _ID_RE.match(state_id):
            raise ValueError(f"not a state id: {state_id!r} (expected s000001, ... or {BASE!r})")
        folder = self._project(project) / "states" / state_id
        if not folder.is_dir():
            raise ValueError(f"project {project} has no state {state_id}")
        from safetensors.numpy import load_file

        record = self.info(project, state_id)
        arrays = load_file(str(folder / "resolvers.safetensors"))
        resolvers = {}
        for i, (name, labels) in enumerate(record["controls"]):
            prefix = f"c{i}."
            own = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            resolvers[name] = RegionResolver.from_arrays(labels, own)
        return LearnedState(state_id, resolvers, record)

    # ---- serving
    def serving_id(self, project: str) -> str | None:
        return self._pointer(project)["serving"]

    def pinned(self, project: str) -> bool:
        return self._pointer(project)["pinned"]

    def serving(self, project: str) -> LearnedState | None:
        """The state served for ``project`` (None: the base model), reloaded when serving.json
        changes on disk (another worker promoted one)."""
        path = self._serving_file(project)
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        cached = self._cache.get(project)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        state_id = self._pointer(project)["serving"]
        state = self.load(project, state_id) if state_id else None
        self._cache[project] = (stamp, state)
        return state

    def promote(self, project: str, state_id: str) -> bool:
        """Serve ``state_id`` unless the project is pinned; False when pinned."""
        with self._lock:
            pointer = self._pointer(project)
            if pointer["pinned"]:
                return False
            self._serve(project, pointer, state_id)
            self._prune(project)
            return True

    def pin(self, project: str, state_id: str) -> None:
        """Serve ``state_id`` (or BASE) and keep it until `unpin`, whatever training finds."""
        with self._lock:
            pointer = self._pointer(project)
            if state_id != BASE:
                self.load(project, state_id)  # it must exist and read
            self._serve(project, pointer, None if state_id == BASE else state_id)
            pointer["pinned"] = True
            self._write_pointer(project, pointer)

    def unpin(self, project: str) -> None:
        with self._lock:
            pointer = self._pointer(project)
            pointer["pinned"] = False
            self._write_pointer(project, pointer)

    def rollback(self, project: str) -> str | None:
        """Serve the state served before the current one (None: the base model) and pin it,
        so that the next training does not promote over the operator's choice; returns it."""
        with self._lock:
            pointer = self._pointer(project)
            history = pointer["history"]
            current = pointer["serving"]
            earlier = history[:-1] if history and history[-1] == current else history
            target = earlier[-1] if earlier else None
            pointer["history"] = earlier
            pointer["serving"] = target
            pointer["pinned"] = True
            self._write_pointer(project, pointer)
            return target

    def _serve(self, project: str, pointer: dict[str, Any], state_id: str | None) -> None:
        pointer["serving"] = state_id
        if state_id is not None and (not pointer["history"] or pointer["history"][-1] != state_id):
            pointer["history"] = [*pointer["history"], state_id][-50:]
        self._write_pointer(project, pointer)

    def _prune(self, project: str) -> None:
        pointer = self._pointer(project)
        protected = {pointer["serving"], *pointer["history"][-self.keep :]}
        ids = self.state_ids(project)
        for state_id in ids[: max(len(ids) - self.keep, 0)]:
            if state_id not in protected:
                shutil.rmtree(self._project(project) / "states" / state_id, ignore_errors=True)

    def runs(self, project: str) -> list[dict[str, Any]]:
        """The records of the saved states, oldest first."""
        out = []
        for state_id in self.state_ids(project):
            try:
                out.append(self.info(project, state_id))
            except (OSError, ValueError) as exc:
                logger.warning("project %s: state %s unreadable: %s", project, state_id, exc)
        return out
