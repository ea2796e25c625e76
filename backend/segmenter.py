"""One image + its controls + exemplars -> probability maps -> regions -> results, and scores.

The `Segmenter` holds the `clipseg.Predictor` and the lock around it (the Predictor holds one
image at a time): every use of the predictor in the backend goes through `Segmenter.lock`.

Per image, the image is encoded once and every prompt of every control is decoded in one call.
A label's conditional embedding is its text prompt's, mixed with the mean of its exemplars when
it has some: `w * text + (1 - w) * mean(exemplars)` (w = CLIPSEG_EXEMPLAR_WEIGHT); a label
with several prompts (`prompt` + `predicted_values`) gets the mean of their probability maps.

Scores (see docs/backend.md):
- region `score`: the mean probability inside the region;
- `confidence` of an image: the mean of its results' scores (0 when nothing was found);
- `uncertainty` of an image: the mean over its labels of the fraction of uncertain pixels,
  those with a probability in [CLIPSEG_UNCERTAIN_LOW, CLIPSEG_UNCERTAIN_HIGH], among the
  label's candidate pixels (probability >= CLIPSEG_UNCERTAIN_LOW; 0 when there are none).

A project that learned from its annotations (`backend.learning`) has a region resolver per
control: the regions of all of a control's labels are then grouped into objects and each object
gets the one label (or none) the resolver gives it, scored by its class probability; the image's
`uncertainty` is then the mean over its objects of 1 - the probability of the answer given.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.controls import ControlTag, exemplar_shape, predicted_tags, tag_for
from backend.errors import LabelConfigError
from backend.formats.regions import Region, probability_to_regions
from backend.interactive import SmartRegion, labels_named, parse_context
from backend.label_config import PROMPT_FIELD, ControlSpec
from backend.settings import Settings

if TYPE_CHECKING:
    import torch

    from backend.learning.regions import RegionResolver
    from clipseg.predictor import Predictor

#: control name -> the project's learned resolver for it (`backend.learning`)
Resolvers = Mapping[str, "RegionResolver"]

logger = logging.getLogger(__name__)

__all__ = [
    "ImagePrediction",
    "Segmenter",
    "find_regions",
    "merge_predictions",
    "min_area_pixels",
    "uncertainty_of",
]


@dataclass
class ImagePrediction:
    """What the model made of one image (or one task's images) for a set of controls.

    `results`: Label Studio result items; `regions`: the regions they were made of (bool masks
    at the image's size); `labels`: per label, its max probability, uncertainty and exemplar
    count.
    """

    results: list[dict[str, Any]]
    regions: list[Region] = field(repr=False)
    uncertainty: float
    confidence: float
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)

    def answer(self, model_version: str, score_mode: str) -> dict[str, Any]:
        """The prediction as Label Studio takes it (a /predict answer, a task's prediction in
        clipseg-label's tasks.json): its results, `model_version`, the top-level `score` (the
        confidence, or with `score_mode` "uncertainty" (CLIPSEG_SCORE) the uncertainty), and
        both figures as fields of their own."""
        score = self.uncertainty if score_mode == "uncertainty" else self.confidence
        return {
            "result": self.results,
            "score": float(score),
            "model_version": model_version,
            "confidence": float(self.confidence),
            "uncertainty": float(self.uncertainty),
        }


@dataclass(frozen=True)
class _Query:
    """The prompts of one prediction: the labels asked for, one (label, prompt) row per
    conditional embedding (a label's rows are averaged), and each label's exemplar count."""

    labels: tuple[str, ...]
    rows: tuple[tuple[str, str], ...]
    embeddings: torch.Tensor  # (K, D), one per row, on the predictor's device
    exemplars: dict[str, int]


def uncertainty_of(probs: np.ndarray, low: float, high: float) -> float:
    """Fraction of a map's candidate pixels (p >= low) that are uncertain (low <= p <= high)."""
    candidate = probs >= low
    n = int(candidate.sum())
    if n == 0:
        return 0.0
    return float(np.count_nonzero(candidate & (probs <= high))) / n


def min_area_pixels(setting: float, height: int, width: int) -> int:
    """CLIPSEG_MIN_REGION_AREA in pixels: a fraction of the image, or pixels when >= 1."""
    return int(setting) if setting >= 1 else int(round(setting * height * width))


def find_regions(
    label: str, probs: np.ndarray, threshold: float, mode: str, min_area: int
) -> list[Region]:
    """Regions of one label's (H, W) probability map (`backend.formats.probability_to_regions`):
    pixels strictly above `threshold`, blobs under `min_area` px dropped, one region per blob
    ("instance") or one per label ("semantic"), scored with their mean probability, best
    first."""
    found = probability_to_regions(
        np.clip(probs, 0.0, 1.0), label, threshold=threshold, mode=mode, min_area=min_area
    )
    return sorted(found, key=lambda r: -r.score)


def merge_predictions(parts: list[ImagePrediction]) -> ImagePrediction:
    """One prediction of a task's images: their results and regions; the uncertainty is the
    mean of theirs, the confidence the mean of all results' scores."""
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


class Segmenter:
    """Predicts the controls of one image (or a batch of images) with one Predictor; safe to
    call from several threads (they take turns on the predictor)."""

    def __init__(self, predictor: Predictor, settings: Settings) -> None:
        self.predictor = predictor
        self.settings = settings
        self.tags: tuple[ControlTag, ...] = predicted_tags(settings)  # the tags it answers
        self.lock = threading.Lock()  # the Predictor holds one image at a time

    def answered(self, controls: Sequence[ControlSpec]) -> list[ControlSpec]:
        """The controls that get pre-annotations (the others are left alone); LabelConfigError
        for a control whose `model_tile_size` the model cannot use."""
        from clipseg.tiling import check_tiling

        for control in controls:
            if control.tile_size is not None:
                try:
                    check_tiling(
                        control.tile_size,
                        self.settings.tile_overlap,
                        int(self.predictor.model.config.vision_config.patch_size),
                    )
                except ValueError as exc:
                    raise LabelConfigError(
                        f"control {control.name!r}: model_tile_size={control.tile_size}: {exc}"
                    ) from exc
        return [c for c in controls if tag_for(c, self.tags) is not None]

    def predict_image(
        self,
        image: np.ndarray,
        controls: Sequence[ControlSpec],
        stored: dict[str, np.ndarray] | None = None,
        context: dict | None = None,
        prompt_fields: Collection[str] = (PROMPT_FIELD,),
        resolvers: Resolvers | None = None,
    ) -> ImagePrediction:
        """Predict `controls` on one (H, W, 3) uint8 image.

        `stored`: label -> (N, D) exemplar embeddings; `context`: Label Studio's interactive
        context (`backend.interactive`): its smart regions on this image serve as exemplars of
        their labels, the text of its `prompt_fields` TextAreas as the prompts of the labels
        they name, and then only those labels are answered; `resolvers`: the project's learned
        region resolvers by control name (not used for interactive answers: the annotator
        asked for those labels).
        """
        interaction = parse_context(context, {c.to_name for c in controls}, prompt_fields)
        with self.lock:
            live = self._live_exemplars(image, interaction.regions)
            query = self._conditioning(
                controls, stored, live, interaction.prompts, interactive=bool(interaction)
            )
            if query is None:
                return ImagePrediction([], [], 0.0, 0.0)
            probs_all = self._probabilities(image, controls, query)  # (K, H, W)
        if interaction:
            resolvers = None
        return self._prediction(image, controls, query, probs_all, resolvers)

    def predict_images(
        self,
        images: Sequence[np.ndarray],
        controls: Sequence[ControlSpec],
        stored: dict[str, np.ndarray] | None = None,
        resolvers: Resolvers | None = None,
    ) -> list[ImagePrediction]:
        """`predict_image` for several images without interactive context: the prompts are
        embedded once and the images go through the vision encoder together."""
        if not images:
            return []
        if any(self._tile_sizes(controls).values()):
            # the tiles of one image already fill an encoder batch: one image at a time
            return [
                self.predict_image(image, controls, stored, resolvers=resolvers) for image in images
            ]
        with self.lock:
            query = self._conditioning(controls, stored, {})
            if query is None:
                return [ImagePrediction([], [], 0.0, 0.0) for _ in images]
            self.predictor.set_images(list(images))
            probs_per_image = self.predictor.predict_embeddings(query.embeddings)
        return [
            self._prediction(image, controls, query, probs, resolvers)
            for image, probs in zip(images, probs_per_image, strict=True)
        ]

    def label_maps(
        self,
        image: np.ndarray,
        controls: Sequence[ControlSpec],
        stored: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """label -> (H, W) float32 probability map on one image, as `predict_image` computes
        them before regions (what `backend.learning` learns from)."""
        with self.lock:
            query = self._conditioning(controls, stored, {})
            if query is None:
                return {}
            probs_all = self._probabilities(image, controls, query)
        return self._label_maps(query, probs_all)

    def control_regions(self, control: ControlSpec, maps: Mapping[str, np.ndarray]) -> list[Region]:
        """The regions of all of a control's labels on their maps (`label_maps`), as served
        before a resolver groups them, best first."""
        height, width = next(iter(maps.values())).shape
        min_area = min_area_pixels(self.settings.min_region_area, height, width)
        regions = [
            region
            for lab in control.labels
            if lab.value in maps
            for region in find_regions(
                lab.value, maps[lab.value], control.threshold, self.settings.region_mode, min_area
            )
        ]
        return sorted(regions, key=lambda r: -r.score)

    def _tile_sizes(self, controls: Sequence[ControlSpec]) -> dict[str, int]:
        """label -> its tile size: its control's `model_tile_size`, else CLIPSEG_TILE_SIZE (0:
        the whole image). A label in several controls takes the first one's, as its prompts."""
        out: dict[str, int] = {}
        for control in controls:
            size = self.settings.tile_size if control.tile_size is None else control.tile_size
            for lab in control.labels:
                out.setdefault(lab.value, size)
        return out

    def _probabilities(
        self, image: np.ndarray, controls: Sequence[ControlSpec], query: _Query
    ) -> np.ndarray:
        """(K, H, W) probability maps of the query's rows on one image, each row predicted at
        its label's tile size (`clipseg.Predictor.segment_tiled`; 0: the whole image only).
        Called with the lock held."""
        tile_of = self._tile_sizes(controls)
        rows_by_size: dict[int, list[int]] = {}
        for i, (label, _) in enumerate(query.rows):
            rows_by_size.setdefault(tile_of.get(label, self.settings.tile_size), []).append(i)
        if set(rows_by_size) == {0}:
            self.predictor.set_image(image)
            return self.predictor.predict_embeddings(query.embeddings)
        out = None
        for size, rows in rows_by_size.items():
            probs = self.predictor.segment_tiled(
                image,
                query.embeddings[rows],
                tile_size=size,
                tile_overlap=self.settings.tile_overlap,
                # the lowest threshold regions are cut at: a tile region left to the whole view
                # leaves nothing above any control's threshold
                found_threshold=min(
                    (c.threshold for c in controls), default=self.settings.threshold
                ),
            )
            if len(rows_by_size) == 1:
                return probs  # the common case: no second copy of K full-size maps
            if out is None:
                out = np.empty((len(query.rows), *probs.shape[1:]), np.float32)
            out[rows] = probs
        return out

    def _conditioning(
        self,
        controls: Sequence[ControlSpec],
        stored: dict[str, np.ndarray] | None,
        live: dict[str, list[torch.Tensor]],
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

    @staticmethod
    def _label_maps(query: _Query, probs_all: np.ndarray) -> dict[str, np.ndarray]:
        """label -> (H, W): its row's map (a view, no copy: K full-size maps can be gigabytes,
        a 50 MP image), or the mean of its rows' maps when it has several prompts."""
        probs: dict[str, np.ndarray] = {}
        for lab in query.labels:
            rows_of = [i for i, (name, _) in enumerate(query.rows) if name == lab]
            if len(rows_of) == 1:
                probs[lab] = np.asarray(probs_all[rows_of[0]], dtype=np.float32)
            else:
                probs[lab] = np.asarray(probs_all[rows_of], dtype=np.float32).mean(axis=0)
        return probs

    def _prediction(
        self,
        image: np.ndarray,
        controls: Sequence[ControlSpec],
        query: _Query,
        probs_all: np.ndarray,
        resolvers: Resolvers | None = None,
    ) -> ImagePrediction:
        """Probability maps (K, H, W) of one image's rows -> regions and Label Studio results."""
        height, width = image.shape[:2]
        probs = self._label_maps(query, probs_all)  # label -> (H, W)
        min_area = min_area_pixels(self.settings.min_region_area, height, width)
        results: list[dict[str, Any]] = []
        all_regions: list[Region] = []
        details: dict[str, dict[str, Any]] = {}
        found: dict[tuple[str, float], list[Region]] = {}
        resolved_uncertainty: list[float] = []
        for control in controls:
            tag = tag_for(control, self.tags)
            resolver = (resolvers or {}).get(control.name)
            if resolver is not None and resolver.fits(control, probs):
                regions, doubt = resolver.resolve_with_uncertainty(
                    image,
                    np.stack([probs[lab] for lab in resolver.labels]),
                    self.control_regions(control, probs),
                )
                resolved_uncertainty.append(doubt)
                all_regions.extend(regions)
                results.extend(tag.results(control, regions))
                continue
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
                results.extend(tag.results(control, found[key]))
        for lab, p in probs.items():
            details[lab] = {
                "max_probability": float(p.max()),
                "uncertainty": uncertainty_of(
                    p, self.settings.uncertain_low, self.settings.uncertain_high
                ),
                "exemplars": query.exemplars[lab],
            }
        uncertainty = float(np.mean([d["uncertainty"] for d in details.values()]))
        if resolved_uncertainty:  # a learned project: how unsure its label choices are
            uncertainty = float(np.mean(resolved_uncertainty))
        scores = [r["score"] for r in results]
        confidence = float(np.mean(scores)) if scores else 0.0
        return ImagePrediction(results, all_regions, uncertainty, confidence, details)

    def _live_exemplars(
        self, image: np.ndarray, regions: Sequence[SmartRegion]
    ) -> dict[str, list[torch.Tensor]]:
        """label -> embeddings of the smart regions the annotator just drew on this image.
        Holds the predictor lock."""
        out: dict[str, list[torch.Tensor]] = {}
        height, width = image.shape[:2]
        for region in regions:
            shape = exemplar_shape(region.item, height, width)
            if shape is None:
                continue
            emb = self.predictor.embed_exemplar(image, **shape)
            for name in region.labels:
                out.setdefault(name, []).append(emb)
        return out
