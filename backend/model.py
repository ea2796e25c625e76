"""The backend's model: CLIPSeg behind label-studio-ml's setup / predict / fit conventions.

`CLIPSegBackend` composes the stages and runs the per-task loop: checkpoint -> Predictor
(`backend.loading`), label config -> controls and prompts (`backend.label_config`), task ->
images (`backend.images`), image + controls + exemplars -> results and scores
(`backend.segmenter`); webhooks and syncing -> the exemplar store and training go to the
learning loop (`backend.learning.loop.LearningLoop`: `fit`, `train`, `learning_status`,
`exemplars_of` delegate to it). It keeps the time budget of a request and each project's
model_version.

The prediction's top-level `score` is the confidence (CLIPSEG_SCORE=uncertainty makes it the
uncertainty); both are also sent as separate fields (scores: `backend.segmenter`,
docs/backend.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.controls import NOTHING_TO_PREDICT
from backend.errors import (  # ModelLoadError, WebhookDataError: server.py imports them from here
    LabelStudioError,
    ModelLoadError,  # noqa: F401
    WebhookDataError,  # noqa: F401
    Words,
    environment_words,
)
from backend.exemplars import ExemplarStore, LabelEmbedding, project_key
from backend.images import ImageError, ImageLoader, ImagesBusy
from backend.interactive import is_interactive
from backend.label_config import (
    PROMPT_FIELD,
    ControlSpec,
    LabelConfigError,
    image_names,
    parse_label_config,
    prompt_fields,
)
from backend.learning.loop import LearningLoop
from backend.learning.scheduler import Trainer
from backend.learning.states import LearnedState, StateStore
from backend.learning.store import AnnotationStore
from backend.loading import (  # noqa: F401 (server.py imports these two from here)
    check_checkpoint_or_exit,
    load_model,
    resolve_device,
)
from backend.ls_client import LabelStudioClient, label_studio_client
from backend.segmenter import ImagePrediction, Resolvers, Segmenter, merge_predictions
from backend.settings import Settings, SettingsError

if TYPE_CHECKING:
    from clipseg.predictor import Predictor

logger = logging.getLogger(__name__)

#: Seconds a task's downloads may run past CLIPSEG_PREDICT_BUDGET (the budget only stops new
#: tasks from starting): budget + grace + one task's inference stays under Label Studio's 100 s.
DOWNLOAD_GRACE = 10.0

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
        self._connections: dict[str, tuple[str | None, str | None]] = {}
        self._clients: dict[tuple[str | None, str | None], LabelStudioClient | None] = {}
        self._lock = threading.Lock()
        self.learning = LearningLoop(  # webhooks and syncing -> the exemplar store and training
            settings,
            self.segmenter,
            self.images,
            self.store,
            self.annotations,
            self.learned,
            self.trainer,
            self._pinned,
            client=self._client,
            controls=self.controls,
            model_version=self.model_version,
        )

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
        # `result`, and fails on an answer without one. Decided once, over the config's images
        # (not only those with a control the backend answers), for every answer below.
        interactive = is_interactive(context, image_names(label_config or ""))

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
                    task,
                    controls,
                    stored,
                    context,
                    client,
                    downloads_end,
                    fields,
                    resolvers,
                    interactive=interactive,
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
        interactive: bool | None = None,
    ) -> ImagePrediction:
        """Results of every control for one task, each of its images loaded (downloads over by
        `deadline`, a `time.monotonic()` value, when given) and encoded once; `resolvers`: the
        project's learned ones by control name. `interactive`: the request's decision
        (`predict`: `is_interactive` over the config's images); None decides it over the
        controls' images. An interactive answer predicts only the images the context is on."""
        by_image: dict[str, list[ControlSpec]] = {}
        for control in controls:
            by_image.setdefault(control.value_key, []).append(control)
        if interactive is None:
            interactive = is_interactive(context, {c.to_name for c in controls})
        parts = []
        for value_key, image_controls in by_image.items():
            if interactive and not is_interactive(context, {c.to_name for c in image_controls}):
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

    # ------------------------------------------------------------------ learning
    # The learning loop (`backend.learning.loop`): thin delegations, the backend's public API.
    def fit(self, event: str, data: dict) -> None:
        """Apply a webhook (`LearningLoop.fit`; run on the background worker)."""
        self.learning.fit(event, data)

    def train(self, project: Any) -> dict[str, Any] | None:
        """One training run on the project's stored annotations (`LearningLoop.train`)."""
        return self.learning.train(project)

    def learning_status(self, project: Any) -> dict[str, Any]:
        """What `GET /learning/<project>` answers (`LearningLoop.learning_status`)."""
        return self.learning.learning_status(project)

    def exemplars_of(
        self, task: dict, results: Sequence[dict], label_config: str | None, project: Any = None
    ) -> list[LabelEmbedding]:
        """The exemplars of an annotation's regions (`LearningLoop.exemplars_of`)."""
        return self.learning.exemplars_of(task, results, label_config, project)

    # ------------------------------------------------------------------ webhooks (fit)


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
