"""The backend's model: CLIPSeg behind label-studio-ml's setup / predict / fit conventions.

`CLIPSegBackend` composes the stages and runs the per-task loop: checkpoint -> Predictor
(`backend.loading`), label config -> controls and prompts (`backend.label_config`), task ->
images (`backend.images`), image + controls + exemplars -> results and scores
(`backend.segmenter`), and annotations -> exemplars and training data (`fit`, the webhook part;
`backend.exemplars` and `backend.learning.store` hold them), and training in the background
(`train`, scheduled by `backend.learning.scheduler.Trainer`). It keeps the time budget of a
request and each project's model_version.

The prediction's top-level `score` is the confidence (CLIPSEG_SCORE=uncertainty makes it the
uncertainty); both are also sent as separate fields (scores: `backend.segmenter`,
docs/backend.md).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.atomic import write_json_atomic
from backend.controls import NOTHING_TO_PREDICT, REGION_TYPES, exemplar_shape
from backend.errors import (  # ModelLoadError, WebhookDataError: server.py imports them from here
    LabelStudioError,
    ModelLoadError,  # noqa: F401
    WebhookDataError,
    Words,
    environment_words,
)
from backend.exemplars import Exemplar, ExemplarStore, project_key
from backend.images import (
    ImageError,
    ImageLoader,
    ImagesBusy,
    LabelStudioClient,
    LoadedImage,
    label_studio_client,
)
from backend.interactive import parse_context
from backend.label_config import (
    PROMPT_FIELD,
    ControlSpec,
    LabelConfigError,
    parse_label_config,
    prompt_fields,
)
from backend.learning.scheduler import Trainer
from backend.learning.states import LearnedState, StateStore
from backend.learning.store import AnnotationStore
from backend.loading import (  # noqa: F401 (server.py imports these two from here)
    check_checkpoint_or_exit,
    load_model,
    resolve_device,
)
from backend.segmenter import ImagePrediction, Resolvers, Segmenter, merge_predictions
from backend.settings import Settings, SettingsError
from backend.webhooks import validate_webhook

if TYPE_CHECKING:
    from clipseg.predictor import Predictor

logger = logging.getLogger(__name__)

#: Seconds a task's downloads may run past CLIPSEG_PREDICT_BUDGET (the budget only stops new
#: tasks from starting): budget + grace + one task's inference stays under Label Studio's 100 s.
DOWNLOAD_GRACE = 10.0

#: Seconds a webhook's image waits for room in the pixel budget (a /predict waits 5 s).
WEBHOOK_PIXEL_BUDGET_WAIT = 60.0

#: Webhook actions `fit` acts on.
FIT_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING")


class CLIPSegBackend:
    """Loaded once per process; `predict` and `fit` are safe to call from several threads."""

    def __init__(
        self,
        settings: Settings,
        predictor: Predictor,
        model_name: str,
        weights_hash: str,
        is_demo: bool,
        device: str,
        dtype: str,
    ) -> None:
        self.settings = settings
        self.segmenter = Segmenter(predictor, settings)
        self.predictor = predictor
        self.model_name = model_name
        self.weights_hash = weights_hash
        self.is_demo = is_demo
        self.device = device
        self.dtype = dtype
        self.base_version = f"{model_name}@{weights_hash}"
        self.images = ImageLoader(settings)
        self.store = ExemplarStore(
            Path(settings.model_dir) / "exemplars" / self.base_version,
            settings.max_exemplars_per_label,
        )
        self.learned = StateStore(
            Path(settings.model_dir) / "learning" / self.base_version, settings.learn_keep
        )
        self._pinned = self._load_pins(settings)  # CLIPSEG_LEARN_PIN: project -> state or None
        self.annotations = AnnotationStore(self.learned.root)  # what training learns from
        self.trainer = Trainer(self.learned.root, self.train)
        self._predictor_lock = self.segmenter.lock  # every use of the predictor takes it
        self._connections: dict[str, tuple[str | None, str | None]] = {}
        self._clients: dict[tuple[str | None, str | None], LabelStudioClient | None] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, settings: Settings, words: Words = environment_words) -> CLIPSegBackend:
        """Load the checkpoint named by CLIPSEG_MODEL (`backend.loading.load_model`);
        ModelLoadError says how to fix a failure. `words` words the warnings of loading in the
        entry point's terms (a command passes its own, naming its options)."""
        loaded = load_model(settings, words)
        return cls(
            settings,
            loaded.predictor,
            model_name=loaded.name,
            weights_hash=loaded.weights_hash,
            is_demo=loaded.is_demo,
            device=loaded.device,
            dtype=loaded.dtype,
        )

    # ------------------------------------------------------------------ protocol
    def health(self) -> dict[str, Any]:
        return {
            "model_class": type(self).__name__,
            "model_name": self.model_name,
            "model_source": self.settings.model,
            "model_version": self.base_version,
            "device": self.device,
            "dtype": self.dtype,
            "demo": self.is_demo,
        }

    def handles(self, event: str) -> bool:
        return event in FIT_EVENTS

    def model_version(self, project: Any = None) -> str:
        """`<model>@<weights hash>+ex<count>-<hash>[+<learned state>]`: changes when the
        project's exemplars or its serving learned state (`backend.learning`) do."""
        try:
            key = project_key(project)
        except ValueError:
            return f"{self.base_version}+ex0"
        version = f"{self.base_version}+{self.store.version(key)}"
        state = self.serving_state(key)
        return f"{version}+{state.id}" if state is not None else version

    def _load_pins(self, settings: Settings) -> dict[str, LearnedState | None]:
        """CLIPSEG_LEARN_PIN's states, loaded at start: a pin to a state that is not in the
        store stops the start (SettingsError), never a silent fallback to another state."""
        pinned: dict[str, LearnedState | None] = {}
        for project, state_id in settings.learn_pins:
            if state_id == "base":
                pinned[project] = None
                continue
            try:
                pinned[project] = self.learned.load(project, state_id)
            except (OSError, ValueError, KeyError) as exc:
                raise SettingsError(
                    f"CLIPSEG_LEARN_PIN={project}={state_id}: no such learned state under "
                    f"{self.learned.root / project} ({exc}); 'clipseg-label learn --list' shows "
                    "the project's states"
                ) from exc
        return pinned

    def serving_state(self, project: Any) -> LearnedState | None:
        """The project's serving learned state (None: the base model; also when its files do
        not read, which is logged: predictions go on with the base model). A project pinned by
        CLIPSEG_LEARN_PIN serves its pinned state whatever the store says."""
        try:
            key = project_key(project)
        except ValueError:
            return None
        if key in self._pinned:
            return self._pinned[key]
        try:
            return self.learned.serving(key)
        except (OSError, ValueError, KeyError) as exc:
            logger.error(
                "project %s: learned state unreadable, serving the base model: %s", key, exc
            )
            return None

    def setup(
        self,
        project: Any = None,
        label_config: str | None = None,
        hostname: str | None = None,
        access_token: str | None = None,
        extra_params: Any = None,
    ) -> str:
        """Remember how to reach this project's Label Studio; return its model_version."""
        try:
            key = project_key(project)
        except ValueError:
            key = None
        if key is not None and (hostname or access_token):
            with self._lock:
                self._connections[key] = (hostname, access_token)
        if label_config:  # say at connection time what predictions will not be able to do
            try:
                if not self.controls(label_config):
                    logger.warning("project %s: %s", key, NOTHING_TO_PREDICT)
            except LabelConfigError as exc:
                logger.warning("project %s: %s", key, exc)
        return self.model_version(key)

    def _client(self, project: Any) -> LabelStudioClient | None:
        try:
            key = project_key(project)
        except ValueError:
            key = None
        with self._lock:
            hostname, token = self._connections.get(key, (None, None)) if key else (None, None)
            if (hostname, token) not in self._clients:
                self._clients[(hostname, token)] = label_studio_client(
                    self.settings, hostname, token
                )
            return self._clients[(hostname, token)]

    # ------------------------------------------------------------------ prediction
    def controls(self, label_config: str) -> list[ControlSpec]:
        """The controls of `label_config` that get pre-annotations."""
        return self.segmenter.answered(parse_label_config(label_config, self.settings.threshold))

    def predict(
        self,
        tasks: Sequence[dict],
        context: dict | None = None,
        project: Any = None,
        label_config: str | None = None,
    ) -> list[dict[str, Any]]:
        """One answer per task, in order: a prediction, or for a task that failed or was not
        reached within CLIPSEG_PREDICT_BUDGET an answer without `result` (`_failed`).

        The budget stops new tasks from starting; a task's downloads must end within
        `DOWNLOAD_GRACE` seconds after it, so that the request stays under Label Studio's 100 s.
        """
        version = self.model_version(project)
        # An interactive answer is shown, never stored: Label Studio's editor reads its
        # `result`, and fails on an answer without one.
        interactive = isinstance(context, dict) and bool(context.get("result"))

        def failed(error: str) -> dict[str, Any]:
            return _failed(version, error, interactive)

        try:
            controls = self.controls(label_config or "")
        except LabelConfigError as exc:
            logger.error("project %s: %s", project, exc)
            return [failed(str(exc)) for _ in tasks]
        if not controls:
            logger.error("project %s: %s", project, NOTHING_TO_PREDICT)
            return [failed(NOTHING_TO_PREDICT) for _ in tasks]
        try:
            stored = self.store.embeddings(project_key(project))
        except ValueError:
            stored = {}
        state = self.serving_state(project)
        resolvers = state.resolvers if state is not None else None
        client = self._client(project)
        fields = prompt_fields(label_config or "")
        budget = self.settings.predict_budget
        deadline = time.monotonic() + budget if budget > 0 else None
        out = []
        for i, task in enumerate(tasks):
            if deadline is not None and time.monotonic() > deadline:
                left = len(tasks) - i
                logger.warning(
                    "CLIPSEG_PREDICT_BUDGET=%g s spent after %d of %d tasks; the %d others are "
                    "answered without a result, so Label Studio asks for them again next time",
                    budget,
                    i,
                    len(tasks),
                    left,
                )
                message = f"not reached within CLIPSEG_PREDICT_BUDGET={budget:g} s; ask again"
                out.extend(failed(message) for _ in range(left))
                break
            downloads_end = None if deadline is None else deadline + DOWNLOAD_GRACE
            try:
                pred = self.predict_task(
                    task, controls, stored, context, client, downloads_end, fields, resolvers
                )
                out.append(pred.answer(version, self.settings.score_mode))
            except ImagesBusy:
                if not out:  # nothing done yet: the whole request is answered 503, retry later
                    raise
                out.append(failed("the backend is busy (CLIPSEG_PIXEL_BUDGET); ask again"))
            except Exception as exc:  # one bad task must not sink the batch
                if isinstance(exc, (ImageError, LabelStudioError)):
                    logger.error("task %s: %s", task.get("id"), exc)
                    out.append(failed(f"{type(exc).__name__}: {exc}"))
                else:  # its text may hold server paths: it stays in the log
                    logger.exception("task %s: prediction failed", task.get("id"))
                    out.append(failed(f"{type(exc).__name__}: internal error, see the log"))
        return out

    def predict_task(
        self,
        task: dict,
        controls: Sequence[ControlSpec],
        stored: dict[str, np.ndarray],
        context: dict | None,
        client: LabelStudioClient | None,
        deadline: float | None = None,
        prompt_fields: Collection[str] = (PROMPT_FIELD,),
        resolvers: Resolvers | None = None,
    ) -> ImagePrediction:
        """Results of every control for one task, each of its images loaded (downloads over by
        `deadline`, a `time.monotonic()` value, when given) and encoded once; `resolvers`: the
        project's learned ones by control name."""
        by_image: dict[str, list[ControlSpec]] = {}
        for control in controls:
            by_image.setdefault(control.value_key, []).append(control)
        interactive = bool(parse_context(context, {c.to_name for c in controls}))
        parts = []
        for value_key, image_controls in by_image.items():
            if interactive and not parse_context(context, {c.to_name for c in image_controls}):
                continue  # the annotator is working on another image of the task
            with self.images.load(task, value_key, client, deadline) as image:  # pixel budget
                parts.append(
                    self.predict_image(
                        image.array, image_controls, stored, context, prompt_fields, resolvers
                    )
                )
        return merge_predictions(parts)

    def predict_image(
        self,
        image: np.ndarray,
        controls: Sequence[ControlSpec],
        stored: dict[str, np.ndarray] | None = None,
        context: dict | None = None,
        prompt_fields: Collection[str] = (PROMPT_FIELD,),
        resolvers: Resolvers | None = None,
    ) -> ImagePrediction:
        """Predict `controls` on one (H, W, 3) uint8 image (`Segmenter.predict_image`)."""
        return self.segmenter.predict_image(
            image, controls, stored, context, prompt_fields, resolvers
        )

    def predict_images(
        self,
        images: Sequence[np.ndarray],
        controls: Sequence[ControlSpec],
        stored: dict[str, np.ndarray] | None = None,
        resolvers: Resolvers | None = None,
    ) -> list[ImagePrediction]:
        """`predict_image` for several images without interactive context, encoded together
        (`Segmenter.predict_images`)."""
        return self.segmenter.predict_images(images, controls, stored, resolvers)

    # ------------------------------------------------------------------ webhooks (fit)
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
        client = self._client(key)
        if client is None:
            raise ImageError(
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

    def _train(self, key, data, last, to_examples, learnable_controls, run_training):
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
        client = self._client(key)

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
        if key in self._pinned:  # CLIPSEG_LEARN_PIN wins over the store
            state = self._pinned[key]
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
    ) -> list[Exemplar]:
        """The exemplars of an annotation's brush / polygon / rectangle regions."""
        value_keys: dict[str, str] = {}
        if label_config:
            for spec in parse_label_config(label_config, self.settings.threshold):
                value_keys[spec.to_name] = spec.value_key
        client = self._client(project)
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
    ) -> list[Exemplar]:
        out: list[Exemplar] = []
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
            with self._predictor_lock:
                emb = self.predictor.embed_exemplar(image, **shape)
            vec = emb.detach().cpu().float().numpy()
            for name in names:
                out.append(Exemplar(name, vec, region=str(item.get("id") or ""), type=kind))
        return out


def _failed(version: str, error: str, interactive: bool = False) -> dict[str, Any]:
    """The answer for a task that got no prediction. It has no `result`, so Label Studio stores
    nothing for it and asks again on the next "Retrieve predictions" (an empty result would be
    stored as a prediction of this model_version, and the task skipped from then on). An
    interactive answer is never stored, and the editor needs its `result`: it gets an empty one.
    """
    answer: dict[str, Any] = {"model_version": version, "error": error}
    if interactive:
        answer["result"] = []
    return answer
