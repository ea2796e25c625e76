"""One training run: annotated images -> a new learned state, validated against the serving one.

1. Every annotated image goes through the model once (`Segmenter.label_maps`, the vision encoder
   once per image), and each control's regions are found as they are served.
2. The examples are split by task: a fixed fraction (by a hash of the task's id, so a task stays
   on its side as the project grows) is held out for validation, at least one.
3. Per control, a `RegionResolver` is fitted to the training tasks' candidate regions, with
   the model's masks or with the masks refined by color
   (`backend.learning.regions.refine_by_color`). Which of the two is decided by cross-validation
   on the training tasks alone (CV_FOLDS folds by task hash; the PQ of both is in the record),
   not on the validation tasks: chosen there, on the 1 to 5 tasks a small project holds out, the
   choice followed their luck (with 16 annotated tasks, 3 of 24 splits chose the masks that took
   held-out PQ below the base model's), and the validation that then promotes the state would
   be the one it was chosen on. With fewer than two training tasks, the model's masks.
4. On the validation tasks, panoptic quality (`clipseg.evaluate.panoptic_quality`, IoU > 0.5) of
   the base model, of the serving state and of the new one decides: the new state is promoted
   only when its PQ is strictly higher than the serving one's. Otherwise it is kept as rejected,
   with its figures.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.controls import tag_for
from backend.label_config import ControlSpec
from backend.learning.regions import (
    BASE_FEATURES,
    RegionResolver,
    candidate_objects,
    candidate_targets,
    fit_resolver,
    region_features,
)
from backend.learning.states import LearnedState, StateStore
from backend.segmenter import Segmenter
from clipseg.evaluate import PanopticCounts, panoptic_quality

logger = logging.getLogger(__name__)

#: Fraction of the annotated tasks held out to decide promotion.
VALIDATION_FRACTION = 0.25
#: Candidate masks as the model draws them, and refined by color.
REFINE_CHOICES = (False, True)
#: Folds of the cross-validation that chooses between them (fewer with fewer training tasks).
CV_FOLDS = 4


@dataclass(frozen=True)
class Example:
    """One annotated image: ``task`` its task's id, ``image`` (H, W, 3) uint8 RGB, ``truth``
    (label, bool (H, W) mask) per annotated region, ``annotation`` the annotation's id."""

    task: Any
    image: np.ndarray
    truth: tuple[tuple[str, np.ndarray], ...]
    annotation: Any = None


