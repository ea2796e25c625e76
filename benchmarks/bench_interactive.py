"""Interactive pre-annotation latency: prompts typed one after another on the same task.

An annotator who types "the dog", then "the dog on the left", ... sends Label Studio's
interactive /predict again and again for one image. The Predictor keeps the encoded images it
saw last (`Predictor(image_cache_size=16)`), so only the first prompt pays for the vision
encoder. This script calls `CLIPSegBackend.predict_image` (what /predict runs per image) with a
typed-prompt context, CPU, fp32, full-size random weights, on one image, with the cache off and
on, and prints the first and the following prompts' median latency.

    python benchmarks/bench_interactive.py [--threads 2] [--prompts 5] [--small]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from backend.model import CLIPSegBackend  # noqa: E402
from backend.settings import Settings  # noqa: E402

CONFIG = (
    '<View><Image name="image" value="$image"/><TextArea name="prompt" toName="image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="dog"/>'
    "</BrushLabels></View>"
)


def typed(text: str) -> dict:
    """The context Label Studio sends when an annotator submits `text` in the TextArea."""
    item = {"type": "textarea", "from_name": "prompt", "to_name": "image"}
    return {"result": [{**item, "value": {"text": [text]}}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.common_arguments(parser)
    parser.add_argument("--prompts", type=int, default=5, help="prompts after the first")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--small", action="store_true", help="a few-MB model (smoke run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    common.set_threads(args.threads)
    checkpoint = common.build_checkpoint(small=args.small, seed=args.seed, cache_dir=args.cache_dir)
    backend = CLIPSegBackend.load(Settings(model=str(checkpoint), device="cpu", dtype="float32"))
    controls = backend.controls(CONFIG)
    image = np.random.default_rng(args.seed).integers(
        0, 256, (args.height, args.width, 3), dtype=np.uint8
    )

    def ask(text: str) -> float:
        start = time.perf_counter()
        backend.predict_image(image, controls, {}, typed(text))
        return time.perf_counter() - start

    rows = []
    for cache in (0, 16):
        backend.predictor.image_cache_size = cache
        backend.predictor.reset_image()
        first = ask(f"the cat {cache}")  # a fresh string: its text embedding is computed too
        rest = [ask(f"the cat {cache}-{i}") for i in range(args.prompts)]
        rows.append([cache, first * 1e3, statistics.median(rest) * 1e3])
    shape = "small" if args.small else "rd64-refined"
    print(
        f"\nTyped prompts on one {args.width}x{args.height} image, CPU, fp32, random {shape} "
        f"weights; median of {args.prompts} prompts after the first, each a new string"
    )
    print(f"Machine: {common.machine_description()}\n")
    headers = ["image_cache_size", "first prompt ms", "next prompts ms"]
    print(common.markdown_table(headers, rows))


if __name__ == "__main__":
    main()
