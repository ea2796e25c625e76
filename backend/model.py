"""The backend's model: CLIPSeg behind label-studio-ml's setup / predict / fit conventions.

Orchestration only: label config -> prompts (`label_config`), task -> image (`images`), image +
prompts -> probability maps (`clipseg.Predictor`), maps -> regions -> Label Studio results
(`controls`, `formats`), annotations -> exemplars (`exemplars`).

Per task, the image is encoded once and every prompt of every control is decoded in one call.
A label's conditional embedding is its text prompt's, mixed with the mean of its exemplars when
it has some: `w * text + (1 - w) * mean(exemplars)` (w = CLIPSEG_EXEMPLAR_WEIGHT); a label
with several prompts (`prompt` + `predicted_values`) gets the mean of their probability maps.

Scores (see docs/backend.md):
- region `score`: the mean probability inside the region;
- `confidence` of a task: the mean of its regions' scores (0 when nothing was found);
- `uncertainty` of a task: the mean over its labels of the fraction of uncertain pixels, those
  with a probability in [CLIPSEG_UNCERTAIN_LOW, CLIPSEG_UNCERTAIN_HIGH], among the label's
  candidate pixels (probability >= CLIPSEG_UNCERTAIN_LOW; 0 when there are none).
The prediction's top-level `score` is the confidence (CLIPSEG_SCORE=uncertainty makes it the
uncertainty); both are also sent as separate fields.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.controls import ControlAdapter, adapter_for, make_adapters
from backend.exemplars import Exemplar, ExemplarStore, project_key
from backend.formats.labelstudio import result_to_mask
from backend.formats.regions import Region, probability_to_regions
from backend.images import (
    ImageError,
    ImageLoader,
    ImagesBusy,
    LabelStudioClient,
    LoadedImage,
    label_studio_client,
)
from backend.interactive import SmartRegion, labels_named, parse_context
from backend.label_config import (
    PROMPT_FIELD,
    ControlSpec,
    LabelConfigError,
    parse_label_config,
    prompt_fields,
)
from backend.settings import DEFAULT_MODEL, DEVICE_PATTERN, Settings

logger = logging.getLogger(__name__)

#: Seconds a task's downloads may run past CLIPSEG_PREDICT_BUDGET (the budget only stops new
#: tasks from starting): budget + grace + one task's inference stays under Label Studio's 100 s.
DOWNLOAD_GRACE = 10.0

#: Seconds a webhook's image waits for room in the pixel budget (a /predict waits 5 s).
WEBHOOK_PIXEL_BUDGET_WAIT = 60.0

#: Webhook actions `fit` acts on.
FIT_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING")
_REGION_TYPES = ("brushlabels", "polygonlabels", "rectanglelabels")


class ModelLoadError(RuntimeError):
    """The CLIPSeg checkpoint cannot be found or loaded; the message says what to do."""


class WebhookDataError(ValueError):
    """A webhook body without what `fit` needs (a project id, an annotation id)."""


@dataclass(frozen=True)
class SettingNames:
    """How loading messages name the model and device settings: the server's environment
    variables (`SERVER_NAMES`) or a command's options (`clipseg-label`: --model, --device)."""

    model: str = "CLIPSEG_MODEL"
    device: str = "CLIPSEG_DEVICE"
    server: bool = True  # add the server's advice (docker mounts, `clipseg-backend`)

    def setting(self, name: str, value: str) -> str:
        """`CLIPSEG_MODEL=x` for a variable, `--model x` for an option."""
        return f"{name} {value}" if name.startswith("-") else f"{name}={value}"


SERVER_NAMES = SettingNames()


