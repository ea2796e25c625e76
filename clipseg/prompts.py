"""Prompts for CLIPSeg: the text templates of the original code and the paper's best visual
prompt (crop to the object with context, background darkened to 10 % and blurred)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from clipseg.image_processing import load_image, tensor_to_numpy

__all__ = ["PROMPT_TEMPLATES", "apply_templates", "prepare_visual_prompt"]

# The templates of the original code (timojl/clipseg); training drew one at random.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photograph of a {}.",
    "an image of a {}.",
    "{}.",
    "a cropped photo of a {}.",
    "a good photo of a {}.",
    "a photo of one {}.",
    "a bad photo of a {}.",
    "a photo of the {}.",
)


def apply_templates(label: str, templates: Sequence[str] = PROMPT_TEMPLATES) -> list[str]:
    """``label`` put in every template, e.g. "cat" -> ["a photo of a cat.", ...]."""
    return [t.format(label) for t in templates]


def _region_from_mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool from a bool / 0-1 / 0-255 mask (numpy, torch or PIL)."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    elif isinstance(mask, torch.Tensor):
        mask = tensor_to_numpy(mask)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    if mask.shape != shape:
        raise ValueError(
            f"mask size {mask.shape[1]}x{mask.shape[0]} (WxH) does not match the image's "
            f"{shape[1]}x{shape[0]}; give the mask at the image's size (after EXIF orientation)"
        )
    if mask.dtype == np.bool_:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise ValueError(f"mask has unsupported dtype {mask.dtype}; use bool, 0/1 or 0-255")
    if mask.size and (not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 255):
        raise ValueError("mask values must lie in [0, 1] or [0, 255]")
    # 0-255 masks (brush exports) threshold at the middle; 0/1 and soft [0, 1] masks at 0.5
    return mask > 127 if mask.max() > 1 else mask > 0.5


def _region_from_box(box: Any, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool for a box (x0, y0, x1, y1) in pixels, x1/y1 exclusive, clipped to the image."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError) as e:
        raise ValueError(f"box must be four numbers (x0, y0, x1, y1), got {box!r}") from e
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box has non-finite coordinates: {box!r}")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box!r} is degenerate: it needs x1 > x0 and y1 > y0")
    h, w = shape
    c0, r0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    c1, r1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))
    if c1 <= c0 or r1 <= r0:
        raise ValueError(f"box {box!r} lies outside the {w}x{h} image")
    region = np.zeros(shape, dtype=bool)
    region[r0:r1, c0:c1] = True
    return region


def prepare_visual_prompt(
    image: Any,
    mask: Any = None,
    box: Sequence[float] | None = None,
    size: int = 352,
    context: float = 0.1,
    background_intensity: float = 0.1,
    blur_kernel: int = 15,
    blur_sigma: float = 3.0,
) -> Image.Image:
    """The paper's best visual prompt from an image and the object's mask or box.

    The background becomes ``background_intensity`` times a Gaussian-blurred copy of the image
    (15x15 kernel, sigma 3, OpenCV), the region keeps its pixels; then the image is cropped to the
    region's bounding box grown by ``context`` of its width/height on each side (clipped to the
    image), padded with black to a centred square and resized to ``size`` (PIL bilinear). With
    neither mask nor box the whole image is the region (no darkening; padded and resized).

    Args:
        image: anything `load_image` reads (EXIF orientation applied).
        mask: (H, W) at the image's size; bool, 0/1 or 0-255 (thresholded at the middle).
        box: (x0, y0, x1, y1) in pixels, x1 and y1 exclusive. Give mask or box, not both.
        size: side of the square output.

    Returns:
        RGB PIL image of ``size`` x ``size``.
    """
    if mask is not None and box is not None:
        raise ValueError("give either mask or box, not both")
    if int(size) != size or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if not 0.0 <= background_intensity <= 1.0:
        raise ValueError(f"background_intensity must be in [0, 1], got {background_intensity}")
    arr = np.asarray(load_image(image))  # (H, W, 3) uint8
    h, w = arr.shape[:2]

    if mask is None and box is None:
        out, (r0, r1, c0, c1) = arr, (0, h, 0, w)
    else:
        if mask is not None:
            region = _region_from_mask(mask, (h, w))
            if not region.any():
                raise ValueError("mask is empty: it selects no pixel")
        else:
            region = _region_from_box(box, (h, w))
        img = arr.astype(np.float32)
        background = cv2.GaussianBlur(img, (blur_kernel, blur_kernel), blur_sigma)
        background *= background_intensity
        out = np.where(region[..., None], img, background)
        out = np.clip(np.round(out), 0, 255).astype(np.uint8)
        rows, cols = np.nonzero(region)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        dr, dc = round(context * (r1 - r0)), round(context * (c1 - c0))
        r0, r1 = max(0, r0 - dr), min(h, r1 + dr)
        c0, c1 = max(0, c0 - dc), min(w, c1 + dc)

    crop = out[r0:r1, c0:c1]
    ch, cw = crop.shape[:2]
    side = max(ch, cw)
    square = np.zeros((side, side, 3), dtype=np.uint8)
    top, left = (side - ch) // 2, (side - cw) // 2
    square[top : top + ch, left : left + cw] = crop
    result = Image.fromarray(square)
    if side != size:
        result = result.resize((int(size), int(size)), resample=Image.Resampling.BILINEAR)
    return result