def is_validation(task: Any, fraction: float = VALIDATION_FRACTION) -> bool:
    """Whether a task is held out: a hash of its id, so the split never moves."""
    digest = hashlib.sha256(str(task).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def split(
    examples: Sequence[Example], fraction: float = VALIDATION_FRACTION
) -> tuple[list[Example], list[Example]]:
    """(training, validation). With two examples or more, both sides get at least one (the
    tasks with the lowest hashes go to validation when none fell there)."""
    val = [e for e in examples if is_validation(e.task, fraction)]
    train = [e for e in examples if not is_validation(e.task, fraction)]
    if len(examples) >= 2 and (not val or not train):
        ranked = sorted(
            examples, key=lambda e: hashlib.sha256(str(e.task).encode("utf-8")).digest()
        )
        cut = max(1, round(fraction * len(examples)))
        val, train = ranked[:cut], ranked[cut:]
    return train, val


class _Masks:
    """Bool (H, W) masks kept bit-packed (8 times smaller: a training holds every region of
    every annotated image, never the probability maps)."""

    def __init__(self, masks: Sequence[np.ndarray]) -> None:
        self.shape = masks[0].shape if masks else (0, 0)
        self._packed = [np.packbits(m, axis=None) for m in masks]

    def __len__(self) -> int:
        return len(self._packed)

    def __getitem__(self, i: int) -> np.ndarray:
        size = self.shape[0] * self.shape[1]
        return np.unpackbits(self._packed[i], count=size).astype(bool).reshape(self.shape)


@dataclass
class _Seen:
    """What the model made of one example, per control: the served regions (labels + masks),
    and per refine choice the candidate objects (masks, features (N, F), classes (N,))."""

    example: Example
    served: dict[str, tuple[list[str], _Masks]]
    candidates: dict[tuple[str, bool], tuple[_Masks, np.ndarray, np.ndarray]]


def _see(
    segmenter: Segmenter,
    learnable: Sequence[ControlSpec],
    example: Example,
    stored: dict[str, np.ndarray] | None,
) -> _Seen:
    """One example through the model (its maps are dropped once its features are made)."""
    maps = segmenter.label_maps(example.image, learnable, stored)
    served: dict[str, tuple[list[str], _Masks]] = {}
    candidates: dict[tuple[str, bool], tuple[_Masks, np.ndarray, np.ndarray]] = {}
    for control in learnable:
        labels = [lab.value for lab in control.labels]
        regions = segmenter.control_regions(control, maps)
        served[control.name] = ([r.label for r in regions], _Masks([r.mask for r in regions]))
        stack = _stack(maps, labels)
        truth = _truth_of(example, control)
        n_features = BASE_FEATURES + len(labels)
        for refine in REFINE_CHOICES:
            found = candidate_objects(example.image, regions, refine)
            features = np.zeros((len(found), n_features), np.float32)
            for i, region in enumerate(found):
                features[i] = region_features(example.image, stack, region.mask)
            classes = candidate_targets(found, truth, labels)
            candidates[(control.name, refine)] = (
                _Masks([r.mask for r in found]),
                features,
                classes,
            )
    return _Seen(example, served, candidates)


def learnable_controls(segmenter: Segmenter, controls: Sequence[ControlSpec]) -> list[ControlSpec]:
    """The controls that get regions with masks (brush, polygon, rectangle)."""
    out = []
    for control in segmenter.answered(controls):
        tag = tag_for(control, segmenter.tags)
        if tag is not None and tag.has_mask:
            out.append(control)
    return out


def _truth_of(example: Example, control: ControlSpec) -> list[tuple[str, np.ndarray]]:
    names = {lab.value for lab in control.labels}
    return [(label, mask) for label, mask in example.truth if label in names]


def _stack(maps: Mapping[str, np.ndarray], labels: Sequence[str]) -> np.ndarray:
    return np.stack([maps[label] for label in labels])


def _counts(
    seen: Sequence[_Seen], control: ControlSpec, resolver: RegionResolver | None
) -> PanopticCounts:
    """Panoptic counts of ``control`` on ``seen`` as served without a resolver, or with it (a
    resolver learned for other labels, or another order of them, is not applied, as serving
    does not apply it)."""
    labels = [lab.value for lab in control.labels]
    if resolver is not None and list(resolver.labels) != labels:
        resolver = None
    total = PanopticCounts()
    for s in seen:
        truth = _truth_of(s.example, control)
        if resolver is None:
            names, masks = s.served[control.name]
            predicted = [(name, masks[i]) for i, name in enumerate(names)]
        else:
            masks, features, _ = s.candidates[(control.name, resolver.refine)]
            answers = resolver.answers(features) if len(features) else []
            predicted = [
                (label, masks[i]) for i, (label, _) in enumerate(answers) if label is not None
            ]
        total = total + panoptic_quality(predicted, truth)
    return total


def _fit(control: ControlSpec, seen: Sequence[_Seen], refine: bool) -> RegionResolver | None:
    """The resolver of ``control`` fitted to the candidates of ``seen`` (None without any)."""
    labels = [lab.value for lab in control.labels]
    parts = [s.candidates[(control.name, refine)] for s in seen]
    parts = [(f, c) for _, f, c in parts if len(f)]
    if not parts:
        return None
    features = np.concatenate([f for f, _ in parts])
    classes = np.concatenate([c for _, c in parts])
    return fit_resolver(labels, features, classes, refine=refine)


def _fold_of(task: Any, folds: int) -> int:
    digest = hashlib.sha256(b"cv:" + str(task).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % folds


def _cross_validated_pq(
    control: ControlSpec, trained: Sequence[_Seen], refine: bool
) -> float | None:
    """PQ of ``control``'s resolver with masks ``refine``d or not, each training task counted by
    a resolver fitted on the other folds (None with fewer than two tasks)."""
    folds = min(CV_FOLDS, len(trained))
    if folds < 2:
        return None
    fold = [_fold_of(s.example.task, folds) for s in trained]
    if len(set(fold)) < 2:  # a hash that put every task in one fold: deal them round-robin
        fold = [i % folds for i in range(len(trained))]
    total = PanopticCounts()
    for k in range(folds):
        inside = [s for s, f in zip(trained, fold, strict=True) if f != k]
        outside = [s for s, f in zip(trained, fold, strict=True) if f == k]
        if not outside:
            continue
        resolver = _fit(control, inside, refine)
        total = total + _counts(outside, control, resolver)
    return total.pq


def _figures(counts: PanopticCounts, tasks: int) -> dict[str, Any]:
    """`backend.batch.evaluate.panoptic_figures` (what `clipseg-label evaluate` reports), its
    ratios rounded for the state's record."""
    from backend.batch.evaluate import panoptic_figures

    figures = panoptic_figures(counts, tasks)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}


def train_state(
    segmenter: Segmenter,
    controls: Sequence[ControlSpec],
    examples: Sequence[Example],
    stored: dict[str, np.ndarray] | None,
    serving: LearnedState | None,
    validation_fraction: float = VALIDATION_FRACTION,
    deadline: float | None = None,
) -> tuple[dict[str, RegionResolver], dict[str, Any]]:
    """Fit a resolver per learnable control and measure it: (resolvers, record). The record
    holds the validation figures of "base", "serving" and "new", and "promote" (bool) with its
    "reason". ValueError when nothing can be learned (no learnable control, no examples).
    ``deadline`` (a `time.monotonic()` value): no image is encoded past it; the examples left
    are counted in the record's "left_out" and the run goes on with those encoded."""
    started = time.monotonic()
    learnable = learnable_controls(segmenter, controls)
    if not learnable:
        raise ValueError("the label config has no brush, polygon or rectangle control to learn")
    if not examples:
        raise ValueError("no annotated image to learn from")
    seen = []
    for example in examples:
        if deadline is not None and seen and time.monotonic() > deadline:
            break
        seen.append(_see(segmenter, learnable, example, stored))
    left_out = len(examples) - len(seen)
    examples = [s.example for s in seen]
    train, _ = split(examples, validation_fraction)
    train_ids = {id(e) for e in train}
    held_out = [s for s in seen if id(s.example) not in train_ids]
    resolvers: dict[str, RegionResolver] = {}
    choices: dict[str, dict[str, float]] = {}
    trained = [s for s in seen if id(s.example) in train_ids]
    for control in learnable:
        scores = {
            refine: _cross_validated_pq(control, trained, refine) for refine in REFINE_CHOICES
        }
        scored = {refine: pq for refine, pq in scores.items() if pq is not None}
        # the better in cross-validation; a tie, or too few tasks to tell, keeps the model's masks
        refine = max(scored, key=lambda r: (scored[r], not r)) if scored else False
        resolver = _fit(control, trained, refine)
        if resolver is not None:
            resolvers[control.name] = resolver
            choices[control.name] = {
                ("refined" if r else "model masks"): round(pq, 4) for r, pq in scored.items()
            }
            choices[control.name]["chosen"] = "refined" if refine else "model masks"
    figures: dict[str, dict[str, Any]] = {}
    for name, chosen in (
        ("base", {}),
        ("serving", serving.resolvers if serving is not None else {}),
        ("new", resolvers),
    ):
        total = PanopticCounts()
        for control in learnable:
            total = total + _counts(held_out, control, chosen.get(control.name))
        figures[name] = _figures(total, len(held_out))
    if not held_out:
        promote, reason = False, "too few annotated tasks to hold one out for validation (need 2)"
    elif not resolvers:
        promote, reason = False, "no candidate region in the training tasks"
    elif figures["new"]["pq"] > figures["serving"]["pq"]:
        promote, reason = True, "validation PQ above the serving state's"
    else:
        promote, reason = False, "validation PQ not above the serving state's"
    record = {
        "train_tasks": len(train),
        "validation_tasks": len(held_out),
        "annotations": sorted({str(e.annotation) for e in examples if e.annotation is not None}),
        "validation": figures,
        "masks": choices,
        "serving_before": serving.id if serving is not None else "base",
        "promote": promote,
        "reason": reason,
        "seconds": round(time.monotonic() - started, 2),
        "left_out": left_out,
    }
    return resolvers, record


def run_training(
    segmenter: Segmenter,
    controls: Sequence[ControlSpec],
    examples: Sequence[Example],
    stored: dict[str, np.ndarray] | None,
    states: StateStore,
    project: str,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Train, save the new state, and promote it when validation says so (and the project is
    not pinned); returns the state's record (with "id" and "promoted"). ``deadline``:
    `train_state`'s."""
    serving = states.serving(project)
    resolvers, record = train_state(
        segmenter, controls, examples, stored, serving, deadline=deadline
    )
    if not resolvers:
        record.update(id=None, promoted=False)
        return record
    state_id = states.save(project, resolvers, {**record, "promoted": False})
    promoted = bool(record["promote"]) and states.promote(project, state_id)
    if record["promote"] and not promoted:
        record["reason"] = "pinned: the serving state is kept (clipseg-label learn --unpin)"
    states.update_info(project, state_id, promoted=promoted, reason=record["reason"])
    record.update(id=state_id, promoted=promoted)
    logger.info(
        "project %s: state %s %s (validation PQ new %.3f, serving %.3f, base %.3f): %s",
        project,
        state_id,
        "promoted" if promoted else "rejected",
        record["validation"]["new"]["pq"],
        record["validation"]["serving"]["pq"],
        record["validation"]["base"]["pq"],
        record["reason"],
    )
    return record
