"""Regions from probability maps: threshold, clean up, split, score.

A CLIPSeg probability map (H, W) float in [0, 1] becomes a list of `Region`s:
- semantic mode: one region per label (all pixels above the threshold, after clean-up);
- instance mode: one region per 8-connected component.
Clean-up is optional: hole filling (background components that do not touch the border, taken
4-connected, the complement of 8-connected foreground) and removal of components smaller than
a minimum area in pixels and/or in percent of the image. A region's score is the mean
probability inside it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

logger = logging.getLogger(__name__)

MODES = ("semantic", "instance")


@dataclass(frozen=True, eq=False)
class Region:
    """One region of one label: what `probability_to_regions` finds and the control tags
    (`backend.controls`) turn into Label Studio results.

    Attributes:
        mask: bool (H, W) at the image's size.
        score: mean probability inside the mask, in [0, 1].
        label: the label name.
    """

    mask: np.ndarray
    score: float
    label: str

    @cached_property
    def bbox(self) -> tuple[int, int, int, int]:
        """(x, y, w, h) pixel extents of the mask (`mask_bbox`): columns x .. x + w - 1, rows
        y .. y + h - 1 (the convention of pycocotools' toBbox for RLE); computed on first use."""
        return mask_bbox(self.mask)

    @property
    def area(self) -> int:
        """Number of pixels in the mask."""
        return int(np.count_nonzero(self.mask))


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, w, h) pixel extents of a bool (H, W) mask; (0, 0, 0, 0) when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def validate_probability_map(prob: np.ndarray) -> np.ndarray:
    """Check a probability map (H, W) floating point in [0, 1] without NaNs; return it."""
    if not isinstance(prob, np.ndarray):
        raise ValueError(f"probability map must be a numpy array, got {type(prob).__name__}")
    if prob.ndim != 2:
        raise ValueError(
            f"probability map must be 2-D (H, W), got shape {prob.shape}; "
            "pass one map of a (K, H, W) stack at a time"
        )
    if prob.dtype.kind != "f":
        raise ValueError(
            f"probability map must be floating point in [0, 1], got dtype {prob.dtype}; "
            "convert (e.g. uint8 / 255.0) before calling"
        )
    if prob.size == 0:
        raise ValueError(f"probability map is empty (shape {prob.shape})")
    if np.isnan(prob).any():
        raise ValueError(
            f"probability map holds {int(np.isnan(prob).sum())} NaN values: the model output "
            "is invalid (check the input image and the model's dtype)"
        )
    low, high = float(prob.min()), float(prob.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"probability map must lie in [0, 1], got [{low}, {high}]; apply a sigmoid to logits"
        )
    return prob


def fill_mask_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a bool (H, W) mask: background pixels not 4-connected to the border."""
    background = (~mask).astype(np.uint8)
    n, labels = cv2.connectedComponents(background, connectivity=4)
    if n <= 1:
        return mask.copy()
    border = np.unique(np.concatenate((labels[0], labels[-1], labels[:, 0], labels[:, -1])))
    outside = np.zeros(n, bool)
    outside[border] = True
    outside[0] = True  # label 0 is the foreground
    return ~outside[labels] | mask


def _min_area_pixels(shape: tuple[int, int], min_area: int, min_area_percent: float) -> int:
    if min_area < 0 or not 0.0 <= min_area_percent <= 100.0:
        raise ValueError(
            f"min_area must be >= 0 pixels and min_area_percent in [0, 100], got {min_area} "
            f"and {min_area_percent}"
        )
    # rounded up after dropping float noise: 7% of 100 px computes as 7.000000000000001 (7, not 8)
    pixels = round(min_area_percent / 100.0 * shape[0] * shape[1], 6)
    return max(int(min_area), int(np.ceil(pixels)))


def probability_to_regions(
    prob: np.ndarray,
    label: str,
    *,
    threshold: float = 0.5,
    mode: str = "semantic",
    fill_holes: bool = False,
    min_area: int = 0,
    min_area_percent: float = 0.0,
) -> list[Region]:
    """Regions of one label from its probability map.

    Args:
        prob: float (H, W) in [0, 1] (a CLIPSeg map at the image's size).
        label: the label name given to every region.
        threshold: a pixel belongs to the label when its probability is strictly above it.
        mode: "semantic" (at most one region: every kept pixel) or "instance" (one region per
            8-connected component, largest first).
        fill_holes: fill holes inside components before measuring them.
        min_area: drop components smaller than this many pixels.
        min_area_percent: drop components smaller than this percent of the image (rounded up
            to whole pixels); the larger of the two minimums applies.

    Returns:
        Regions with bool masks, score = mean probability inside; an empty list when nothing
        is left.

    Raises:
        ValueError: a map that is not 2-D floating point in [0, 1], NaNs, a bad threshold,
            mode or minimum area.
    """
    prob = validate_probability_map(prob)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    smallest = _min_area_pixels(prob.shape, min_area, min_area_percent)
    mask = prob > threshold
    if fill_holes and mask.any():
        mask = fill_mask_holes(mask)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= max(smallest, 1)) + 1
    if keep.size < n - 1:
        logger.debug("%s: dropped %d components under %d px", label, n - 1 - keep.size, smallest)
    if keep.size == 0:
        return []
    if mode == "semantic":
        kept = np.zeros(n, bool)
        kept[keep] = True
        masks = [kept[labels] if keep.size < n - 1 else mask]
    else:
        keep = keep[np.argsort(-stats[keep, cv2.CC_STAT_AREA], kind="stable")]
        masks = [labels == k for k in keep]
    regions = []
    for m in masks:
        regions.append(Region(mask=m, score=float(prob[m].mean()), label=label))
    return regions


def probabilities_to_regions(
    probs: np.ndarray,
    labels: Sequence[str],
    *,
    threshold: float | Sequence[float] = 0.5,
    exclusive: bool = False,
    **kwargs,
) -> list[Region]:
    """Regions of K labels from a (K, H, W) stack of maps, label by label.

    Args:
        probs: float (K, H, W) in [0, 1].
        labels: K label names, in the order of the maps.
        threshold: one threshold for all labels, or one per label.
        exclusive: give each pixel only to its most probable label (ties to the first) before
            thresholding, so that regions of different labels never overlap.
        **kwargs: mode, fill_holes, min_area, min_area_percent, as `probability_to_regions`.
    """
    if not isinstance(probs, np.ndarray) or probs.ndim != 3:
        shape = getattr(probs, "shape", None)
        raise ValueError(f"probability maps must be a (K, H, W) array, got shape {shape}")
    if len(labels) != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} probability maps but {len(labels)} labels")
    thresholds = (
        [float(threshold)] * len(labels)
        if np.isscalar(threshold)
        else [float(t) for t in threshold]  # type: ignore[union-attr]
    )
    if len(thresholds) != len(labels):
        raise ValueError(f"{len(thresholds)} thresholds for {len(labels)} labels")
    winner = probs.argmax(axis=0) if exclusive and len(labels) > 1 else None
    regions: list[Region] = []
    for k, (label, t) in enumerate(zip(labels, thresholds, strict=True)):
        prob = validate_probability_map(probs[k])
        if winner is not None:
            prob = np.where(winner == k, prob, prob.dtype.type(0))
        regions.extend(probability_to_regions(prob, label, threshold=t, **kwargs))
    return regions
