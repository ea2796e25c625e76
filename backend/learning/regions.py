"""The learned region resolver: which label (if any) each object found in an image gets.

CLIPSeg decodes every label on its own, so one object can come back as several labels ("white
circle", "white square" and "white star" on one white circle) when the model cannot tell them
apart. The resolver sits between regions and results:

1. *Candidates.* The regions of all labels of one control (`probability_to_regions` of each
   label's map, as served) are grouped: a region whose IoU with an earlier, higher-scoring one is
   above 0.5 joins its group. A group is one object; its mask is its best region's, or, when the
   resolver was fitted with ``refine`` (chosen on held-out annotations, `backend.learning.
   trainer`), that mask grown or cut to the object's own colors (`refine_by_color`): CLIPSeg's
   masks come from a coarse patch grid (16 x 16 for the demo model, 22 x 22 for CIDAS'), so
   their outline is blobby and says little about the object's shape; the image's does.
2. *Features* of each candidate (`region_features`): the shape of its mask (area, solidity,
   extent, circularity, aspect, polygon vertices, Hu moments), its colors in the image, and every
   label's mean probability inside it.
3. *Classification:* a multinomial logistic regression over the control's labels plus
   "nothing", fitted to the project's annotations (`fit_resolver`): a candidate that matches an
   annotated object (IoU > 0.5) is an example of that object's label, one that matches none an
   example of "nothing". A candidate is dropped when "nothing" has a probability of 0.5 or
   more, and becomes one region of its most probable label otherwise (taking the argmax over
   all classes instead would drop an object whose label is unsure between two shapes).

Why this: the demo model finds every object (matched IoU about 0.77) but its scores confuse the
shapes, and fitting its label embeddings and decoder to 30 annotated scenes barely helps (PQ
0.23 -> 0.27, docs/learning.md): its features do not separate the shapes. The masks it draws do,
and so do the colors under them; a few hundred parameters learn them from tens of annotations,
on a CPU, in well under a second, and they learn names the text encoder never saw (the label of
an annotated object is whatever the annotator chose).

Frames: masks and images are (H, W) at the image's size; features are per candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from backend.formats.regions import Region
from backend.label_config import ControlSpec
from clipseg.evaluate import mask_iou

#: Two regions whose IoU is above this are one object.
SAME_OBJECT_IOU = 0.5
#: Geometry and color features per candidate, before the per-label probabilities.
BASE_FEATURES = 16
#: Candidate objects per control and image at most (the best scored).
MAX_CANDIDATES = 64
#: `refine_by_color`: how far (CIE Lab units) beyond the core's own spread a pixel's color may
#: lie from the core's median color and still belong to the object.
COLOR_TOLERANCE = 15.0


def _boxes_touch(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two (x, y, w, h) boxes overlap (masks in boxes that do not have IoU 0)."""
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return ix > 0 and iy > 0


def group_regions(regions: Sequence[Region], limit: int | None = None) -> list[Region]:
    """One region per object: regions by decreasing score, each joining the first kept region
    it overlaps by IoU > SAME_OBJECT_IOU (the kept region stands for the object); at most
    ``limit`` objects (MAX_CANDIDATES by default: a bound on the work per image), the best
    scored. IoUs are computed only for regions whose boxes overlap, on their boxes."""
    limit = MAX_CANDIDATES if limit is None else limit
    kept: list[Region] = []
    for region in sorted(regions, key=lambda r: -r.score):
        box = region.bbox
        if not any(
            _boxes_touch(box, k.bbox) and _crop_iou(region, k) > SAME_OBJECT_IOU for k in kept
        ):
            kept.append(region)
            if len(kept) >= limit:
                break
    return kept


def _crop_iou(a: Region, b: Region) -> float:
    """`mask_iou` of two regions computed on the union of their boxes only."""
    ax, ay, aw, ah = a.bbox
    bx, by, bw, bh = b.bbox
    x0, y0 = min(ax, bx), min(ay, by)
    x1, y1 = max(ax + aw, bx + bw), max(ay + ah, by + bh)
    return mask_iou(a.mask[y0:y1, x0:x1], b.mask[y0:y1, x0:x1])