def resolve_device(name: str, names: SettingNames = SERVER_NAMES) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" / "cuda:N" checked against
    what torch sees (ModelLoadError saying so, rather than a failure inside model loading)."""
    import torch

    name = name.strip().lower()
    if not DEVICE_PATTERN.fullmatch(name):
        raise ModelLoadError(
            f"{names.setting(names.device, name)} is not a device: use auto, cpu, cuda or cuda:N"
        )
    if name != "cpu":
        # `clipseg-backend` resolves the device in gunicorn's master, which then forks the
        # workers, and CUDA initialised before a fork cannot be used after it: every worker would
        # fail at its first CUDA call. torch's default availability check initialises CUDA
        # (cudaGetDeviceCount); with this setting it asks NVML, which does not.
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        given = names.setting(names.device, name)
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"{given} but this torch ({torch.__version__}) sees no CUDA GPU; use "
                f"{names.setting(names.device, 'cpu')} (or auto)"
            )
        count = torch.cuda.device_count()
        if int(name.partition(":")[2] or 0) >= count:
            raise ModelLoadError(
                f"{given} but torch sees {count} CUDA GPU(s) (cuda:0 .. cuda:{count - 1})"
            )
    return name


def _demo_hint(names: SettingNames) -> str:
    return (
        "To try it without downloading anything, run the bundled demo model: "
        f"{names.setting(names.model, 'demo')} (a small model trained on synthetic shapes, not "
        "real photos)."
    )


def _resolve(name: str, names: SettingNames = SERVER_NAMES) -> Path:
    """The checkpoint directory; ModelLoadError with how to download it and the demo hint."""
    from clipseg.weights import resolve_checkpoint

    try:
        return Path(resolve_checkpoint(name))
    except Exception as exc:  # the message of clipseg.weights says how to download it
        docker = (
            " In docker, mount the downloaded directory (see docker/README.md)."
            if names.server
            else ""
        )
        raise ModelLoadError(
            f"cannot find the CLIPSeg model {name!r} ({names.model}): {exc}.{docker} "
            f"{_demo_hint(names)}"
        ) from exc


def check_checkpoint_or_exit(settings: Settings) -> None:
    """Fail fast before gunicorn forks when the checkpoint cannot even be found."""
    import sys

    try:
        _resolve(settings.model)
    except ModelLoadError as exc:
        logger.error("cannot start: %s", exc)
        sys.exit(1)


def _weights_hash(directory: Path) -> str:
    """A short sha256 of the checkpoint's weights file (or of its config when there is none)."""
    for name in ("model.safetensors", "pytorch_model.bin", "config.json"):
        path = directory / name
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    digest.update(chunk)
            return digest.hexdigest()[:8]
    return "unknown"


def _slug(name: str, directory: Path, is_demo: bool) -> str:
    if is_demo:
        return "clipseg-demo"
    base = name.rstrip("/").split("/")[-1] if not Path(name).exists() else directory.name
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-") or "clipseg"
    return base if base.lower().startswith("clipseg") else f"clipseg-{base}"


def _is_demo(name: str, directory: Path) -> bool:
    """The bundled demo checkpoint, by name, by location, or by the marker in its config.json."""
    from clipseg.weights import DEMO_CHECKPOINT

    if name == "demo" or directory.resolve() == Path(DEMO_CHECKPOINT).resolve():
        return True
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    marks = [config.get(k) for k in ("demo", "is_demo", "clipseg_demo")]
    nested = config.get("clipseg")
    if isinstance(nested, dict):
        marks.append(nested.get("demo"))
    return any(bool(m) for m in marks)


def uncertainty_of(probs: np.ndarray, low: float, high: float) -> float:
    """Fraction of a map's candidate pixels (p >= low) that are uncertain (low <= p <= high)."""
    candidate = probs >= low
    n = int(candidate.sum())
    if n == 0:
        return 0.0
    return float(np.count_nonzero(candidate & (probs <= high))) / n


def _min_area(setting: float, height: int, width: int) -> int:
    return int(setting) if setting >= 1 else int(round(setting * height * width))


