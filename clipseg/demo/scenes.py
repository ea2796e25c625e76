"""Synthetic scenes for the demo model: colored shapes on muted backgrounds, with exact masks.

A scene is a square RGB image with 1 to 5 objects (a color and a shape each), painted in order, so
later objects may partly hide earlier ones. Every object keeps the mask of its *visible* part. The
demo model's prompts are ``"<color> <shape>"``, ``"<shape>"`` and ``"<color> object"``;
``Scene.target(prompt)`` is the union of the visible masks of every matching object (empty when
nothing matches: an absent prompt).

Everything is a pure function of the seed (``numpy.random.default_rng(seed)``), so training and
evaluation can name disjoint seed ranges (:data:`TRAIN_SEED_LIMIT`, :data:`EVAL_SEED_START`).

Backgrounds are muted on purpose (saturation <= 0.25, value in [0.3, 0.75]) so that the saturated
object colors, pure white and near black always contrast with them.

Two styles share the vocabulary and the masks' meaning:

* ``"classic"`` (the default): the pinned held-out style every figure in docs/demo-model.md is
  measured on; its output for a seed never changes.
* ``"varied"``: the training style, wider so that what is learned carries over to renderers the
  model never saw: more background kinds (multi-scale blobs, line clutter, textures over
  gradients), object radii from 5 % to 32 % of the size, anti-aliased or hard edges per object,
  jittered shape proportions, shading and sensor noise of varying strength, a global blur now
  and then, and groups of several objects of one color with different shapes (side-by-side hard
  negatives: only the shape tells them apart).
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass, field

import cv2
import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 165, 45),
    "blue": (35, 70, 225),
    "yellow": (245, 225, 30),
    "orange": (250, 135, 15),
    "purple": (140, 40, 185),
    "white": (250, 250, 250),
    "black": (12, 12, 12),
}
"""Object colors (RGB); each object jitters its color by up to :data:`COLOR_JITTER` per channel."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noise", "texture")
VARIED_BACKGROUNDS: tuple[str, ...] = BACKGROUNDS + ("blobs", "clutter", "layered")
STYLES: tuple[str, ...] = ("classic", "varied")
COLOR_JITTER = 12
TRAIN_SEED_LIMIT = 10**6
"""Training draws scene seeds below this."""
EVAL_SEED_START = 10**9
"""Held-out evaluation draws scene seeds from here on."""

_MAX_TRIES = 50
_MIN_VISIBLE_FRACTION = 0.45


@dataclass(frozen=True)
class SceneObject:
    """One painted object: ``mask`` is its visible part after occlusion, bool (H, W)."""

    color: str
    shape: str
    mask: np.ndarray = field(repr=False)

    @property
    def name(self) -> str:
        """The object's ``"<color> <shape>"`` prompt."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A generated image (uint8 (H, W, 3) RGB) and its objects in painting order."""

    seed: int
    image: np.ndarray = field(repr=False)
    objects: list[SceneObject]
    background: str

    def matches(self, prompt: str) -> list[SceneObject]:
        """The objects a prompt names (see :func:`parse_prompt`)."""
        color, shape = parse_prompt(prompt)
        return [
            o
            for o in self.objects
            if (color is None or o.color == color) and (shape is None or o.shape == shape)
        ]

    def target(self, prompt: str) -> np.ndarray:
        """Bool (H, W): the union of the visible masks of every object the prompt names."""
        out = np.zeros(self.image.shape[:2], dtype=bool)
        for o in self.matches(prompt):
            out |= o.mask
        return out

    def present_prompts(self) -> list[str]:
        """Every prompt with a non-empty target: each ``"<color> <shape>"``, ``"<shape>"`` and
        ``"<color> object"`` of the objects present, without duplicates, in a fixed order."""
        names = sorted({o.name for o in self.objects})
        shapes = sorted({o.shape for o in self.objects})
        colors = sorted({f"{o.color} object" for o in self.objects})
        return names + shapes + colors

    def absent_prompts(self, n: int = 3) -> list[str]:
        """Up to ``n`` prompts naming nothing in the scene (their target is empty), one of each
        kind in turn (``"<color> <shape>"``, ``"<shape>"``, ``"<color> object"``), chosen by the
        scene's seed."""
        rng = np.random.default_rng([self.seed, 1])
        present_names = {o.name for o in self.objects}
        present_shapes = {o.shape for o in self.objects}
        present_colors = {o.color for o in self.objects}
        pools = [
            [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in present_names],
            [s for s in SHAPES if s not in present_shapes],
            [f"{c} object" for c in COLORS if c not in present_colors],
        ]
        out: list[str] = []
        for i in range(n):
            pool = [p for p in pools[i % 3] if p not in out]
            if pool:
                out.append(pool[int(rng.integers(len(pool)))])
        return out

    def prompts(self, include_absent: bool = True) -> list[str]:
        """:meth:`present_prompts`, then (if asked) :meth:`absent_prompts`."""
        return self.present_prompts() + (self.absent_prompts() if include_absent else [])