def refine_by_color(
    image: np.ndarray, mask: np.ndarray, tolerance: float = COLOR_TOLERANCE
) -> np.ndarray:
    """``mask`` (bool (H, W)) snapped to the object's colors in ``image`` ((H, W, 3) uint8 RGB).

    The mask's core (eroded by 15 % of its smaller side) gives the object's median color in CIE
    Lab; within the mask's box grown by 25 % on each side, the pixels whose color is within
    ``tolerance`` plus the core's own spread (median + 3 x median absolute deviation of the
    core's distances) are the object's, and of their connected components the one that covers
    most of the core is kept (closed by 3 x 3). When that is under 0.4 or over 2.5 times the
    mask's area (a textured object, a background of the object's color), the mask is returned
    unchanged."""
    m8 = mask.astype(np.uint8)
    ys, xs = np.nonzero(m8)
    if len(ys) == 0:
        return mask
    height, width = mask.shape
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    pad_y, pad_x = max(2, int(0.25 * (y1 - y0))), max(2, int(0.25 * (x1 - x0)))
    wy0, wy1 = max(0, y0 - pad_y), min(height, y1 + pad_y)
    wx0, wx1 = max(0, x0 - pad_x), min(width, x1 + pad_x)
    window = cv2.cvtColor(np.ascontiguousarray(image[wy0:wy1, wx0:wx1]), cv2.COLOR_RGB2LAB).astype(
        np.float32
    )
    inside = m8[wy0:wy1, wx0:wx1]
    erosion = max(1, int(0.15 * min(y1 - y0, x1 - x0)))
    core = cv2.erode(inside, np.ones((3, 3), np.uint8), iterations=erosion)
    if core.sum() < 10:
        core = inside
    reference = np.median(window[core > 0], axis=0)
    distance = np.linalg.norm(window - reference, axis=2)
    own = distance[core > 0]
    spread = np.median(own) + 3 * np.median(np.abs(own - np.median(own)))
    close = (distance < spread + tolerance).astype(np.uint8)
    count, components = cv2.connectedComponents(close)
    if count <= 1:
        return mask
    overlap = np.bincount(components[core > 0], minlength=count)
    overlap[0] = 0
    best = (components == overlap.argmax()).astype(np.uint8)
    best = cv2.morphologyEx(best, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    out = np.zeros_like(mask, dtype=bool)
    out[wy0:wy1, wx0:wx1] = best > 0
    if not 0.4 * len(ys) <= np.count_nonzero(out) <= 2.5 * len(ys):
        return mask
    return out


def candidate_objects(image: np.ndarray, regions: Sequence[Region], refine: bool) -> list[Region]:
    """`group_regions`, each mask refined by color when ``refine``."""
    grouped = group_regions(regions)
    if not refine:
        return grouped
    return [Region(refine_by_color(image, r.mask), r.score, r.label) for r in grouped]


def region_features(image: np.ndarray, probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(BASE_FEATURES + K,) float32 features of one candidate.

    Args:
        image: (H, W, 3) uint8 RGB.
        probs: (K, H, W) the control's label probabilities, in its label order.
        mask: bool (H, W), not empty.
    """
    h, w = mask.shape
    m8 = mask.astype(np.uint8)
    area = float(m8.sum())
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    hull = cv2.contourArea(cv2.convexHull(contour)) + 1e-6
    perimeter = cv2.arcLength(contour, True) + 1e-6
    _, _, bw, bh = cv2.boundingRect(contour)
    _, (rw, rh), _ = cv2.minAreaRect(contour)
    hu = cv2.HuMoments(cv2.moments(m8, True)).ravel()[:4]
    hu = -np.sign(hu) * np.log10(np.abs(hu) + 1e-30) / 10
    vertices = len(cv2.approxPolyDP(contour, 0.02 * perimeter, True))
    pixels = image[mask].astype(np.float32) / 255.0
    geometry = [
        np.log(area / (h * w)),
        min(area / hull, 1.0),  # solidity: a star or a cross is far from convex
        area / (bw * bh + 1e-6),  # extent: a square fills its box
        4 * np.pi * area / perimeter**2,  # circularity
        min(rw, rh) / (max(rw, rh) + 1e-6),
        vertices / 10,
    ]
    inside = probs[:, mask].mean(axis=1)
    return np.concatenate([geometry, hu, pixels.mean(axis=0), pixels.std(axis=0), inside]).astype(
        np.float32
    )


@dataclass(frozen=True)
class RegionResolver:
    """A fitted resolver for one control: ``labels`` (its classes 1..K; 0 is "nothing"), the
    feature standardisation ``mean``/``scale`` (F,), the logistic regression ``weights``
    (F, K + 1) and ``bias`` (K + 1,), and whether candidate masks are refined by color."""

    labels: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    refine: bool = False

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N, K + 1) class probabilities (column 0: "nothing")."""
        z = ((features - self.mean) / self.scale) @ self.weights + self.bias
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def resolve(
        self, image: np.ndarray, probs: np.ndarray, regions: Sequence[Region]
    ) -> list[Region]:
        """The control's regions (all labels, as `probability_to_regions` found them on
        ``probs`` (K, H, W) in ``labels`` order) -> one region per object that is not
        "nothing", labelled with its most probable class, scored by that class's probability."""
        return self.resolve_with_uncertainty(image, probs, regions)[0]

    def resolve_with_uncertainty(
        self, image: np.ndarray, probs: np.ndarray, regions: Sequence[Region]
    ) -> tuple[list[Region], float]:
        """`resolve`, and its uncertainty: the mean over the candidate objects of the chance
        that the answer given for them (a label, or dropping it) is wrong, 1 - its probability
        (0 without candidates). This is what an annotator would have to check, so it is what
        ranks the next tasks to label once a project has learned."""
        candidates = candidate_objects(image, regions, self.refine)
        if not candidates:
            return [], 0.0
        features = np.stack([region_features(image, probs, r.mask) for r in candidates])
        out, doubts = [], []
        for region, (label, probability) in zip(candidates, self.answers(features), strict=True):
            doubts.append(1.0 - probability)
            if label is not None:
                out.append(Region(region.mask, probability, label))
        return out, float(np.mean(doubts))

    def answers(self, features: np.ndarray) -> list[tuple[str | None, float]]:
        """Per candidate ((N, F) features): its label (None: nothing, dropped) and the
        probability of that answer. Nothing when its probability is 0.5 or more; else the most
        probable label (the argmax over all classes would drop an object whose label is unsure
        between two shapes)."""
        out: list[tuple[str | None, float]] = []
        for row in self.probabilities(features):
            if row[0] >= 0.5:
                out.append((None, float(row[0])))
            else:
                best = int(row[1:].argmax()) + 1
                out.append((self.labels[best - 1], float(row[best])))
        return out

    def fits(self, control: ControlSpec, maps: Mapping[str, np.ndarray]) -> bool:
        """Whether it was learned for this control's labels as they are now (a label added to
        or removed from the label config since: not used until the next training) and every
        label has its map."""
        return set(self.labels) == {lab.value for lab in control.labels} and all(
            lab in maps for lab in self.labels
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean,
            "scale": self.scale,
            "weights": self.weights,
            "bias": self.bias,
            "refine": np.asarray([1.0 if self.refine else 0.0], np.float32),
        }

    @classmethod
    def from_arrays(cls, labels: Sequence[str], arrays: Mapping[str, np.ndarray]) -> RegionResolver:
        weights = np.asarray(arrays["weights"], np.float32)
        features = BASE_FEATURES + len(labels)
        if weights.shape != (features, len(labels) + 1):
            raise ValueError(
                f"resolver weights of shape {weights.shape} do not fit {len(labels)} labels "
                f"(expected {(features, len(labels) + 1)})"
            )
        return cls(
            tuple(labels),
            np.asarray(arrays["mean"], np.float32),
            np.asarray(arrays["scale"], np.float32),
            weights,
            np.asarray(arrays["bias"], np.float32),
            bool(np.asarray(arrays.get("refine", [0.0])).ravel()[0] > 0.5),
        )


def candidate_targets(
    candidates: Sequence[Region], truth: Sequence[tuple[str, np.ndarray]], labels: Sequence[str]
) -> np.ndarray:
    """(N,) int class of each candidate: 1 + the index in ``labels`` of the annotated object it
    matches best at IoU > 0.5, else 0 ("nothing")."""
    index = {label: i + 1 for i, label in enumerate(labels)}
    out = np.zeros(len(candidates), dtype=np.int64)
    for n, region in enumerate(candidates):
        best, best_iou = 0, 0.5
        for label, mask in truth:
            iou = mask_iou(region.mask, mask)
            if iou > best_iou and label in index:
                best, best_iou = index[label], iou
        out[n] = best
    return out


def fit_resolver(
    labels: Sequence[str],
    features: np.ndarray,
    classes: np.ndarray,
    l2: float = 1e-2,
    iterations: int = 300,
    refine: bool = False,
) -> RegionResolver:
    """Fit the logistic regression of (N, F) ``features`` to (N,) ``classes`` (0 = nothing,
    1..K = ``labels``), with an L2 penalty ``l2`` on the weights (few examples per label)."""
    import torch

    if len(features) == 0:
        raise ValueError("no candidate regions to learn from")
    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-3
    x = torch.from_numpy((features - mean) / scale).double()
    y = torch.from_numpy(np.asarray(classes, np.int64))
    k = len(labels) + 1
    weights = torch.zeros(x.shape[1], k, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weights, bias], max_iter=iterations, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weights + bias, y) + l2 * (weights**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return RegionResolver(
        tuple(labels),
        mean.astype(np.float32),
        scale.astype(np.float32),
        weights.detach().numpy().astype(np.float32),
        bias.detach().numpy().astype(np.float32),
        refine,
    )
