"""The one check of a mask that every conversion of this package takes.

A mask is (H, W): bool, or uint8 whose non-zero pixels are the region (0/1 and 0/255 alike).
The brush encoder asks one thing more of a uint8 mask, that it holds only 0 and 255
(`backend.formats.brush`: the RLE keeps the values it is given, and Label Studio draws them as
the alpha channel, so a 0/1 mask would be an invisible brush).
"""

from __future__ import annotations

import numpy as np


def as_mask(mask: np.ndarray) -> np.ndarray:
    """The mask as bool (H, W): the mask itself when it is bool already (not a copy).

    Raises:
        ValueError: naming what is wrong: not a numpy array, not 2-D, not bool or uint8.
    """
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"mask must be a numpy array, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype != np.bool_ and mask.dtype != np.uint8:
        raise ValueError(
            f"mask must be bool or uint8 (0 / non-zero), got dtype {mask.dtype}; pass `mask > 0`"
        )
    return mask if mask.dtype == np.bool_ else mask != 0
