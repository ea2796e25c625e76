"""Benchmark of backend.formats on a CLIPSeg-shaped 4000 x 3000 mask.

The mask: a coarse 22 x 22 normal random field (CLIPSeg's 22 x 22 token grid), upsampled
bilinearly with cv2.resize to 4000 x 3000 and thresholded at 0: tens of thousands of runs in
row-major order, as a real prediction's blobs give. Prints one table: brush RLE encode and
decode, ours vs label_studio_sdk (median of --repeats runs, interleaved) and the speed-up;
polygon extraction and COCO RLE encoding; the number of runs.

    python benchmarks/bench_formats.py [--repeats 5] [--width 4000 --height 3000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.formats import (  # noqa: E402
    decode_brush_rle,
    encode_brush_rle,
    mask_to_contours,
    mask_to_rle,
)


def clipseg_like_mask(width: int, height: int, grid: int = 22, seed: int = 0) -> np.ndarray:
    field = np.random.default_rng(seed).normal(size=(grid, grid)).astype(np.float32)
    prob = cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)
    return ((prob > 0) * 255).astype(np.uint8)


def median_time(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run round-robin after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    mask = clipseg_like_mask(args.width, args.height)
    flat = mask.ravel()
    runs = int(np.count_nonzero(flat[1:] != flat[:-1])) + 1
    rle = encode_brush_rle(mask)
    assert rle == mask2rle(mask), "encoder parity broken"
    assert np.array_equal(decode_brush_rle(rle, args.height, args.width), mask)

    enc = median_time(
        {"ours": lambda: encode_brush_rle(mask), "sdk": lambda: mask2rle(mask)}, args.repeats
    )
    dec = median_time(
        {
            "ours": lambda: decode_brush_rle(rle, args.height, args.width),
            "sdk": lambda: decode_rle(rle).reshape(args.height, args.width, 4)[:, :, 3],
        },
        args.repeats,
    )
    other = median_time(
        {
            "polygons": lambda: mask_to_contours(mask),
            "coco_rle": lambda: mask_to_rle(mask),
        },
        args.repeats,
    )
    n_contours = len(mask_to_contours(mask))

    rows = [
        ("brush RLE encode", enc["ours"], enc["sdk"], f"{enc['sdk'] / enc['ours']:.1f}x"),
        ("brush RLE decode", dec["ours"], dec["sdk"], f"{dec['sdk'] / dec['ours']:.1f}x"),
        (f"polygons ({n_contours} contours, holes)", other["polygons"], None, ""),
        ("COCO RLE encode", other["coco_rle"], None, ""),
    ]
    print(
        f"mask {args.width} x {args.height}, {runs} runs (row-major), "
        f"{int((mask > 0).sum())} foreground px, brush RLE {len(rle)} bytes; "
        f"median of {args.repeats} runs"
    )
    print(f"| {'operation':<34} | {'ours (ms)':>10} | {'sdk (ms)':>10} | {'speed-up':>8} |")
    print(f"|{'-' * 36}|{'-' * 11}:|{'-' * 11}:|{'-' * 9}:|")
    for name, ours, sdk, ratio in rows:
        sdk_cell = f"{sdk * 1e3:.1f}" if sdk is not None else "-"
        print(f"| {name:<34} | {ours * 1e3:>10.1f} | {sdk_cell:>10} | {ratio:>8} |")


if __name__ == "__main__":
    main()
