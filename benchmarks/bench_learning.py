"""The learning loop measured in a shifted demo world: what the annotator must fix, round by round.

World: scenes of benchmarks/unseen_scenes.py (a renderer the demo model never trained on), all
12 "<color> <shape>" labels in one BrushLabels control, of which three are renamed to words the
demo model does not know (RENAMED: "zorb" is a blue star, ...). A pool of tasks to annotate and a
fixed set of held-out tasks.

Rounds: each round, ROUND_SIZE tasks of the pool are "annotated" (their true masks become an
annotation), chosen by the project's ranking (`clipseg-label rank`'s default coverage order of
the served predictions: `backend.batch.rank.coverage_order` of their labels and `uncertainty`) or
at random, side by side; random picking runs with ``--random-seeds`` seeds, since one random draw
can be lucky or not (the table gives their mean and range). After each round the loop trains
(`backend.learning.trainer.run_training`, into a store of its own per strategy), and the held-out
tasks are predicted with the serving state and scored like `clipseg-label evaluate`: PQ, false
and missed regions per task, and the semantic IoU of the renamed labels.

    python benchmarks/bench_learning.py --rounds 3 --random-seeds 5 \
        --json benchmarks/results/learning.json --plot docs/learning_loop.png

With ``--speed N``, instead: one training on N annotated 640 x 480 tasks with the full-size model
(CIDAS' rd64-refined shape, random weights: benchmarks/common.py build_checkpoint), its wall
time and the process's peak PSS while it runs (sampled every 0.2 s from /proc/self/smaps_rollup).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from unseen_scenes import LABELS, SEED_START, make_unseen_scene  # noqa: E402

from backend.batch.predict import label_config_for  # noqa: E402
from backend.batch.rank import coverage_order  # noqa: E402
from backend.label_config import parse_label_config  # noqa: E402
from backend.learning.trainer import Example, run_training  # noqa: E402
from backend.model import CLIPSegBackend  # noqa: E402
from backend.settings import Settings  # noqa: E402
from clipseg.evaluate import (  # noqa: E402
    OverlapCounts,
    PanopticCounts,
    panoptic_quality,
    semantic_overlap,
)

RENAMED = {"blue star": "zorb", "red cross": "quib", "white square": "flim"}
"""Labels whose names the demo model does not know, each meaning one color-shape."""
POOL_START = SEED_START + 20_000
ROUND_SIZE = 10


def project_labels() -> list[str]:
    return [RENAMED.get(label, label) for label in LABELS]


def scene_truth(seed: int) -> tuple[np.ndarray, tuple[tuple[str, np.ndarray], ...]]:
    scene = make_unseen_scene(seed)
    return scene.image, tuple((RENAMED.get(o.label, o.label), o.mask) for o in scene.objects)


def evaluate(backend: CLIPSegBackend, controls, project: str, held_out) -> dict:
    """Figures of the served predictions on the held-out scenes."""
    state = backend.serving_state(project)
    resolvers = state.resolvers if state is not None else None
    counts = PanopticCounts()
    overlap: dict[str, OverlapCounts] = {}
    for image, truth in held_out:
        pred = backend.predict_image(image, controls, resolvers=resolvers)
        found = [(r.label, r.mask) for r in pred.regions]
        counts = counts + panoptic_quality(found, truth)
        for label, o in semantic_overlap(found, truth).items():
            overlap[label] = overlap.get(label, OverlapCounts()) + o
    n = len(held_out)
    unknown = {name: round(overlap.get(name, OverlapCounts()).iou, 3) for name in RENAMED.values()}
    return {
        "pq": round(counts.pq, 4),
        "sq": round(counts.sq, 4),
        "rq": round(counts.rq, 4),
        "false_per_task": round(counts.fp / n, 3),
        "missed_per_task": round(counts.fn / n, 3),
        "unknown_name_iou": unknown,
        "model_version": backend.model_version(project),
    }


def choose(backend, controls, project, pool, left, strategy, rng) -> list[int]:
    """ROUND_SIZE indices of ``left`` to annotate next."""
    if strategy == "random":
        return rng.sample(sorted(left), min(ROUND_SIZE, len(left)))
    state = backend.serving_state(project)
    resolvers = state.resolvers if state is not None else None
    candidates = sorted(left)
    preds = [backend.predict_image(pool[i][0], controls, resolvers=resolvers) for i in candidates]
    order = coverage_order(
        [p.uncertainty for p in preds], [frozenset(r.label for r in p.regions) for p in preds]
    )
    return [candidates[j] for j in order[:ROUND_SIZE]]


def run_strategy(backend, controls, project, pool, held_out, strategy, seed, rounds) -> list:
    """The loop with one strategy, into project ``project`` of the store: figures per round."""
    rng = random.Random(seed)
    left = set(range(len(pool)))
    annotated: list[int] = []
    out = []
    for r in range(1, rounds + 1):
        picked = choose(backend, controls, project, pool, left, strategy, rng)
        left -= set(picked)
        annotated += picked
        examples = [
            Example(POOL_START + i, pool[i][0], pool[i][1], POOL_START + i) for i in annotated
        ]
        started = time.perf_counter()
        record = run_training(backend.segmenter, controls, examples, {}, backend.learned, project)
        seconds = time.perf_counter() - started
        figures = evaluate(backend, controls, project, held_out)
        figures.update(
            annotated=len(annotated),
            state=record["id"],
            promoted=record["promoted"],
            train_seconds=round(seconds, 1),
            validation=record["validation"]["new"],
        )
        out.append(figures)
        print(f"{strategy} (seed {seed}) round {r}: {figures}", flush=True)
    return out


def mean_rounds(runs: list[list[dict]]) -> list[dict]:
    """Per round, the mean (and min, max) of PQ and false/missed regions over runs."""
    out = []
    for figures in zip(*runs, strict=True):
        row: dict = {"annotated": figures[0]["annotated"]}
        for key in ("pq", "false_per_task", "missed_per_task"):
            values = [f[key] for f in figures]
            row[key] = round(float(np.mean(values)), 4)
            row[key + "_range"] = [min(values), max(values)]
        names = figures[0]["unknown_name_iou"]
        row["unknown_name_iou"] = {
            n: round(float(np.mean([f["unknown_name_iou"][n] for f in figures])), 3) for n in names
        }
        out.append(row)
    return out


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    store = Path(args.store or tempfile.mkdtemp(prefix="bench-learning-"))
    settings = Settings(model=args.model, device="cpu", model_dir=str(store))
    backend = CLIPSegBackend.load(settings)
    controls = parse_label_config(label_config_for(project_labels()), settings.threshold)
    held_out = [scene_truth(SEED_START + i) for i in range(args.held_out)]
    pool = [scene_truth(POOL_START + i) for i in range(args.pool)]
    base = evaluate(backend, controls, "base", held_out)
    print(f"base model: {base}", flush=True)
    out = {"model": args.model, "held_out": args.held_out, "pool": args.pool, "base": base}
    out["ranked"] = run_strategy(
        backend, controls, "ranked", pool, held_out, "ranked", args.seed, args.rounds
    )
    seeds = [args.seed + n for n in range(args.random_seeds)]
    out["random_runs"] = {
        str(seed): run_strategy(
            backend, controls, f"random{seed}", pool, held_out, "random", seed, args.rounds
        )
        for seed in seeds
    }
    out["random"] = mean_rounds(list(out["random_runs"].values()))
    return out


def table(result: dict) -> str:
    base = result["base"]
    lines = [
        f"{result['held_out']} held-out tasks; demo model `{result['model']}`; "
        f"{ROUND_SIZE} tasks annotated per round",
        "",
        "| strategy | annotated | PQ | false / task | missed / task | IoU of unknown names |",
        "|---|---:|---:|---:|---:|---|",
        f"| base model | 0 | {base['pq']:.3f} | {base['false_per_task']:.2f} | "
        f"{base['missed_per_task']:.2f} | "
        + ", ".join(f"{k} {v:.2f}" for k, v in base["unknown_name_iou"].items())
        + " |",
    ]
    seeds = len(result["random_runs"])
    for strategy, name in (("ranked", "ranking"), ("random", f"random, mean of {seeds} seeds")):
        for f in result[strategy]:
            pq = f"{f['pq']:.3f}"
            if "pq_range" in f:
                pq += f" ({f['pq_range'][0]:.3f}-{f['pq_range'][1]:.3f})"
            lines.append(
                f"| {name} | {f['annotated']} | {pq} | {f['false_per_task']:.2f} | "
                f"{f['missed_per_task']:.2f} | "
                + ", ".join(f"{k} {v:.2f}" for k, v in f["unknown_name_iou"].items())
                + " |"
            )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """PQ and false regions per task against annotated tasks, both strategies (PIL, no
    plotting dependency)."""
    from PIL import Image, ImageDraw

    width, height, pad = 900, 420, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    panels = (("PQ", "pq", 1.0), ("false regions / task", "false_per_task", None))
    colors = {"ranked": (200, 60, 40), "random": (40, 90, 200)}
    panel_w = (width - 3 * pad) // 2
    xs_max = max(f["annotated"] for s in ("ranked", "random") for f in result[s])
    for n, (title, key, top) in enumerate(panels):
        x0, y0, x1, y1 = (
            pad + n * (panel_w + pad),
            pad,
            pad + n * (panel_w + pad) + panel_w,
            height - pad,
        )
        values = [result["base"][key]] + [f[key] for s in colors for f in result[s]]
        top = top or max(values) * 1.1 or 1.0
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, y0 - 20), title, fill="black")
        for t in range(5):
            v = top * t / 4
            y = y1 - (y1 - y0) * t / 4
            draw.line([x0 - 4, y, x0, y], fill="black")
            draw.text((x0 - 40, y - 6), f"{v:.2f}", fill="black")
        for strategy, color in colors.items():
            pts = [(0, result["base"][key])] + [(f["annotated"], f[key]) for f in result[strategy]]
            xy = [(x0 + (x1 - x0) * a / xs_max, y1 - (y1 - y0) * v / top) for a, v in pts]
            draw.line(xy, fill=color, width=3)
            for x, y in xy:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
        for a in sorted({0} | {f["annotated"] for f in result["random"]}):
            x = x0 + (x1 - x0) * a / xs_max
            draw.text((x - 6, y1 + 6), str(a), fill="black")
        draw.text(((x0 + x1) // 2 - 50, y1 + 24), "annotated tasks", fill="black")
    for i, (strategy, color) in enumerate(colors.items()):
        draw.rectangle([width - 260, 10 + 18 * i, width - 248, 22 + 18 * i], fill=color)
        legend = "ranking (coverage order)" if strategy == "ranked" else "random (mean)"
        draw.text((width - 242, 10 + 18 * i), legend, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _pss_bytes() -> int:
    with open("/proc/self/smaps_rollup", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def speed(args: argparse.Namespace) -> dict:
    """Time and peak PSS of one training on ``args.speed`` tasks with the full-size model."""
    import threading

    import torch
    from common import build_checkpoint

    torch.set_num_threads(args.threads)
    store = Path(args.store or tempfile.mkdtemp(prefix="bench-learning-"))
    checkpoint = build_checkpoint()
    settings = Settings(model=str(checkpoint), device="cpu", model_dir=str(store))
    backend = CLIPSegBackend.load(settings)
    controls = parse_label_config(label_config_for(project_labels()), settings.threshold)
    examples = []
    for i in range(args.speed):
        image, truth = scene_truth(POOL_START + i)
        examples.append(Example(POOL_START + i, image, truth, POOL_START + i))
    peak = [_pss_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], _pss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    record = run_training(backend.segmenter, controls, examples, {}, backend.learned, "1")
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    out = {
        "model": "rd64-refined shape, random weights",
        "tasks": args.speed,
        "threads": args.threads,
        "train_seconds": round(seconds, 1),
        "peak_pss_mib": round(peak[0] / 2**20),
        "state": record["id"],
    }
    print(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pool", type=int, default=60)
    p.add_argument("--held-out", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--random-seeds", type=int, default=5, help="random-picking runs (seeds from --seed)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--store", default=None, help="MODEL_DIR for the states (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--speed", type=int, default=0, metavar="N", help="time one training on N tasks")
    args = p.parse_args(argv)
    if args.speed:
        result = speed(args)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
        return
    result = run(args)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
