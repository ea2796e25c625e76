"""A scene style the demo model never trained on, for benchmarks/bench_demo_model.py.

clipseg.demo.scenes renders square scenes with OpenCV at the model's 128 px, flat colors on muted
backgrounds. This renderer differs in every way that a newcomer's own test images would:

* 640 x 480 (not square: the processor squeezes it to 128 x 128), drawn with PIL's ImageDraw at
  twice the size and downsampled with a Lanczos filter (its own anti-aliasing);
* each object has a darker outline (part of the object) and a soft drop shadow (not part of it);
* its own palette for the demo color names (other RGB values than COLORS), other proportions
  (a five-pointed star with a 0.5 inner radius, a thinner cross, a rounded square);
* paper-like backgrounds: a vertical light falloff, a vignette, large blurred bokeh discs in
  muted tones and fine grain.

Objects do not overlap (a margin keeps them apart), so every object is one ground-truth
instance. Every scene holds at least two objects of one color with different shapes, the case
where a model that only knows colors brings a false region for each.

Everything is a pure function of the seed. Run ``python benchmarks/unseen_scenes.py OUT_DIR`` to
write a few as PNG files to look at; with ``--export``, also ``OUT_DIR/export.json``, a Label
Studio export of them whose annotations are the objects' exact brush masks, the truth for
``clipseg-label evaluate OUT_DIR/export.json --model demo``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 640, 480
SUPERSAMPLE = 2
PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (238, 236, 228),
    "red": (200, 48, 42),
    "blue": (42, 92, 196),
}
"""The colors of the benchmark labels, rendered differently from clipseg.demo.scenes.COLORS."""
SHAPES: tuple[str, ...] = ("circle", "square", "star", "cross")
LABELS: tuple[str, ...] = tuple(f"{c} {s}" for c in PALETTE for s in SHAPES)
"""The 12 "<color> <shape>" labels of the benchmark's one control."""
SEED_START = 7 * 10**9
"""Benchmark scene seeds start here (disjoint from training's and the held-out ones)."""


@dataclass(frozen=True)
class UnseenObject:
    color: str
    shape: str
    mask: np.ndarray = field(repr=False)  # bool (HEIGHT, WIDTH)

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class UnseenScene:
    seed: int
    image: np.ndarray = field(repr=False)  # uint8 (HEIGHT, WIDTH, 3) RGB
    objects: list[UnseenObject]


