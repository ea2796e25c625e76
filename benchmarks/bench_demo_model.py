"""The demo model as a newcomer meets it: all labels in one control, on scenes of a style it never
trained on (benchmarks/unseen_scenes.py), scored by panoptic quality; and its CPU cost.

For each scene the model is prompted with every label of :data:`unseen_scenes.LABELS` (12
``"<color> <shape>"``: the labels of one BrushLabels control), and each label's map becomes
regions as the backend makes them (``backend.formats.probability_to_regions``: pixels above the
threshold, one region per 8-connected blob, blobs under the minimum area dropped; the backend's
defaults, ``backend.settings.Settings``). ``backend.batch.evaluate.Evaluation`` (the figures of
``clipseg-label evaluate``) matches them to the scene's objects one to one at IoU > 0.5 per
label. Reported: PQ, SQ, RQ pooled over the scenes, false regions (unmatched predicted regions)
and missed objects per task, and semantic IoU (mean over labels), at the backend's threshold
and over a sweep. ``clipseg-label evaluate`` gives the same figures at the backend's threshold
from the CLI (docs/cli.md):

    python benchmarks/unseen_scenes.py scenes/ --scenes 24 --export
    clipseg-label evaluate scenes/export.json --model demo

``--timing`` also measures the CPU time of one 640 x 480 image (``set_image`` + ``predict`` of
the 12 labels; median of ``--repeats``, one torch thread) and the checkpoint's size on disk.

    python benchmarks/bench_demo_model.py --model demo --scenes 24 --threads 1 --timing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from unseen_scenes import LABELS, SEED_START, make_unseen_scene  # noqa: E402

from backend.batch.evaluate import Evaluation  # noqa: E402
from backend.formats import probability_to_regions  # noqa: E402
from backend.settings import Settings  # noqa: E402
from clipseg import Predictor  # noqa: E402
from clipseg.weights import resolve_checkpoint  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def score_scenes(
    predictor: Predictor, n_scenes: int, thresholds: tuple[float, ...], min_area_setting: float
) -> dict[float, Evaluation]:
    """The evaluation of each threshold over ``n_scenes`` unseen-style scenes."""
    counts = {t: Evaluation() for t in thresholds}
    for seed in range(SEED_START, SEED_START + n_scenes):
        scene = make_unseen_scene(seed)
        h, w = scene.image.shape[:2]
        min_area = (
            int(min_area_setting) if min_area_setting >= 1 else int(round(min_area_setting * h * w))
        )
        predictor.set_image(scene.image)
        probs = predictor.predict(list(LABELS))  # (12, H, W)
        truth = [(o.label, o.mask) for o in scene.objects]
        for t in thresholds:
            predicted = [
                (label, region.mask)
                for label, p in zip(LABELS, probs, strict=True)
                for region in probability_to_regions(
                    np.clip(p, 0.0, 1.0), label, threshold=t, mode="instance", min_area=min_area
                )
            ]
            counts[t].add(predicted, truth, task_id=seed)
    return counts


def time_one_image(predictor: Predictor, repeats: int) -> float:
    """Median seconds of set_image + predict(12 labels) on a fresh 640 x 480 image."""
    times = []
    for i in range(repeats + 1):
        image = make_unseen_scene(SEED_START + 1000 + i).image  # a new image: no cache hit
        started = time.perf_counter()
        predictor.set_image(image)
        predictor.predict(list(LABELS))
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])  # the first call warms up


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo", help="checkpoint: 'demo' or a directory")
    p.add_argument("--scenes", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timing", action="store_true", help="also time one 640x480 image")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings()
    predictor = Predictor.from_pretrained(args.model, device="cpu", dtype=torch.float32)
    thresholds = tuple(sorted(set(THRESHOLDS) | {settings.threshold}))
    counts = score_scenes(predictor, args.scenes, thresholds, settings.min_region_area)
    result: dict = {"model": args.model, "scenes": args.scenes, "labels": len(LABELS)}
    print(f"{args.scenes} unseen-style scenes, {len(LABELS)} labels in one control: {args.model}")
    print(
        "| threshold | PQ | SQ | RQ | false regions / task | missed / task | matched | "
        "semantic IoU |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = {}
    for t, evaluation in counts.items():
        mark = " (backend default)" if t == settings.threshold else ""
        c = evaluation.summary()["overall"]
        print(
            f"| {t}{mark} | {c['pq']:.3f} | {c['sq']:.3f} | {c['rq']:.3f} | "
            f"{c['false_per_task']:.2f} | {c['missed_per_task']:.2f} | {c['tp']} | "
            f"{c['semantic_iou']:.3f} |"
        )
        rows[str(t)] = c
    result["by_threshold"] = rows
    if args.timing:
        seconds = time_one_image(predictor, args.repeats)
        directory = Path(resolve_checkpoint(args.model))
        size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
        print(
            f"one 640x480 image, set_image + predict({len(LABELS)} labels), {args.threads} "
            f"thread(s): median {1000 * seconds:.1f} ms of {args.repeats}; checkpoint "
            f"{size / 2**20:.2f} MiB"
        )
        result["ms_per_image"] = 1000 * seconds
        result["checkpoint_mib"] = size / 2**20
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