_PROMPT_RE = re.compile(r"^\s*(?:(\w+)\s+)?(\w+)\s*$")


def parse_prompt(prompt: str) -> tuple[str | None, str | None]:
    """``"<color> <shape>"``, ``"<shape>"`` or ``"<color> object"`` -> (color, shape), None for
    the part the prompt leaves open.

    Case and surrounding whitespace are ignored. Raises ``ValueError`` for anything else, naming
    the accepted words.
    """
    m = _PROMPT_RE.match(prompt.lower())
    if m is not None:
        first, second = m.group(1), m.group(2)
        if first is None and second in SHAPES:
            return None, second
        if first in COLORS and second in SHAPES:
            return first, second
        if first in COLORS and second == "object":
            return first, None
    raise ValueError(
        f"unknown demo prompt {prompt!r}: use '<color> <shape>', '<shape>' or '<color> object' "
        f"with colors {sorted(COLORS)} and shapes {list(SHAPES)}"
    )


# ---------------------------------------------------------------------------------------------
# drawing


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation mid-value RGB color (float32 (3,)) that no object color resembles."""
    h = rng.random()
    s = rng.uniform(0.0, 0.25)
    v = rng.uniform(0.3, 0.75)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """float32 (size, size, 3) in [0, 255]."""
    base = _muted_color(rng)
    if kind == "plain":
        return np.broadcast_to(base, (size, size, 3)).copy()
    if kind == "gradient":
        other = _muted_color(rng)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return base * (1 - t[..., None]) + other * t[..., None]
    if kind == "noise":
        sigma = rng.uniform(6, 18)
        noise = rng.normal(0, sigma, (size, size, 1)).astype(np.float32)
        if rng.random() < 0.5:
            k = int(rng.integers(1, 3)) * 2 + 1
            noise = cv2.GaussianBlur(noise, (k, k), 0)[..., None] * 2.0
        return base + noise
    if kind == "texture":
        other = base + rng.uniform(-35, 35, 3).astype(np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        period = rng.uniform(6, 24)
        angle = rng.uniform(0, np.pi)
        u = np.cos(angle) * xx + np.sin(angle) * yy
        if rng.random() < 0.5:  # stripes
            t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
        else:  # checker
            v = -np.sin(angle) * xx + np.cos(angle) * yy
            t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
            t = cv2.GaussianBlur(t, (3, 3), 0)
        return base * (1 - t[..., None]) + other * t[..., None]
    raise ValueError(f"unknown background kind {kind!r}; use one of {BACKGROUNDS}")


def _star_points(cx: float, cy: float, r: float, rot: float, n: int = 5) -> np.ndarray:
    angles = rot + np.arange(2 * n) * np.pi / n
    radii = np.where(np.arange(2 * n) % 2 == 0, r, r * 0.45)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _regular_points(cx: float, cy: float, r: float, rot: float, n: int) -> np.ndarray:
    angles = rot + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def _cross_points(cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    w = r * 0.36  # half the arm width
    pts = np.array(
        [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w)]
        + [(-r, -w), (-w, -w)],
        dtype=np.float64,
    )
    c, s = np.cos(rot), np.sin(rot)
    return pts @ np.array([[c, s], [-s, c]]) + (cx, cy)


def shape_mask(shape: str, size: int, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Bool (size, size): ``shape`` centred at (cx, cy) (pixels), outer radius ``r``, rotated by
    ``rot`` radians. A ring's hole is 55 % of its radius."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    shift = 4  # sub-pixel precision for OpenCV's integer coordinates
    scale = 1 << shift

    def poly(points: np.ndarray) -> None:
        cv2.fillPoly(canvas, [np.round(points * scale).astype(np.int32)], 1, cv2.LINE_8, shift)

    centre = (int(round(cx * scale)), int(round(cy * scale)))
    if shape == "circle":
        cv2.circle(canvas, centre, int(round(r * scale)), 1, -1, cv2.LINE_8, shift)
    elif shape == "ring":
        cv2.circle(canvas, centre, int(round(r * scale)), 1, -1, cv2.LINE_8, shift)
        cv2.circle(canvas, centre, int(round(0.55 * r * scale)), 0, -1, cv2.LINE_8, shift)
    elif shape == "square":
        poly(_regular_points(cx, cy, r, rot, 4))
    elif shape == "triangle":
        poly(_regular_points(cx, cy, r, rot, 3))
    elif shape == "star":
        poly(_star_points(cx, cy, r, rot))
    elif shape == "cross":
        poly(_cross_points(cx, cy, r, rot))
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    return canvas.astype(bool)


def make_scene(
    seed: int,
    size: int = 160,
    max_objects: int = 5,
    *,
    same_color: bool = False,
    style: str = "classic",
) -> Scene:
    """Generate the scene for ``seed``: an RGB uint8 (size, size, 3) image and its objects.

    ``style``: ``"classic"`` (described here; pinned) or ``"varied"`` (see
    :func:`make_varied_scene`, which takes ``max_objects`` + 1 as its maximum).

    ``same_color``: every object takes the first one's color (training scenes in which only the
    shape tells objects apart; the held-out evaluation scenes never use it).

    1 to ``max_objects`` objects with radii from 8 % to 28 % of the size; an object may partly
    cover earlier ones, but every object keeps at least 45 % of its area visible (placements that
    would hide more are redrawn). About one scene in four repeats a color/shape pair so that
    prompts can have several instances.
    """
    if size < 32:
        raise ValueError(f"scene size {size} is too small; use at least 32 pixels")
    if style == "varied":
        return make_varied_scene(seed, size, max_objects + 1, same_color=same_color)
    if style != "classic":
        raise ValueError(f"unknown scene style {style!r}; use one of {STYLES}")
    rng = np.random.default_rng(seed)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    image = _background(rng, size, background)
    n = int(rng.integers(1, max_objects + 1))

    full_masks: list[np.ndarray] = []
    kinds: list[tuple[str, str]] = []
    paint: list[np.ndarray] = []
    color_names = list(COLORS)
    for _ in range(n):
        if kinds and rng.random() < 0.25:
            color, shape = kinds[int(rng.integers(len(kinds)))]
        elif kinds and same_color:
            color = kinds[0][0]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
        else:
            color = color_names[int(rng.integers(len(color_names)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
        for _try in range(_MAX_TRIES):
            r = size * rng.uniform(0.08, 0.28)
            cx = rng.uniform(r * 0.8, size - r * 0.8)
            cy = rng.uniform(r * 0.8, size - r * 0.8)
            mask = shape_mask(shape, size, cx, cy, r, rng.uniform(0, 2 * np.pi))
            area = mask.sum()
            if area < 20:
                continue
            # the new object must leave every earlier object mostly visible
            ok = True
            for j, prev in enumerate(full_masks):
                visible = prev & ~mask
                for later in full_masks[j + 1 :]:
                    visible &= ~later
                if visible.sum() < _MIN_VISIBLE_FRACTION * prev.sum():
                    ok = False
                    break
            if ok:
                break
        else:
            continue  # no placement found: fewer objects
        full_masks.append(mask)
        kinds.append((color, shape))
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3)
        paint.append(np.clip(np.array(COLORS[color]) + jitter, 0, 255).astype(np.float32))

    for mask, rgb in zip(full_masks, paint, strict=True):
        image[mask] = rgb
    image += rng.normal(0, 3.0, image.shape).astype(np.float32)  # sensor noise
    image_u8 = np.clip(np.round(image), 0, 255).astype(np.uint8)

    objects = []
    for i, ((color, shape), mask) in enumerate(zip(kinds, full_masks, strict=True)):
        visible = mask.copy()
        for later in full_masks[i + 1 :]:
            visible &= ~later
        objects.append(SceneObject(color=color, shape=shape, mask=visible))
    return Scene(seed=seed, image=image_u8, objects=objects, background=background)


# ---------------------------------------------------------------------------------------------
# the varied (training) style


@dataclass(frozen=True)
class _Proportions:
    """Per-object shape proportions (the classic style's fixed values are 0.45, 0.36, 0.55)."""

    star_inner: float
    cross_arm: float
    ring_hole: float


def _varied_shape_coverage(
    shape: str,
    size: int,
    cx: float,
    cy: float,
    r: float,
    rot: float,
    prop: _Proportions,
    supersample: int,
) -> np.ndarray:
    """float32 (size, size) in [0, 1]: the fraction of each pixel the shape covers, rendered at
    ``supersample`` times the size and area-averaged (1: hard edges, 0 or 1)."""
    k = supersample
    big = size * k
    canvas = np.zeros((big, big), dtype=np.uint8)
    shift = 4
    scale = 1 << shift
    bx, by, br = cx * k, cy * k, r * k

    def poly(points: np.ndarray) -> None:
        cv2.fillPoly(canvas, [np.round(points * scale).astype(np.int32)], 1, cv2.LINE_8, shift)

    centre = (int(round(bx * scale)), int(round(by * scale)))
    if shape in ("circle", "ring"):
        cv2.circle(canvas, centre, int(round(br * scale)), 1, -1, cv2.LINE_8, shift)
        if shape == "ring":
            hole = int(round(prop.ring_hole * br * scale))
            cv2.circle(canvas, centre, hole, 0, -1, cv2.LINE_8, shift)
    elif shape == "square":
        poly(_regular_points(bx, by, br, rot, 4))
    elif shape == "triangle":
        poly(_regular_points(bx, by, br, rot, 3))
    elif shape == "star":
        angles = rot + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, br, br * prop.star_inner)
        poly(np.stack([bx + radii * np.cos(angles), by + radii * np.sin(angles)], axis=1))
    elif shape == "cross":
        w = prop.cross_arm / 0.36
        pts = _cross_points(0.0, 0.0, br, 0.0)
        pts = np.where(np.abs(pts) < br * 0.99, pts * w, pts)  # scale the arms' half-width
        c, s = np.cos(rot), np.sin(rot)
        poly(pts @ np.array([[c, s], [-s, c]]) + (bx, by))
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    cover = canvas.astype(np.float32)
    if k > 1:
        cover = cv2.resize(cover, (size, size), interpolation=cv2.INTER_AREA)
    return cover


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """float32 (size, size) in about [-1, 1]: random values on a ``cells`` grid, resized
    bicubically (a cheap value noise)."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _varied_background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """float32 (size, size, 3): the classic kinds plus blobs, line clutter and layered ones.
    Every kind stays muted (low saturation, mid value) so that object colors stand out."""
    if kind in BACKGROUNDS:
        return _background(rng, size, kind)
    base = _muted_color(rng)
    if kind == "blobs":  # two or three octaves of smooth noise between two muted colors
        other = _muted_color(rng)
        t = sum(
            _smooth_noise(rng, size, int(c)) * a
            for c, a in ((rng.integers(3, 6), 1.0), (rng.integers(8, 16), 0.5))
        )
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return base * (1 - t[..., None]) + other * t[..., None]
    if kind == "clutter":  # thin muted lines and arcs, which have edges but no shape
        image = np.broadcast_to(base, (size, size, 3)).copy()
        for _ in range(int(rng.integers(4, 14))):
            tone = np.clip(base + rng.uniform(-40, 40, 3), 0, 255)
            p0 = rng.uniform(0, size, 2).astype(int)
            p1 = rng.uniform(0, size, 2).astype(int)
            width = int(rng.integers(1, 3))
            cv2.line(image, tuple(map(int, p0)), tuple(map(int, p1)), tone.tolist(), width)
        return image
    if kind == "layered":  # a texture over a gradient, plus noise
        under = _background(rng, size, "gradient")
        over = _background(rng, size, "texture") - _muted_color(rng).mean()
        return np.clip(under + 0.4 * over, 0, 255) + rng.normal(0, 4, (size, size, 1))
    raise ValueError(f"unknown background kind {kind!r}; use one of {VARIED_BACKGROUNDS}")


def _varied_kinds(rng: np.random.Generator, n: int, same_color: bool) -> list[tuple[str, str]]:
    """The (color, shape) of ``n`` objects: all one color (``same_color``), or with half of the
    scenes holding a group of 2 to 3 objects of one color and different shapes; otherwise
    random, and a pair repeated a quarter of the time (several instances of one prompt)."""
    color_names = list(COLORS)
    kinds: list[tuple[str, str]] = []
    group_color = color_names[int(rng.integers(len(color_names)))]
    group = n if same_color else (int(rng.integers(2, 4)) if rng.random() < 0.5 else 0)
    for i in range(n):
        if kinds and rng.random() < 0.25:
            kinds.append(kinds[int(rng.integers(len(kinds)))])
            continue
        if i < group:
            used = {s for c, s in kinds if c == group_color}
            free = [s for s in SHAPES if s not in used] or list(SHAPES)
            kinds.append((group_color, free[int(rng.integers(len(free)))]))
        else:
            color = color_names[int(rng.integers(len(color_names)))]
            kinds.append((color, SHAPES[int(rng.integers(len(SHAPES)))]))
    order = rng.permutation(n)
    return [kinds[i] for i in order]


def make_varied_scene(
    seed: int, size: int = 160, max_objects: int = 6, *, same_color: bool = False
) -> Scene:
    """The ``"varied"`` training style (module docstring) for ``seed``.

    Masks mean what the classic style's mean: the visible pixels at least half covered by the
    object. Anti-aliased objects are blended into the background by their coverage.
    """
    rng = np.random.default_rng([seed, 7])
    background = VARIED_BACKGROUNDS[int(rng.integers(len(VARIED_BACKGROUNDS)))]
    image = _varied_background(rng, size, background)
    n = int(rng.integers(1, max_objects + 1))
    kinds_wanted = _varied_kinds(rng, n, same_color)

    covers: list[np.ndarray] = []
    full_masks: list[np.ndarray] = []
    kinds: list[tuple[str, str]] = []
    for color, shape in kinds_wanted:
        for _try in range(_MAX_TRIES):
            r = size * float(np.exp(rng.uniform(np.log(0.05), np.log(0.32))))
            cx = rng.uniform(r * 0.7, size - r * 0.7)
            cy = rng.uniform(r * 0.7, size - r * 0.7)
            prop = _Proportions(
                star_inner=rng.uniform(0.38, 0.55),
                cross_arm=rng.uniform(0.26, 0.42),
                ring_hole=rng.uniform(0.45, 0.65),
            )
            supersample = 4 if rng.random() < 0.5 else 1
            cover = _varied_shape_coverage(
                shape, size, cx, cy, r, rng.uniform(0, 2 * np.pi), prop, supersample
            )
            mask = cover >= 0.5
            if mask.sum() < 16:
                continue
            ok = True
            for j, prev in enumerate(full_masks):
                visible = prev & ~mask
                for later in full_masks[j + 1 :]:
                    visible &= ~later
                if visible.sum() < _MIN_VISIBLE_FRACTION * prev.sum():
                    ok = False
                    break
            if ok:
                break
        else:
            continue
        covers.append(cover)
        full_masks.append(mask)
        kinds.append((color, shape))
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3)
        rgb = np.clip(np.array(COLORS[color]) + jitter, 0, 255).astype(np.float32)
        paint = np.broadcast_to(rgb, image.shape).astype(np.float32)
        if rng.random() < 0.3:  # soft shading across the object
            angle = rng.uniform(0, 2 * np.pi)
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
            t = (np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)) / max(r, 1.0)
            paint = paint * (1 + rng.uniform(0.05, 0.15) * np.clip(t, -1, 1))[..., None]
        alpha = cover[..., None]
        image = image * (1 - alpha) + paint * alpha

    if rng.random() < 0.2:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.0))
    image = image + rng.normal(0, rng.uniform(0, 8), image.shape).astype(np.float32)
    image_u8 = np.clip(np.round(image), 0, 255).astype(np.uint8)

    objects = []
    for i, ((color, shape), mask) in enumerate(zip(kinds, full_masks, strict=True)):
        visible = mask.copy()
        for later in full_masks[i + 1 :]:
            visible &= ~later
        objects.append(SceneObject(color=color, shape=shape, mask=visible))
    return Scene(seed=seed, image=image_u8, objects=objects, background=background)
