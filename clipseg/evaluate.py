"""Measure a checkpoint on held-out demo scenes: ``python -m clipseg.evaluate``.

For each scene (seeds from :data:`~clipseg.demo.scenes.EVAL_SEED_START`, disjoint from training's)
and each ``"<color> <shape>"`` present in it, the IoU between the thresholded probability map and
the target mask (every matching instance) is computed for

* the text prompt (``text``), and
* an exemplar prompt (``exemplar``): one object of that class cut from *another* held-out scene
  (seeds from :data:`EXEMPLAR_SEED_START`), through ``Predictor.embed_exemplar``.

mIoU is the mean over (scene, prompt) pairs, reported for every threshold of the sweep together
with the threshold that maximizes it. ``"<shape>"`` and ``"<color> object"`` prompts are reported
the same way (``shape``, ``color_object``). Absent prompts (:meth:`Scene.absent_prompts`, whose
target is empty) are scored separately: ``absent_fp_rate`` is the fraction of them whose
thresholded map has at least :data:`FP_MIN_PIXELS` pixels, ``absent_area`` the mean predicted area
as a fraction of the image.

:func:`match_regions` scores instance regions (label, mask) against ground-truth instances, per
label: panoptic quality (Kirillov et al., 2019) with one-to-one matching at IoU > 0.5 within each
label; :func:`panoptic_quality` pools them over labels (and, by adding :class:`PanopticCounts`,
over images). :func:`semantic_overlap` gives each label's semantic IoU (:class:`OverlapCounts`).
These are the one implementation of those figures: ``clipseg-label evaluate``
(``backend.batch.evaluate``) and the benchmarks use them.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipseg import Predictor
from clipseg.demo import scenes as demo_scenes

logger = logging.getLogger(__name__)

EXEMPLAR_SEED_START = demo_scenes.EVAL_SEED_START + 10**8
"""Exemplars are cut from scenes with seeds from here on (disjoint from the evaluated scenes)."""
EXEMPLARS_PER_CLASS = 5
FP_MIN_PIXELS = 16
THRESHOLDS = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))  # 0.1 .. 0.9
KINDS = ("text", "exemplar", "shape", "color_object", "absent")


def exemplar_bank(
    size: int, per_class: int = EXEMPLARS_PER_CLASS, min_pixels: int = 64
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """``per_class`` (image, visible mask) exemplars of every ``"<color> <shape>"``, from the
    first held-out exemplar scenes that contain one (at least ``min_pixels`` visible)."""
    names = [f"{c} {s}" for c in demo_scenes.COLORS for s in demo_scenes.SHAPES]
    bank: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in names}
    seed = EXEMPLAR_SEED_START
    while any(len(v) < per_class for v in bank.values()):
        scene = demo_scenes.make_scene(seed, size=size)
        for obj in scene.objects:
            if len(bank[obj.name]) < per_class and obj.mask.sum() >= min_pixels:
                bank[obj.name].append((scene.image, obj.mask))
        seed += 1
        if seed - EXEMPLAR_SEED_START > 100_000:
            raise RuntimeError("could not find exemplars of every class; check the scene generator")
    return bank


@dataclass(frozen=True)
class PanopticCounts:
    """Matches between predicted and true instances: ``tp`` matched pairs (their IoUs summing to
    ``iou_sum``), ``fp`` predicted regions left unmatched (false regions), ``fn`` true instances
    left unmatched (missed). Counts of several images add up with ``+``."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def __add__(self, other: PanopticCounts) -> PanopticCounts:
        return PanopticCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.iou_sum + other.iou_sum
        )

    @property
    def sq(self) -> float:
        """Segmentation quality: the mean IoU of the matched pairs (0 without any)."""
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def rq(self) -> float:
        """Recognition quality: TP / (TP + FP / 2 + FN / 2), an F1 score; 1 when there was
        nothing to find and nothing was found."""
        denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.tp / denominator if denominator else 1.0

    @property
    def pq(self) -> float:
        """Panoptic quality, SQ * RQ = (sum of matched IoUs) / (TP + FP / 2 + FN / 2)."""
        if self.tp + self.fp + self.fn == 0:
            return 1.0
        return self.sq * self.rq


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks on one grid (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def match_regions(
    predicted: Sequence[tuple[str, np.ndarray]],
    truth: Sequence[tuple[str, np.ndarray]],
    iou_threshold: float = 0.5,
) -> dict[str, PanopticCounts]:
    """Match one image's predicted regions to its true instances, label by label.

    Args:
        predicted: (label, bool (H, W) mask) per predicted region.
        truth: (label, bool (H, W) mask) per true instance, on the same grid.
        iou_threshold: a pair matches when its IoU is strictly above it. At 0.5 or more the
            matching is unique whenever the instances of a label do not overlap (the PQ paper's
            argument); pairs are taken by decreasing IoU, each region and instance at most once.

    Returns:
        The counts of each label found on either side (sorted by label). A region of one label
        never matches an instance of another: a white circle found as "white square" is a false
        region of "white square" and a missed instance of "white circle".
    """
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    shapes = {m.shape for _, m in list(predicted) + list(truth)}
    if len(shapes) > 1:
        raise ValueError(f"predicted and true masks must share one (H, W) grid, got {shapes}")
    out: dict[str, PanopticCounts] = {}
    for label in sorted({lab for lab, _ in predicted} | {lab for lab, _ in truth}):
        preds = [m.astype(bool) for lab, m in predicted if lab == label]
        trues = [m.astype(bool) for lab, m in truth if lab == label]
        pairs = []
        for i, p in enumerate(preds):
            for j, t in enumerate(trues):
                iou = mask_iou(p, t)
                if iou > iou_threshold:
                    pairs.append((iou, i, j))
        used_p: set[int] = set()
        used_t: set[int] = set()
        iou_sum = 0.0
        for iou, i, j in sorted(pairs, reverse=True):
            if i not in used_p and j not in used_t:
                used_p.add(i)
                used_t.add(j)
                iou_sum += iou
        tp = len(used_p)
        out[label] = PanopticCounts(tp, len(preds) - tp, len(trues) - tp, iou_sum)
    return out


def panoptic_quality(
    predicted: Sequence[tuple[str, np.ndarray]],
    truth: Sequence[tuple[str, np.ndarray]],
    iou_threshold: float = 0.5,
) -> PanopticCounts:
    """The counts of :func:`match_regions` pooled over labels; ``.pq``, ``.sq`` and ``.rq``
    give the figures."""
    return sum(match_regions(predicted, truth, iou_threshold).values(), PanopticCounts())


@dataclass(frozen=True)
class OverlapCounts:
    """Semantic overlap of one label: pixels in both the union of its predicted regions and the
    union of its true instances (``intersection``), and in either (``union``). Counts of
    several images add up with ``+``, so that ``.iou`` is accumulated over them (each pixel
    weighs the same, as in the semantic-segmentation benchmarks)."""

    intersection: int = 0
    union: int = 0

    def __add__(self, other: OverlapCounts) -> OverlapCounts:
        return OverlapCounts(self.intersection + other.intersection, self.union + other.union)

    @property
    def iou(self) -> float:
        """intersection / union; 1 when the label is neither predicted nor true anywhere."""
        return self.intersection / self.union if self.union else 1.0


def semantic_overlap(
    predicted: Sequence[tuple[str, np.ndarray]], truth: Sequence[tuple[str, np.ndarray]]
) -> dict[str, OverlapCounts]:
    """Per label (sorted), the overlap of the union of its predicted masks with the union of its
    true masks (all bool (H, W) on one grid): instances do not matter here, pixels do."""
    shapes = {m.shape for _, m in list(predicted) + list(truth)}
    if len(shapes) > 1:
        raise ValueError(f"predicted and true masks must share one (H, W) grid, got {shapes}")
    if not shapes:
        return {}
    (shape,) = shapes
    out: dict[str, OverlapCounts] = {}
    for label in sorted({lab for lab, _ in predicted} | {lab for lab, _ in truth}):
        p = np.zeros(shape, bool)
        t = np.zeros(shape, bool)
        for lab, m in predicted:
            if lab == label:
                p |= m.astype(bool)
        for lab, m in truth:
            if lab == label:
                t |= m.astype(bool)
        out[label] = OverlapCounts(int(np.count_nonzero(p & t)), int(np.count_nonzero(p | t)))
    return out


def _ious(probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """IoU of each (K, H, W) map against its target at each threshold -> (K, T)."""
    out = np.zeros((len(probs), len(thresholds)))
    for j, t in enumerate(thresholds):
        pred = probs >= t
        inter = (pred & targets).sum(axis=(1, 2))
        union = (pred | targets).sum(axis=(1, 2))
        out[:, j] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return out


def evaluate(
    predictor: Predictor,
    n_scenes: int = 200,
    *,
    seed_start: int = demo_scenes.EVAL_SEED_START,
    size: int | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    kinds: Sequence[str] = KINDS,
    progress: bool = False,
) -> dict:
    """Score ``predictor`` on ``n_scenes`` held-out scenes of ``size`` pixels (default: the
    model's input size, so that no resizing blurs the comparison).

    Returns a dict with, per kind in ``kinds``: ``miou`` (list over ``thresholds``), ``best_miou``,
    ``best_threshold``, ``pairs``; for ``absent``: ``fp_rate`` and ``area`` per threshold. Also
    ``scenes``, ``thresholds`` and ``seconds``.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown evaluation kinds {sorted(unknown)}; use some of {KINDS}")
    if size is None:
        size = int(predictor.processor.image_processor.height)
    started = time.monotonic()
    bank = exemplar_bank(size) if "exemplar" in kinds else {}
    scores: dict[str, list[np.ndarray]] = {k: [] for k in kinds if k != "absent"}
    absent_fp: list[np.ndarray] = []
    absent_area: list[np.ndarray] = []
    seeds = range(seed_start, seed_start + n_scenes)
    if progress:
        from tqdm import tqdm

        seeds = tqdm(seeds, desc="evaluate", unit="scene")
    for seed in seeds:
        scene = demo_scenes.make_scene(seed, size=size)
        predictor.set_image(scene.image)
        names = sorted({o.name for o in scene.objects})
        prompts: dict[str, list[str]] = {
            "text": names,
            "shape": sorted({o.shape for o in scene.objects}),
            "color_object": sorted({f"{o.color} object" for o in scene.objects}),
            "absent": scene.absent_prompts(3),
        }
        for kind in scores:
            if kind == "exemplar":
                embs = []
                for name in names:
                    image, mask = bank[name][seed % len(bank[name])]
                    embs.append(predictor.embed_exemplar(image, mask=mask))
                probs = predictor.predict_embeddings(torch.stack(embs))
                targets = np.stack([scene.target(n) for n in names])
            else:
                probs = predictor.predict(prompts[kind])
                targets = np.stack([scene.target(p) for p in prompts[kind]])
            scores[kind].append(_ious(probs, targets, thresholds))
        if "absent" in kinds and prompts["absent"]:
            probs = predictor.predict(prompts["absent"])
            pred = probs[:, None] >= np.asarray(thresholds)[None, :, None, None]  # (K, T, H, W)
            pixels = pred.sum(axis=(2, 3))
            absent_fp.append(pixels >= FP_MIN_PIXELS)
            absent_area.append(pixels / (size * size))
    result: dict = {"scenes": n_scenes, "size": size, "thresholds": list(thresholds)}
    for kind, rows in scores.items():
        ious = np.concatenate(rows)  # (pairs, T)
        miou = ious.mean(axis=0)
        best = int(miou.argmax())
        result[kind] = {
            "miou": [round(float(m), 4) for m in miou],
            "best_miou": round(float(miou[best]), 4),
            "best_threshold": thresholds[best],
            "pairs": len(ious),
        }
    if "absent" in kinds:
        fp = np.concatenate(absent_fp).mean(axis=0)
        area = np.concatenate(absent_area).mean(axis=0)
        result["absent"] = {
            "fp_rate": [round(float(v), 4) for v in fp],
            "area": [round(float(v), 5) for v in area],
            "prompts": int(sum(len(a) for a in absent_fp)),
        }
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def format_report(result: dict) -> str:
    """A plain-text table of :func:`evaluate`'s result."""
    thresholds = result["thresholds"]
    lines = [f"{result['scenes']} held-out scenes of {result['size']} px, {result['seconds']} s"]
    header = "threshold      " + " ".join(f"{t:>5.2f}" for t in thresholds)
    lines.append(header)
    for kind in ("text", "exemplar", "shape", "color_object"):
        if kind in result:
            r = result[kind]
            lines.append(f"{kind + ' mIoU':<15}" + " ".join(f"{v:5.3f}" for v in r["miou"]))
    if "absent" in result:
        lines.append("absent FP rate " + " ".join(f"{v:5.3f}" for v in result["absent"]["fp_rate"]))
    for kind in ("text", "exemplar", "shape", "color_object"):
        if kind in result:
            r = result[kind]
            lines.append(
                f"{kind}: best mIoU {r['best_miou']:.3f} at threshold {r['best_threshold']} "
                f"({r['pairs']} pairs)"
            )
    if "absent" in result and "text" in result:
        j = thresholds.index(result["text"]["best_threshold"])
        a = result["absent"]
        lines.append(
            f"absent: false-positive rate {a['fp_rate'][j]:.3f}, mean area {a['area'][j]:.4f} "
            f"at the text threshold ({a['prompts']} prompts)"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clipseg.evaluate",
        description="Report mIoU of a checkpoint on held-out synthetic demo scenes, for text and "
        "exemplar prompts, over a threshold sweep.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="demo", help="checkpoint: 'demo', a directory or a hub id")
    p.add_argument("--scenes", type=int, default=200, help="number of held-out scenes")
    p.add_argument(
        "--seed-start", type=int, default=demo_scenes.EVAL_SEED_START, help="first scene seed"
    )
    p.add_argument(
        "--size", type=int, default=None, help="scene size in pixels (default: the model's input)"
    )
    p.add_argument(
        "--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="what to evaluate"
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor.from_pretrained(args.model, device=args.device, dtype=torch.float32)
    result = evaluate(
        predictor,
        args.scenes,
        seed_start=args.seed_start,
        size=args.size,
        kinds=args.kinds,
        progress=True,
    )
    print(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