def find_regions(
    label: str, probs: np.ndarray, threshold: float, mode: str, min_area: int
) -> list[Region]:
    """Regions of one label's (H, W) probability map (`backend.formats.probability_to_regions`):
    pixels strictly above `threshold`, blobs under `min_area` px dropped, one region per blob
    ("instance") or one per label ("semantic"), scored with their mean probability."""
    found = probability_to_regions(
        np.clip(probs, 0.0, 1.0), label, threshold=threshold, mode=mode, min_area=min_area
    )
    return sorted(found, key=lambda r: -r.score)


@dataclass
class ImagePrediction:
    """What the model made of one image for a set of controls."""

    results: list[dict[str, Any]]
    regions: list[Region] = field(repr=False)
    uncertainty: float
    confidence: float
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Query:
    """The prompts of one prediction: the labels asked for, one (label, prompt) row per
    conditional embedding (a label's rows are averaged), and each label's exemplar count."""

    labels: tuple[str, ...]
    rows: tuple[tuple[str, str], ...]
    embeddings: Any  # torch.Tensor (K, D), one per row, on the predictor's device
    exemplars: dict[str, int]


class CLIPSegBackend:
    """Loaded once per process; `predict` and `fit` are safe to call from several threads."""

    def __init__(
        self,
        settings: Settings,
        predictor: Any,
        model_name: str,
        weights_hash: str,
        is_demo: bool,
        device: str,
        dtype: str,
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.model_name = model_name
        self.weights_hash = weights_hash
        self.is_demo = is_demo
        self.device = device
        self.dtype = dtype
        self.base_version = f"{model_name}@{weights_hash}"
        self.adapters: tuple[ControlAdapter, ...] = make_adapters(settings.polygon_tolerance)
        self.images = ImageLoader(settings)
        self.store = ExemplarStore(
            Path(settings.model_dir) / "exemplars" / self.base_version,
            settings.max_exemplars_per_label,
        )
        self._predictor_lock = threading.Lock()  # the Predictor holds one image at a time
        self._connections: dict[str, tuple[str | None, str | None]] = {}
        self._clients: dict[tuple[str | None, str | None], LabelStudioClient | None] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, settings: Settings, names: SettingNames = SERVER_NAMES) -> CLIPSegBackend:
        """Load the checkpoint named by CLIPSEG_MODEL; ModelLoadError says how to fix a failure
        (naming the settings as `names` does: a command passes its own option names)."""
        directory = _resolve(settings.model, names)
        device = resolve_device(settings.device, names)
        try:
            import torch

            from clipseg import Predictor

            dtype = None if settings.dtype == "auto" else getattr(torch, settings.dtype)
            predictor = Predictor.from_pretrained(str(directory), device=device, dtype=dtype)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load the CLIPSeg model {settings.model!r} from {directory}: "
                f"{type(exc).__name__}: {exc}. Check that it is a complete CLIPSeg checkpoint "
                "(config.json, model.safetensors or pytorch_model.bin, vocab.json, merges.txt, "
                f"preprocessor_config.json); re-download it if not. {_demo_hint(names)}"
            ) from exc
        is_demo = _is_demo(settings.model, directory)
        name = _slug(settings.model, directory, is_demo)
        backend = cls(
            settings,
            predictor,
            model_name=name,
            weights_hash=_weights_hash(directory),
            is_demo=is_demo,
            device=str(getattr(predictor, "device", device)),
            dtype=str(getattr(predictor, "dtype", "float32")).replace("torch.", ""),
        )
        logger.info(
            "loaded %s from %s on %s (%s); model_version %s",
            settings.model,
            directory,
            backend.device,
            backend.dtype,
            backend.base_version,
        )
        if backend.device == "cpu" and backend.dtype in ("float16", "bfloat16"):
            logger.warning(
                "%s on the CPU: without bf16/AMX support in the CPU, half precision runs "
                "several times slower than float32 (what CLIPSEG_DTYPE=auto picks on the CPU)",
                backend.dtype,
            )
        if is_demo:
            run = "clipseg-backend (see docs/backend.md)" if names.server else ""
            logger.warning(
                "%s is the DEMO model: a small CLIPSeg trained on synthetic '<color> <shape>' "
                "scenes; it will not segment real photos. For real images run the published "
                "model: %s %s",
                names.setting(names.model, settings.model),
                names.setting(names.model, DEFAULT_MODEL),
                run,
            )
        return backend

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
        """`<model>@<weights hash>+ex<count>-<hash>`: changes when the project's exemplars do."""
        try:
            key = project_key(project)
        except ValueError:
            return f"{self.base_version}+ex0"
        return f"{self.base_version}+{self.store.version(key)}"

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
                    logger.warning(
                        "project %s: the label config has no BrushLabels, PolygonLabels or "
                        "RectangleLabels on an Image: there is nothing to predict",
                        key,
                    )
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
        specs = parse_label_config(label_config, self.settings.threshold)
        return [c for c in specs if adapter_for(c, self.adapters) is not None]

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
            message = (
                "the label config has no BrushLabels/PolygonLabels/RectangleLabels on an Image"
            )
            logger.error("project %s: %s", project, message)
            return [failed(message) for _ in tasks]
        try:
            stored = self.store.embeddings(project_key(project))
        except ValueError:
            stored = {}
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
                    task, controls, stored, context, client, downloads_end, fields
                )
                score = pred.uncertainty if self.settings.score_mode == "uncertainty" else None
                out.append(
                    {
                        "result": pred.results,
                        "score": pred.confidence if score is None else score,
                        "model_version": version,
                        "confidence": pred.confidence,
                        "uncertainty": pred.uncertainty,
                    }
                )
            except ImagesBusy:
                if not out:  # nothing done yet: the whole request is answered 503, retry later
                    raise
                out.append(failed("the backend is busy (CLIPSEG_PIXEL_BUDGET); ask again"))
            except Exception as exc:  # one bad task must not sink the batch
                if isinstance(exc, ImageError):
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
    ) -> ImagePrediction:
        """Results of every control for one task, each of its images loaded (downloads over by
        `deadline`, a `time.monotonic()` value, when given) and encoded once."""
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
                    self.predict_image(image.array, image_controls, stored, context, prompt_fields)
                )
        return _merge(parts)

    def predict_image(
        self,
        image: np.ndarray,
        controls: Sequence[ControlSpec],
        stored: dict[str, np.ndarray] | None = None,
        context: dict | None = None,
        prompt_fields: Collection[str] = (PROMPT_FIELD,),
    ) -> ImagePrediction:
        """Predict `controls` on one (H, W, 3) uint8 image.

        `stored`: label -> (N, D) exemplar embeddings; `context`: Label Studio's interactive
        context (`backend.interactive`): its smart regions on this image serve as exemplars of
        their labels, the text of its `prompt_fields` TextAreas as the prompts of the labels
        they name, and then only those labels are answered.
        """
        interaction = parse_context(context, {c.to_name for c in controls}, prompt_fields)
        with self._predictor_lock:
            live = self._live_exemplars(image, interaction.regions)
            query = self._conditioning(
                controls, stored, live, interaction.prompts, interactive=bool(interaction)
            )
            if query is None:
                return ImagePrediction([], [], 0.0, 0.0)
            self.predictor.set_image(image)
            probs_all = self.predictor.predict_embeddings(query.embeddings)  # (K, H, W)
        return self._prediction(image.shape[:2], controls, query, probs_all)

    def predict_images(
        self,
        images: Sequence[np.ndarray],
        controls: Sequence[ControlSpec],
        stored: dict[str, np.ndarray] | None = None,
    ) -> list[ImagePrediction]:
        """`predict_image` for several images without interactive context: the prompts are
        embedded once and the images go through the vision encoder together."""
        if not images:
            return []
        with self._predictor_lock:
            query = self._conditioning(controls, stored, {})
            if query is None:
                return [ImagePrediction([], [], 0.0, 0.0) for _ in images]
            self.predictor.set_images(list(images))
            probs_per_image = self.predictor.predict_embeddings(query.embeddings)
        return [
            self._prediction(image.shape[:2], controls, query, probs)
            for image, probs in zip(images, probs_per_image, strict=True)
        ]

    def _conditioning(
        self,
        controls: Sequence[ControlSpec],
        stored: dict[str, np.ndarray] | None,
        live: dict[str, list[Any]],
        typed: Sequence[str] = (),
        interactive: bool = False,
    ) -> _Query | None:
        """The conditional embedding of every (label, prompt) row (text, mixed with the label's
        exemplars when it has some); None when no label is asked for. Holds the predictor lock.

        `live`: label -> embeddings of the context's smart regions; `typed`: the context's typed
        prompts. When `interactive` (the context holds items for this image), only the labels
        they name are asked for (possibly none), and a label named by typed prompts is prompted
        with them instead of its configured prompts.
        """
        import torch

        configured: dict[str, tuple[str, ...]] = {}  # label -> prompts, first control wins
        for control in controls:
            for lab in control.labels:
                configured.setdefault(lab.value, lab.prompts)
        labels = configured
        typed_by_label = self._typed_prompts_by_label(typed, configured)
        if interactive:
            labels = {
                lab: typed_by_label.get(lab, prompts)
                for lab, prompts in configured.items()
                if lab in live or lab in typed_by_label
            }
        if not labels:
            return None
        rows: list[tuple[str, str]] = [(lab, p) for lab, ps in labels.items() for p in ps]
        prompts = list(dict.fromkeys(p for _, p in rows))
        text = self.predictor.embed_text(prompts)  # (P, D)
        index = {p: i for i, p in enumerate(prompts)}
        conds = []
        exemplars: dict[str, int] = {}
        w = self.settings.exemplar_weight
        for lab, prompt in rows:
            cond = text[index[prompt]]
            vecs = list((stored or {}).get(lab, ()))
            vecs += [v.detach().cpu().float().numpy() for v in live.get(lab, [])]
            exemplars[lab] = len(vecs)
            if vecs:
                mean = torch.as_tensor(np.mean(np.stack(vecs), axis=0))
                cond = w * cond + (1 - w) * mean.to(device=cond.device, dtype=cond.dtype)
            conds.append(cond)
        return _Query(tuple(labels), tuple(rows), torch.stack(conds), exemplars)

    def _typed_prompts_by_label(
        self, typed: Sequence[str], configured: dict[str, tuple[str, ...]]
    ) -> dict[str, tuple[str, ...]]:
        """label -> the typed prompts that answer for it. A prompt answers for the label it
        names (`backend.interactive.labels_named`); one that names none, or several equally,
        for the candidate whose configured prompt is nearest to it in the text embedding
        space (cosine similarity). Holds the predictor lock."""
        if not configured:
            return {}
        out: dict[str, list[str]] = {}
        for prompt in typed:
            candidates = labels_named(prompt, configured) or list(configured)
            if len(candidates) == 1:
                label, how = candidates[0], "named"
            else:
                label = self._nearest_label(prompt, {c: configured[c] for c in candidates})
                how = f"nearest of {len(candidates)} by text embedding"
            logger.info("typed prompt %r answers label %r (%s)", prompt, label, how)
            out.setdefault(label, []).append(prompt)
        return {label: tuple(prompts) for label, prompts in out.items()}

    def _nearest_label(self, prompt: str, candidates: dict[str, tuple[str, ...]]) -> str:
        """The candidate label with the configured prompt whose text embedding is nearest to
        the prompt's (the first candidate wins a tie). Holds the predictor lock."""
        import torch

        texts = list(dict.fromkeys([prompt, *(p for ps in candidates.values() for p in ps)]))
        unit = torch.nn.functional.normalize(self.predictor.embed_text(texts).float(), dim=-1)
        similarity = (unit @ unit[0]).tolist()  # (T,): cosine of every text with the prompt
        index = {t: i for i, t in enumerate(texts)}
        best = {lab: max(similarity[index[p]] for p in ps) for lab, ps in candidates.items()}
        return max(best, key=best.__getitem__)

    def _prediction(
        self,
        size: tuple[int, int],
        controls: Sequence[ControlSpec],
        query: _Query,
        probs_all: np.ndarray,
    ) -> ImagePrediction:
        """Probability maps (K, H, W) of one image's rows -> regions and Label Studio results."""
        height, width = size
        probs: dict[str, np.ndarray] = {}  # label -> (H, W); a view of probs_all when it can be
        for lab in query.labels:
            rows_of = [i for i, (name, _) in enumerate(query.rows) if name == lab]
            if len(rows_of) == 1:  # no copy: K full-size maps can be gigabytes (a 50 MP image)
                probs[lab] = np.asarray(probs_all[rows_of[0]], dtype=np.float32)
            else:
                probs[lab] = np.asarray(probs_all[rows_of], dtype=np.float32).mean(axis=0)
        min_area = _min_area(self.settings.min_region_area, height, width)
        results: list[dict[str, Any]] = []
        all_regions: list[Region] = []
        details: dict[str, dict[str, Any]] = {}
        found: dict[tuple[str, float], list[Region]] = {}
        for control in controls:
            adapter = adapter_for(control, self.adapters)
            for lab in control.labels:
                if lab.value not in probs:
                    continue
                key = (lab.value, control.threshold)
                if key not in found:
                    found[key] = find_regions(
                        lab.value,
                        probs[lab.value],
                        control.threshold,
                        self.settings.region_mode,
                        min_area,
                    )
                    all_regions.extend(found[key])
                results.extend(adapter.results(control, found[key]))
        for lab, p in probs.items():
            details[lab] = {
                "max_probability": float(p.max()),
                "uncertainty": uncertainty_of(
                    p, self.settings.uncertain_low, self.settings.uncertain_high
                ),
                "exemplars": query.exemplars[lab],
            }
        uncertainty = float(np.mean([d["uncertainty"] for d in details.values()]))
        scores = [r["score"] for r in results]
        confidence = float(np.mean(scores)) if scores else 0.0
        return ImagePrediction(results, all_regions, uncertainty, confidence, details)

    def _live_exemplars(
        self, image: np.ndarray, regions: Sequence[SmartRegion]
    ) -> dict[str, list[Any]]:
        """label -> embeddings of the smart regions the annotator just drew on this image."""
        out: dict[str, list[Any]] = {}
        height, width = image.shape[:2]
        for region in regions:
            shape = _region_shape(region.item, region.kind, region.item["value"], height, width)
            if shape is None:
                continue
            emb = self.predictor.embed_exemplar(image, **shape)
            for name in region.labels:
                out.setdefault(name, []).append(emb)
        return out

    # ------------------------------------------------------------------ exemplars (fit)
    def fit(self, event: str, data: dict) -> None:
        """Update the project's exemplars from a webhook (run on the background worker)."""
        project = data.get("project")
        try:
            key = project_key(project)
        except ValueError as exc:
            raise WebhookDataError(f"{event}: {exc}") from exc
        if event == "ANNOTATIONS_DELETED":
            ids = [a.get("id") if isinstance(a, dict) else a for a in data.get("annotations") or []]
            removed = self.store.remove_annotations(
                key, [i for i in ids if i is not None], deleted=True
            )
            logger.info("project %s: %d exemplar(s) of deleted annotations removed", key, removed)
            return
        label_config = project.get("label_config") if isinstance(project, dict) else None
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED") or (
            event == "START_TRAINING" and data.get("annotation") and data.get("task")
        ):
            self._learn_annotation(key, data["task"], data["annotation"], label_config)
            return
        if event == "START_TRAINING":
            self._learn_project(key, label_config)
            return
        logger.debug("webhook %s ignored", event)

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
        """START_TRAINING: sync the exemplars with all of the project's annotations."""
        client = self._client(key)
        if client is None:
            raise ImageError(
                "START_TRAINING needs Label Studio's API: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY (or connect the backend so that /setup sends them)"
            )
        tasks = client.get_json(f"/api/projects/{key}/export", params={"exportType": "JSON"})
        seen: set[str] = set()
        for task in tasks:
            for annotation in task.get("annotations") or []:
                ann_id = annotation.get("id")
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
            value = item.get("value") if kind in _REGION_TYPES else None
            names = value.get(kind) if isinstance(value, dict) else None
            if kind not in _REGION_TYPES:
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
            shape = _region_shape(item, kind, value, *image.shape[:2])
            if shape is None:
                continue
            with self._predictor_lock:
                emb = self.predictor.embed_exemplar(image, **shape)
            vec = emb.detach().cpu().float().numpy()
            for name in names:
                out.append(Exemplar(name, vec, region=str(item.get("id") or ""), type=kind))
        return out