def _background(rng: np.random.Generator) -> Image.Image:
    """Paper-like: a muted tone with vertical falloff, a vignette, bokeh discs and grain."""
    h, w = HEIGHT * SUPERSAMPLE, WIDTH * SUPERSAMPLE
    tone = rng.uniform(95, 175) + rng.uniform(-18, 18, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    falloff = 1.0 + rng.uniform(-0.18, 0.18) * (yy / h - 0.5)
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) / 0.5
    vignette = 1.0 - rng.uniform(0.1, 0.3) * r2
    base = tone[None, None, :] * (falloff * vignette)[..., None]
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    bokeh = Image.new("RGB", (w, h), (0, 0, 0))
    alpha = Image.new("L", (w, h), 0)
    draw_b, draw_a = ImageDraw.Draw(bokeh), ImageDraw.Draw(alpha)
    for _ in range(int(rng.integers(5, 12))):
        r = rng.uniform(0.05, 0.2) * w
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        shade = tuple(int(v) for v in np.clip(tone + rng.uniform(-30, 30, 3), 0, 255))
        draw_b.ellipse((cx - r, cy - r, cx + r, cy + r), fill=shade)
        draw_a.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.integers(60, 140)))
    blur = ImageFilter.GaussianBlur(radius=0.04 * w)
    image = Image.composite(bokeh.filter(blur), image, alpha.filter(blur))
    grain = rng.normal(0, rng.uniform(3, 7), (h, w, 1))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8))


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "star":
        k = np.arange(10)
        radii = np.where(k % 2 == 0, r, 0.5 * r)
        angles = rot + k * np.pi / 5
    elif shape == "cross":
        a = 0.27 * r
        pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a)]
        pts += [(-r, a), (-r, -a), (-a, -a)]
        c, s = np.cos(rot), np.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    else:
        raise ValueError(f"no polygon for {shape!r}")
    return list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles), strict=True))


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx, cy, r, rot, fill, outline, width) -> None:
    """One shape on a SUPERSAMPLE-times canvas (coordinates already scaled)."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
    elif shape == "square":
        # PIL's rounded rectangle is axis-aligned: the squares stay upright (half side 0.78 r)
        h = 0.78 * r
        draw.rounded_rectangle(
            (cx - h, cy - h, cx + h, cy + h), radius=0.18 * h, fill=fill, outline=outline,
            width=width,
        )  # fmt: skip
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rot), fill=fill, outline=outline, width=width)


def make_unseen_scene(seed: int) -> UnseenScene:
    """The benchmark scene for ``seed``: 2 to 5 non-overlapping objects of the benchmark labels,
    at least two of one color with different shapes."""
    rng = np.random.default_rng([seed, 11])
    k = SUPERSAMPLE
    image = _background(rng)
    n = int(rng.integers(2, 6))
    colors = list(PALETTE)
    group_color = colors[int(rng.integers(len(colors)))]
    group_shapes = rng.choice(len(SHAPES), size=2, replace=False)
    wanted = [(group_color, SHAPES[int(i)]) for i in group_shapes]
    for _ in range(n - 2):
        wanted.append((colors[int(rng.integers(len(colors)))], SHAPES[int(rng.integers(4))]))
    placed: list[tuple[float, float, float]] = []  # (cx, cy, r) in output pixels
    objects: list[UnseenObject] = []
    shadow = Image.new("L", image.size, 0)
    draw_shadow = ImageDraw.Draw(shadow)
    layers = []
    for color, shape in wanted:
        for _try in range(100):
            r = float(np.exp(rng.uniform(np.log(28), np.log(90))))
            cx, cy = rng.uniform(r + 4, WIDTH - r - 4), rng.uniform(r + 4, HEIGHT - r - 4)
            if all(np.hypot(cx - x, cy - y) > r + q + 10 for x, y, q in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        rot = rng.uniform(0, 2 * np.pi)
        layers.append((color, shape, cx, cy, r, rot))
        dx, dy = 0.08 * r * k, 0.1 * r * k
        _draw(draw_shadow, shape, cx * k + dx, cy * k + dy, r * k, rot, 110, None, 1)
    shadow = shadow.filter(ImageFilter.GaussianBlur(radius=3 * k))
    image = Image.composite(Image.new("RGB", image.size, (20, 20, 20)), image, shadow)
    draw = ImageDraw.Draw(image)
    for color, shape, cx, cy, r, rot in layers:
        rgb = np.array(PALETTE[color]) + rng.integers(-10, 11, 3)
        fill = tuple(int(v) for v in np.clip(rgb, 0, 255))
        outline = tuple(int(v) for v in np.clip(rgb * 0.7, 0, 255))
        width = int(rng.integers(2, 5)) * k
        _draw(draw, shape, cx * k, cy * k, r * k, rot, fill, outline, width)
    out = image.resize((WIDTH, HEIGHT), Image.LANCZOS)
    for color, shape, cx, cy, r, rot in layers:
        m = Image.new("L", (WIDTH * k, HEIGHT * k), 0)
        _draw(ImageDraw.Draw(m), shape, cx * k, cy * k, r * k, rot, 255, 255, 1)
        mask = np.asarray(m.resize((WIDTH, HEIGHT), Image.BILINEAR)) >= 128
        objects.append(UnseenObject(color, shape, mask))
    return UnseenScene(seed, np.asarray(out, dtype=np.uint8).copy(), objects)


def write_export(out_dir: Path, seeds: range | list[int]) -> Path:
    """Write the scenes of ``seeds`` as PNGs and ``out_dir/export.json``: one Label Studio task
    per scene (id = its position + 1, data.image = the PNG's absolute path) with one accepted
    annotation, a brush of one BrushLabels control "label" per object."""
    import json

    from backend.formats.labelstudio import brush_result

    out_dir.mkdir(parents=True, exist_ok=True)
    size = {"original_width": WIDTH, "original_height": HEIGHT}
    tasks = []
    for n, seed in enumerate(seeds, start=1):
        scene = make_unseen_scene(seed)
        path = (out_dir / f"unseen_{seed}.png").resolve()
        Image.fromarray(scene.image).save(path)
        results = [
            brush_result(o.mask, o.label, from_name="label", to_name="image", **size)
            for o in scene.objects
        ]
        annotation = {"id": n, "result": results, "was_cancelled": False}
        tasks.append({"id": n, "data": {"image": str(path)}, "annotations": [annotation]})
    export = out_dir / "export.json"
    export.write_text(json.dumps(tasks), encoding="utf-8")
    return export


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a few unseen-style benchmark scenes as PNGs.")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--scenes", type=int, default=6)
    p.add_argument("--export", action="store_true", help="also write OUT_DIR/export.json")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.export:
        seeds = range(SEED_START, SEED_START + args.scenes)
        print(write_export(args.out_dir, seeds))
        return
    for seed in range(SEED_START, SEED_START + args.scenes):
        scene = make_unseen_scene(seed)
        Image.fromarray(scene.image).save(args.out_dir / f"unseen_{seed}.png")
        print(seed, [o.label for o in scene.objects])


if __name__ == "__main__":
    main()
