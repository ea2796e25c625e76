"""Large demo-world scenes with small objects: the test bed of tiled prediction.

A scene is a ``width`` x ``height`` RGB image (for example 1920 x 1440) on a muted background
(plain, a gradient or noise, as the demo model's own scenes) with a few colored demo shapes of
small radius (14 to 24 px by default), none overlapping. Seen whole at the demo model's 128 px,
such an object is 2 or 3 px across and disappears; a tile of a few hundred pixels shows it at the
size the model was trained on.

Objects are painted with the demo vocabulary's colors and shapes (`clipseg.demo.scenes`), and the
result is a `Scene`, so the same evaluation code reads both kinds of scene.
"""

from __future__ import annotations

import colorsys

import numpy as np

from clipseg.demo.scenes import COLOR_JITTER, COLORS, SHAPES, Scene, SceneObject, shape_mask

__all__ = ["make_large_scene"]

_MAX_TRIES = 200


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation mid-value RGB color (float32 (3,)), as the demo scenes' backgrounds."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.75))
    return np.array(rgb, np.float32) * 255.0


def _background(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, str]:
    """float32 (height, width, 3) in [0, 255] and its kind."""
    kind = ("plain", "gradient", "noise")[int(rng.integers(3))]
    base = _muted(rng)
    if kind == "gradient":
        other = _muted(rng)
        t = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
        image = base * (1 - t) + other * t
        return np.broadcast_to(image, (height, width, 3)).copy(), kind
    image = np.broadcast_to(base, (height, width, 3)).copy()
    if kind == "noise":
        image += rng.normal(0, rng.uniform(6, 14), (height, width, 1)).astype(np.float32)
    return image, kind


def make_large_scene(
    seed: int,
    width: int = 1920,
    height: int = 1440,
    num_objects: int = 10,
    radius: tuple[float, float] = (14.0, 24.0),
) -> Scene:
    """The scene for ``seed``: ``num_objects`` demo shapes (fewer if they do not fit) of outer
    radius drawn from ``radius`` (px), each a random color and shape, at least one radius apart
    from each other and from the image's border."""
    if width < 64 or height < 64:
        raise ValueError(f"a large scene needs at least 64 x 64 px, got {width} x {height}")
    rng = np.random.default_rng(seed)
    image, background = _background(rng, width, height)
    taken = np.zeros((height, width), bool)
    objects = []
    colors = list(COLORS)
    for _ in range(num_objects):
        color = colors[int(rng.integers(len(colors)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        for _try in range(_MAX_TRIES):
            r = rng.uniform(*radius)
            side = int(np.ceil(2 * r)) + 5  # a local canvas around the object
            x0 = int(rng.integers(int(r), width - side - int(r)))
            y0 = int(rng.integers(int(r), height - side - int(r)))
            m = int(r)  # keep a radius of free space around every object
            if taken[max(0, y0 - m) : y0 + side + m, max(0, x0 - m) : x0 + side + m].any():
                continue
            local = shape_mask(shape, side, side / 2, side / 2, r, rng.uniform(0, 2 * np.pi))
            mask = np.zeros((height, width), bool)
            mask[y0 : y0 + side, x0 : x0 + side] = local
            break
        else:
            continue  # no free place left: fewer objects
        taken |= mask
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3)
        image[mask] = np.clip(np.array(COLORS[color]) + jitter, 0, 255)
        objects.append(SceneObject(color=color, shape=shape, mask=mask))
    image += rng.normal(0, 3.0, image.shape).astype(np.float32)  # sensor noise, as the demo scenes
    image_u8 = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return Scene(seed=seed, image=image_u8, objects=objects, background=background)
