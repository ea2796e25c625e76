"""Overlay pictures for a quick look at predictions: the image, each region's mask in its label's
color with alpha, the mask outlines, and a legend (label names and colors) below the image."""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

_SWATCH = 12
_ROW = 16
_PAD = 4


def label_colors(labels: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A distinct saturated RGB color per label, stable for a label order (golden-ratio hues)."""
    out: dict[str, tuple[int, int, int]] = {}
    for i, label in enumerate(labels):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
        out[label] = (int(r * 255), int(g * 255), int(b * 255))
    return out


def draw_overlay(
    image: np.ndarray,
    regions: Sequence[tuple[str, np.ndarray]],
    colors: dict[str, tuple[int, int, int]],
    alpha: float = 0.45,
) -> np.ndarray:
    """The overlay picture, uint8 (H + legend, W', 3) RGB.

    ``image`` is (H, W, 3) uint8 RGB; ``regions`` are (label, bool (H, W) mask) pairs; every label
    of ``colors`` gets a legend row (so an absent label is visibly absent), the legend is at least
    as wide as its longest name.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    out = image.astype(np.float32)
    for label, mask in regions:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask of {label!r} is {mask.shape}, image is {image.shape[:2]}")
        color = np.array(colors[label], dtype=np.float32)
        out[mask] = (1.0 - alpha) * out[mask] + alpha * color
    canvas = np.clip(np.round(out), 0, 255).astype(np.uint8)
    for label, mask in regions:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, colors[label], 1)
    return _with_legend(canvas, colors)


def _with_legend(canvas: np.ndarray, colors: dict[str, tuple[int, int, int]]) -> np.ndarray:
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((int(probe.textlength(name, font=font)) for name in colors), default=0)
    height, width = canvas.shape[:2]
    legend_h = _PAD * 2 + _ROW * len(colors)
    total_w = max(width, _PAD * 3 + _SWATCH + text_w)
    picture = Image.new("RGB", (total_w, height + legend_h), (255, 255, 255))
    picture.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(picture)
    y = height + _PAD
    for name, color in colors.items():
        draw.rectangle(
            [_PAD, y + 2, _PAD + _SWATCH, y + 2 + _SWATCH], fill=color, outline=(0, 0, 0)
        )
        draw.text((_PAD * 2 + _SWATCH, y + 2), name, fill=(0, 0, 0), font=font)
        y += _ROW
    return np.asarray(picture)


def overlay_png(
    image: np.ndarray,
    regions: Sequence[tuple[str, np.ndarray]],
    colors: dict[str, tuple[int, int, int]],
) -> bytes:
    """The overlay picture (see :func:`draw_overlay`) as PNG bytes: what a worker that does not
    share the output folder hands back (`backend.batch.ray_engine`)."""
    buffer = io.BytesIO()
    Image.fromarray(draw_overlay(image, regions, colors)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    regions: Sequence[tuple[str, np.ndarray]],
    colors: dict[str, tuple[int, int, int]],
) -> Path:
    """Draw (see :func:`draw_overlay`) and write a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_overlay(image, regions, colors)).save(path, format="PNG")
    return path