def _region_shape(
    item: dict, kind: str, value: dict, height: int, width: int
) -> dict[str, Any] | None:
    """`mask=` or `box=` (pixels, x0 y0 x1 y1) for `Predictor.embed_exemplar`, at (H, W).

    An unrotated rectangle or a keypoint gives a box; brushes, polygons and rotated rectangles a
    mask (`backend.formats.result_to_mask`). None for an empty region, and for a malformed one
    (logged: one bad region must not fail the others).
    """
    try:
        return _shape_of(item, kind, value, height, width)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        logger.warning("region %s (%s) is malformed, skipped: %s", item.get("id"), kind, exc)
        return None


def _shape_of(item: dict, kind: str, value: dict, height: int, width: int) -> dict[str, Any] | None:
    if kind == "rectanglelabels" and not float(value.get("rotation", 0) or 0) % 360:
        x, y = float(value.get("x", 0)), float(value.get("y", 0))
        w, h = float(value.get("width", 0)), float(value.get("height", 0))
        box = _clip_box(
            x * width / 100,
            y * height / 100,
            (x + w) * width / 100,
            (y + h) * height / 100,
            height,
            width,
        )
        return {"box": box} if box is not None else None
    if kind == "keypointlabels":
        cx, cy = float(value.get("x", 0)) * width / 100, float(value.get("y", 0)) * height / 100
        r = max(8.0, 0.05 * min(height, width))  # a small box around the point
        box = _clip_box(cx - r, cy - r, cx + r, cy + r, height, width)
        return {"box": box} if box is not None else None
    if kind in _REGION_TYPES:
        mask = result_to_mask(item, height=height, width=width)
        return {"mask": mask} if mask.any() else None
    return None


def _clip_box(
    x0: float, y0: float, x1: float, y1: float, height: int, width: int
) -> tuple[int, int, int, int] | None:
    x0, x1 = sorted((min(max(x0, 0), width), min(max(x1, 0), width)))
    y0, y1 = sorted((min(max(y0, 0), height), min(max(y1, 0), height)))
    box = (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))
    return box if box[2] > box[0] and box[3] > box[1] else None


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


def _merge(parts: list[ImagePrediction]) -> ImagePrediction:
    if len(parts) == 1:
        return parts[0]
    results = [r for p in parts for r in p.results]
    scores = [r["score"] for r in results]
    labels: dict[str, dict[str, Any]] = {}
    for p in parts:
        labels.update(p.labels)
    return ImagePrediction(
        results,
        [r for p in parts for r in p.regions],
        float(np.mean([p.uncertainty for p in parts])) if parts else 0.0,
        float(np.mean(scores)) if scores else 0.0,
        labels,
    )
