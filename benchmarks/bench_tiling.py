"""Tiled against untiled prediction on large demo scenes with small objects, and on ordinary
demo scenes (large objects), through the backend's own path (`CLIPSegBackend.predict_image`:
maps -> regions -> results), plus the post-processing peak memory at 4000 x 3000 with 5 labels.

    python benchmarks/bench_tiling.py [--scenes 4] [--tiles 0,256,384] [--memory] [--timing]

Per setting: recall of the objects (a region of the right label at IoU > 0.5, one-to-one),
false regions per image, panoptic quality (PQ = sum of matched IoUs / (TP + FP/2 + FN/2)),
seconds per image and the number of tiles. The figures are `backend.batch.evaluate`'s, those of
`clipseg-label evaluate`.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

from backend.batch.evaluate import Evaluation, TaskRegions, draw
from backend.label_config import parse_label_config
from backend.model import CLIPSegBackend
from backend.settings import Settings
from clipseg.demo.large_scenes import make_large_scene
from clipseg.demo.scenes import make_scene
from clipseg.tiling import tile_boxes


def _config(labels: list[str], tile: int) -> str:
    items = "".join(f'<Label value="{label}"/>' for label in labels)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<BrushLabels name="tag" toName="image" model_tile_size="{tile}">{items}</BrushLabels>'
        "</View>"
    )


def run(backend, scenes, tile: int) -> dict:
    """Figures of one setting, through `backend.batch.evaluate` (what `clipseg-label evaluate`
    computes): each result drawn by its control tag, matched one to one per label."""
    evaluation = Evaluation()
    seconds, tiles = [], []
    for scene in scenes:
        labels = sorted({o.name for o in scene.objects})
        controls = parse_label_config(_config(labels, tile), backend.settings.threshold)
        height, width = scene.image.shape[:2]
        start = time.perf_counter()
        pred = backend.predict_image(scene.image, controls)
        seconds.append(time.perf_counter() - start)
        tiles.append(len(tile_boxes(width, height, tile, 0.25)) if tile else 0)
        regions = TaskRegions(None, None, tuple(pred.results))
        predicted, problems = draw(regions, height, width, file="bench_tiling")
        assert not problems, problems
        evaluation.add(predicted, [(o.name, o.mask) for o in scene.objects])
    c = evaluation.total
    return {
        "recall": c.tp / max(c.tp + c.fn, 1),
        "false/img": c.fp / len(scenes),
        "PQ": c.pq,
        "s/img": statistics.median(seconds),
        "tiles": statistics.median(tiles),
    }


def peak_memory(backend) -> None:
    """Post-processing peak of a 4000 x 3000 image with 5 labels and 1000 px tiles."""
    scene = make_large_scene(1, width=4000, height=3000, num_objects=20, radius=(30, 60))
    labels = sorted({o.name for o in scene.objects})[:5]
    controls = parse_label_config(_config(labels, 1000), backend.settings.threshold)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    backend.predict_image(scene.image, controls)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"4000x3000, 5 labels, 1000 px tiles: peak RSS grew {(after - before) / 1024:.0f} MB "
        f"(to {after / 1024:.0f} MB)"
    )


def timing(backend, tiles: list[int], repeats: int = 5) -> None:
    """Median seconds of one 1920 x 1440 image with 5 labels per tile size, the runs of all
    sizes interleaved (so that a burst of load on a shared machine spreads over all of them)."""
    scene = make_large_scene(100)
    labels = sorted({o.name for o in scene.objects})[:5]
    controls = {
        t: parse_label_config(_config(labels, t), backend.settings.threshold) for t in tiles
    }
    seconds: dict[int, list[float]] = {t: [] for t in tiles}
    for _ in range(repeats):
        for t in tiles:
            start = time.perf_counter()
            backend.predict_image(scene.image, controls[t])
            seconds[t].append(time.perf_counter() - start)
    print("| tile px | tiles | s / image (median) | s / tile |")
    print("| --- | --- | --- | --- |")
    for t in tiles:
        n = len(tile_boxes(1920, 1440, t, 0.25)) if t else 0
        median = statistics.median(seconds[t])
        per_tile = f"{median / n:.3f}" if n else "-"
        print(f"| {t or 'off'} | {n} | {median:.2f} | {per_tile} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--tiles", default="0,256,384")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument(
        "--timing", action="store_true", help="only time one image per tile size (5 runs each)"
    )
    args = parser.parse_args()
    backend = CLIPSegBackend.load(Settings(model="demo", device="cpu", min_region_area=20))
    if args.timing:
        timing(backend, [int(t) for t in args.tiles.split(",")])
        return
    if args.memory:
        peak_memory(backend)  # first, so that the peak is this image's
    large = [make_large_scene(seed) for seed in range(100, 100 + args.scenes)]
    ordinary = [make_scene(10**9 + seed, size=480) for seed in range(args.scenes * 3)]
    print("| scenes | tile px | tiles | recall | false / image | PQ | s / image |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, scenes in (("1920x1440, 10 small objects", large), ("480x480 ordinary", ordinary)):
        for tile in (int(t) for t in args.tiles.split(",")):
            r = run(backend, scenes, tile)
            print(
                f"| {name} | {tile or 'off'} | {r['tiles']:.0f} | {r['recall']:.3f} | "
                f"{r['false/img']:.1f} | {r['PQ']:.3f} | {r['s/img']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
