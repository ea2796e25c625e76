"""The learning loop: webhooks and syncing -> the exemplar store and training.

`LearningLoop` is what `CLIPSegBackend.fit`, `train`, `learning_status` and `exemplars_of`
delegate to. A webhook (`fit`, run on the server's background worker) updates the project's
exemplars (`backend.exemplars.ExemplarStore`) and the annotations kept for training
(`backend.learning.store.AnnotationStore`), and asks the `Trainer` (`backend.learning.scheduler`)
for a run on START_TRAINING or after CLIPSEG_TRAIN_EVERY new or changed annotations; the run
(`train`) reads the stored annotations' images and trains a new state
(`backend.learning.trainer.run_training`), kept in the `StateStore` (`backend.learning.states`).

The loop gets its parts from the backend and never reaches back into it: the segmenter (its
predictor, under its lock), the image loader, the stores, the trainer, the CLIPSEG_LEARN_PIN
pins, and three functions of the backend's (`client`: a project's Label Studio client;
`controls`: a label config's predicted controls; `model_version`: what the logs name).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.atomic import write_json_atomic
from backend.controls import REGION_TYPES, exemplar_shape
from backend.errors import LabelStudioError, WebhookDataError
from backend.exemplars import ExemplarStore, LabelEmbedding, project_key
from backend.images import ImageError, ImageLoader, LoadedImage
from backend.label_config import ControlSpec, LabelConfigError, parse_label_config
from backend.learning.scheduler import Trainer
from backend.learning.states import LearnedState, StateStore
from backend.learning.store import AnnotationStore
from backend.settings import Settings
from backend.webhooks import validate_webhook

if TYPE_CHECKING:
    from backend.ls_client import LabelStudioClient
    from backend.segmenter import Segmenter

logger = logging.getLogger(__name__)

#: Seconds a webhook's image waits for room in the pixel budget (a /predict waits 5 s).
WEBHOOK_PIXEL_BUDGET_WAIT = 60.0


class LearningLoop:
    """Webhooks -> exemplars and training annotations -> background training, per project;
    `fit` and `train` are safe to call from several threads (the stores are atomic, the
    `Trainer` runs one training per project at a time)."""

    def __init__(
        self,
        settings: Settings,
        segmenter: Segmenter,
        images: ImageLoader,
        store: ExemplarStore,
        annotations: AnnotationStore,
        learned: StateStore,
        trainer: Trainer,
        pins: dict[str, LearnedState | None],
        client: Callable[[Any], LabelStudioClient | None],
        controls: Callable[[str], list[ControlSpec]],
        model_version: Callable[[Any], str],
    ) -> None:
        self.settings = settings
        self.segmenter = segmenter
        self.images = images
        self.store = store
        self.annotations = annotations
        self.learned = learned
        self.trainer = trainer
        self.pins = pins  # CLIPSEG_LEARN_PIN: project -> state (None: the base model)
        self.client = client
        self.controls = controls
        self.model_version = model_version

    def fit(self, event: str, data: dict) -> None:
        """Apply a webhook (run on the background worker): the project's exemplars and the
        annotations kept for training are updated, and a training is requested on
        START_TRAINING or after CLIPSEG_TRAIN_EVERY new or changed annotations (it runs in the
        background: `fit` does not wait for it)."""
        validate_webhook(event, data)  # /webhook checked it already; fit is public
        project = data.get("project")
        key = project_key(project)
        if event == "ANNOTATIONS_DELETED":
            ids = [a.get("id") if isinstance(a, dict) else a for a in data.get("annotations") or []]
            ids = [i for i in ids if i is not None]
            removed = self.store.remove_annotations(key, ids, deleted=True)
            dropped = self.annotations.remove(key, ids)
            logger.info(
                "project %s: deleted annotations: %d exemplar(s) and %d training annotation(s) "
                "removed",
                key,
                removed,
                dropped,
            )
            return
        label_config = project.get("label_config") if isinstance(project, dict) else None
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED") or (
            event == "START_TRAINING" and data.get("annotation") and data.get("task")
        ):
            changed = self.annotations.put(key, data["annotation"], data["task"], label_config)
            try:
                self._learn_annotation(key, data["task"], data["annotation"], label_config)
            finally:  # the exemplars may fail (an image not read); training is asked anyway
                if event == "START_TRAINING":
                    self.trainer.request(key, "START_TRAINING")
                elif changed:
                    self._train_if_due(key)
            return
        if event == "START_TRAINING":
            try:
                self._learn_project(key, label_config)
            finally:  # without the export, what the webhooks brought is trained on
                self.trainer.request(key, "START_TRAINING")
            return
        logger.debug("webhook %s ignored", event)

    def _train_if_due(self, key: str) -> None:
        every = self.settings.train_every
        if every <= 0:
            return
        changed = self.annotations.changed_since_run(key)
        if changed >= every:
            self.trainer.request(key, f"{changed} new or changed annotations")

    def _learn_annotation(
        self, key: str, task: dict, annotation: dict, label_config: str | None
    ) -> int:
        ann_id = annotation.get("id")
        if ann_id is None:
            raise WebhookDataError("annotation without an id")
        updated_at = annotation.get("updated_at")
        if updated_at is not None and self.store.known_annotation(key, ann_id, updated_at):
            # applied once already (a webhook delivered again, or replayed from the journal)
            logger.info(
                "project %s: annotation %s at %s is stored already", key, ann_id, updated_at
            )
            return 0
        if annotation.get("was_cancelled"):
            self.store.remove_annotations(key, [ann_id])
            return 0
        exemplars = self.exemplars_of(task, annotation.get("result") or [], label_config, key)
        stored = self.store.replace_annotation(
            key, ann_id, exemplars, task_id=task.get("id"), updated_at=annotation.get("updated_at")
        )
        if not stored:
            return 0
        logger.info(
            "project %s: annotation %s -> %d exemplar(s); model_version %s",
            key,
            ann_id,
            len(exemplars),
            self.model_version(key),
        )
        return len(exemplars)

    def _learn_project(self, key: str, label_config: str | None) -> None:
        """START_TRAINING: sync the exemplars and the training annotations with all of the
        project's annotations (its export through Label Studio's API)."""
        client = self.client(key)
        if client is None:
            raise LabelStudioError(
                "START_TRAINING needs Label Studio's API: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY (or connect the backend so that /setup sends them)"
            )
        tasks = client.get_json(f"/api/projects/{key}/export", params={"exportType": "JSON"})
        if not isinstance(tasks, list):
            raise LabelStudioError(f"project {key}: the export is not a list of tasks")
        changed, dropped = self.annotations.sync(key, tasks, label_config)
        logger.info(
            "project %s: training annotations synced: %d new or changed, %d dropped",
            key,
            changed,
            dropped,
        )
        seen: set[str] = set()
        for task in tasks:
            if not isinstance(task, dict):
                continue
            for annotation in task.get("annotations") or []:
                ann_id = annotation.get("id") if isinstance(annotation, dict) else None
                if ann_id is None:
                    continue
                seen.add(str(ann_id))
                if self.store.known_annotation(key, ann_id, annotation.get("updated_at")):
                    continue
                try:
                    self._learn_annotation(key, task, annotation, label_config)
                except Exception:
                    logger.exception("project %s: annotation %s skipped", key, ann_id)
        stale = self.store.annotation_ids(key) - seen
        if stale:
            # not marked deleted: an annotation made after the export was read would be
            # refused forever; a stale one that comes back goes at the next sync
            self.store.remove_annotations(key, stale)
        logger.info(
            "project %s: START_TRAINING synced %d annotation(s); model_version %s",
            key,
            len(seen),
            self.model_version(key),
        )

    # ------------------------------------------------------------------ training
    def train(self, project: Any) -> dict[str, Any] | None:
        """One training run on the project's stored annotations (`backend.learning.trainer.
        run_training`); the `Trainer` calls it in the background, one run per project at a
        time. The newest CLIPSEG_TRAIN_MAX_IMAGES annotated tasks are read (no more once
        CLIPSEG_TRAIN_TIME_LIMIT seconds have passed); results that cannot be drawn, and tasks
        whose image does not read, are skipped and reported in the state's record and in
        `last_run.json`. Returns the record (None when nothing could be trained)."""
        from backend.learning.annotations import to_examples
        from backend.learning.trainer import learnable_controls, run_training

        key = project_key(project)
        started = time.monotonic()
        data = self.annotations.snapshot(key)
        self.annotations.mark_run(key, data["seq"])
        last: dict[str, Any] = {
            "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "annotations": len(data["annotations"]),
        }
        try:
            record = self._train(key, data, last, to_examples, learnable_controls, run_training)
        except (ValueError, LabelConfigError) as exc:
            logger.error("project %s: nothing trained: %s", key, exc)
            last["error"] = str(exc)
            record = None
        except Exception as exc:  # the Trainer logs the traceback; GET /learning says it failed
            last.update(error=f"internal error ({type(exc).__name__}); see the log", id=None)
            write_json_atomic(self.learned.root / key / "last_run.json", last, indent=1)
            raise
        last["seconds"] = round(time.monotonic() - started, 2)
        last["id"] = record.get("id") if record else None
        last["promoted"] = bool(record and record.get("promoted"))
        write_json_atomic(self.learned.root / key / "last_run.json", last, indent=1)
        return record

    def _train(
        self,
        key: str,
        data: dict[str, Any],
        last: dict[str, Any],
        to_examples: Callable[..., Any],
        learnable_controls: Callable[..., Any],
        run_training: Callable[..., Any],
    ) -> dict[str, Any]:
        from backend.batch.evaluate import Problem, TaskRegions

        label_config = data.get("label_config")
        if not label_config:
            raise ValueError("no label config stored yet (it comes with the webhooks)")
        controls = self.controls(label_config)
        learnable = learnable_controls(self.segmenter, controls)
        if not learnable:
            raise ValueError("the label config has no brush, polygon or rectangle control")
        # one image per task: the first learnable control's (the others' results are left out)
        value_key = learnable[0].value_key
        to_names = {c.to_name for c in learnable if c.value_key == value_key}
        newest: dict[Any, tuple[str, dict]] = {}  # task id -> its newest annotation
        for ann_id, item in sorted(data["annotations"].items(), key=lambda kv: kv[1]["seq"]):
            task = item.get("task") or {}
            newest[task.get("id")] = (ann_id, item)
        chosen = list(newest.values())[::-1][: self.settings.train_max_images]
        tasks = []
        for ann_id, item in chosen:
            task = item.get("task") or {}
            results = item.get("result") if isinstance(item.get("result"), list) else []
            own = tuple(r for r in results if isinstance(r, dict) and r.get("to_name") in to_names)
            tasks.append(
                TaskRegions(
                    task.get("id"),
                    None,
                    own,
                    annotation_id=ann_id,
                    data=task.get("data") if isinstance(task.get("data"), dict) else {},
                )
            )
        client = self.client(key)

        def read(task: TaskRegions) -> np.ndarray:
            ls_task = {"id": task.task_id, "data": dict(task.data or {})}
            try:
                with self.images.load(
                    ls_task, value_key, client, budget_wait=WEBHOOK_PIXEL_BUDGET_WAIT
                ) as image:  # held in the pixel budget while it is decoded
                    return np.array(image.array, copy=True)
            except LabelStudioError as exc:  # reported with the task, like an unreadable image
                raise ImageError(str(exc)) from exc

        known = {lab.value for c in learnable for lab in c.labels}
        origin = f"project {key}"
        deadline = time.monotonic() + self.settings.train_time_limit
        examples, problems = [], []
        for n, task in enumerate(tasks):
            if time.monotonic() > deadline:
                message = (
                    f"CLIPSEG_TRAIN_TIME_LIMIT={self.settings.train_time_limit:g} s passed: "
                    f"{len(tasks) - n} older task(s) not read"
                )
                problems.append(Problem(origin, "the run", None, message))
                break
            got, bad = to_examples([task], read, known, origin)
            examples.extend(got)
            problems.extend(bad)
        for problem in problems:
            logger.warning("project %s: training skipped: %s", key, problem)
        last["examples"] = len(examples)
        last["problems"] = [str(p) for p in problems]
        stored = self.store.embeddings(key)
        record = run_training(
            self.segmenter, controls, examples, stored, self.learned, key, deadline=deadline
        )
        if record.get("left_out"):
            message = (
                f"CLIPSEG_TRAIN_TIME_LIMIT={self.settings.train_time_limit:g} s passed: "
                f"{record['left_out']} task(s) read but not encoded"
            )
            last["problems"].append(str(Problem(origin, "the run", None, message)))
        record["problems"] = last["problems"]
        if record.get("id"):
            self.learned.update_info(key, record["id"], problems=last["problems"])
        return record

    def learning_status(self, project: Any) -> dict[str, Any]:
        """What `GET /learning/<project>` answers (zeros and "idle" for a project never seen);
        ValueError for a project id that is not one."""
        key = project_key(project)
        try:
            serving = self.learned.serving_id(key) or "base"
            pinned = self.learned.pinned(key)
        except (OSError, ValueError) as exc:
            logger.error("project %s: serving.json unreadable: %s", key, exc)
            serving, pinned = "base", False
        if key in self.pins:  # CLIPSEG_LEARN_PIN wins over the store
            state = self.pins[key]
            serving, pinned = (state.id if state is not None else "base"), True
        try:
            last = json.loads((self.learned.root / key / "last_run.json").read_text("utf-8"))
        except (OSError, ValueError):
            last = None
        return {
            "project": key,
            "model_version": self.model_version(key),
            "serving": serving,
            "pinned": pinned,
            "state": self.trainer.state(key),
            "annotations": self.annotations.count(key),
            "changed_since_run": self.annotations.changed_since_run(key),
            "train_every": self.settings.train_every,
            "last_run": last,
            "runs": self.learned.runs(key),
        }

    def exemplars_of(
        self, task: dict, results: Sequence[dict], label_config: str | None, project: Any = None
    ) -> list[LabelEmbedding]:
        """The exemplars of an annotation's brush / polygon / rectangle regions."""
        value_keys: dict[str, str] = {}
        if label_config:
            for spec in parse_label_config(label_config, self.settings.threshold):
                value_keys[spec.to_name] = spec.value_key
        client = self.client(project)
        images: dict[str, LoadedImage] = {}  # each held in the pixel budget until the end
        try:
            return self._exemplars_of(task, results, value_keys, client, images)
        finally:
            for image in images.values():
                image.release()

    def _exemplars_of(
        self,
        task: dict,
        results: Sequence[dict],
        value_keys: dict[str, str],
        client: LabelStudioClient | None,
        images: dict[str, LoadedImage],
    ) -> list[LabelEmbedding]:
        out: list[LabelEmbedding] = []
        for item in results:
            kind = item.get("type") if isinstance(item, dict) else None
            kind = kind.lower() if isinstance(kind, str) else ""
            value = item.get("value") if kind in REGION_TYPES else None
            names = value.get(kind) if isinstance(value, dict) else None
            if kind not in REGION_TYPES:
                continue  # not a region (a TextArea, Choices, ...)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                logger.warning(
                    "region %s (%s) has no list of labels, skipped: %r",
                    item.get("id"),
                    kind,
                    names,
                )
                continue
            to_name = item.get("to_name") or ""
            value_key = value_keys.get(to_name, to_name)
            if value_key not in images:  # a background job: it may wait for the budget
                images[value_key] = self.images.load(
                    task, value_key, client, budget_wait=WEBHOOK_PIXEL_BUDGET_WAIT
                )
            image = images[value_key].array
            shape = exemplar_shape(item, *image.shape[:2])
            if shape is None:
                continue
            with self.segmenter.lock:
                emb = self.segmenter.predictor.embed_exemplar(image, **shape)
            vec = emb.detach().cpu().float().numpy()
            for name in names:
                out.append(LabelEmbedding(name, vec, region=str(item.get("id") or ""), type=kind))
        return out
