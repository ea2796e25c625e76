"""End-to-end /predict latency on CPU through the real backend, broken down by stage.

One 1920x1080 JPEG (a local-files task under LOCAL_FILES_DOCUMENT_ROOT), 5 labels on a BrushLabels
and a PolygonLabels control (so both polygons and brush RLE are made), the full-size random model
at the CIDAS/clipseg-rd64-refined shape saved to a tmp dir and loaded the way the server loads it
(`CLIPSegBackend.load(Settings.from_env())` with CLIPSEG_MODEL pointing at it), fp32.

Two measurements, both medians of --repeats:

- "in request": POST /predict through Flask's test client on `backend.server.create_app`; the
  backend's own functions are wrapped with timers for the request (image loading, set_image,
  embed_text, predict_embeddings, find_regions, each control tag, jsonify) and forward hooks
  time the vision encoder (from its patch embedding to the last block it runs) and the decoder.
  Preprocessing is set_image minus the encoder; upsampling (logits to 1920x1080, sigmoid) is
  predict_embeddings minus the decoder; "other" is the request minus every stage.
- "direct": the same library functions called one after the other, outside Flask, on the same
  inputs: what each stage costs without the HTTP layer.

The two alternate (request, direct, request, ...) so that background load hits both. Each row is
the median of that stage over the runs, so the stages need not add up to the median total;
"other" is the median of each request's unaccounted time.

The text-embedding stage runs once per new prompt: in request it is paid by the first request
only (the warm-up), so its "in request" figure is the steady state, a backend's usual case; the
last row shows what the first request paid for it, and what 5 new prompts cost when called
directly.

    python benchmarks/bench_predict_latency.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_memory import LABELS, label_config, predict_body, write_task_image  # noqa: E402

logger = logging.getLogger("bench_predict_latency")

STAGES = [
    ("fetch", "fetch and decode (ImageLoader.load)"),
    ("preprocess", "preprocess (set_image minus encoder and reduce)"),
    ("encoder", "vision encoder (through the deepest extracted block)"),
    ("text", "text embeddings (embed_text)"),
    ("reduce", "decoder reduce projections (once per image)"),
    ("decoder", "decoder (FiLM, layers, upsampler convs; K prompts)"),
    ("upsample", "upsample + sigmoid (predict_embeddings minus decoder)"),
    ("regions", "threshold + connected regions (find_regions)"),
    ("brush", "brush RLE (BrushLabels tag)"),
    ("polygon", "polygons (PolygonLabels tag)"),
    ("json", "JSON (jsonify / json.dumps)"),
]


class StageClock:
    """Accumulates seconds per stage while installed: wrappers around functions, module hooks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []
        self._marks: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        """Replace `owner.name` by a timed version (undone by `remove`)."""
        original = getattr(owner, name)
        had_own = name in vars(owner) if hasattr(owner, "__dict__") else False

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - start)

        setattr(owner, name, timed)
        self._undo.append(
            (lambda: setattr(owner, name, original)) if had_own else (lambda: delattr(owner, name))
        )

    def span(self, stage: str, first: torch.nn.Module, lasts: list[torch.nn.Module]) -> None:
        """Time from `first`'s forward start to the end of the last call among `lasts`.

        The Predictor may run the vision blocks one by one (stopping after the deepest one the
        decoder reads) instead of calling the tower's forward: the span covers either way.
        """

        def start(*_: Any) -> None:
            if stage in self._marks:
                self._close(stage)
            self._marks[stage] = time.perf_counter()
            self._marks[stage + ".end"] = self._marks[stage]

        def end(*_: Any) -> None:
            if stage in self._marks:
                self._marks[stage + ".end"] = time.perf_counter()

        handles = [first.register_forward_pre_hook(start)]
        handles += [m.register_forward_hook(end) for m in lasts]
        self._undo.extend(h.remove for h in handles)

    def _close(self, stage: str) -> None:
        began = self._marks.pop(stage)
        self.add(stage, self._marks.pop(stage + ".end") - began)

    def flush(self) -> dict[str, float]:
        """The seconds per stage since the last flush (open spans closed)."""
        for stage in [k for k in self._marks if not k.endswith(".end")]:
            self._close(stage)
        out, self.seconds = self.seconds, {}
        return out

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def model_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, list[torch.nn.Module], Any]:
    """The vision embeddings, the vision encoder's blocks, and the decoder of `model`."""
    vision = next(
        m
        for m in model.modules()
        if hasattr(m, "embeddings") and hasattr(m, "pre_layrnorm") and hasattr(m, "encoder")
    )
    return vision.embeddings, list(vision.encoder.layers), model.decoder


def time_model(clock: StageClock, model: torch.nn.Module) -> None:
    """Time the vision encoder (a span over its blocks) and the decoder's two halves.

    Our decoder is split into `reduce` (per image, in set_image) and `decode` (per prompt); a
    decoder without that split is timed as a whole through its forward hooks.
    """
    embeddings, blocks, decoder = model_parts(model)
    clock.span("encoder", embeddings, blocks)
    if hasattr(decoder, "reduce") and hasattr(decoder, "decode"):
        clock.wrap(decoder, "reduce", "reduce")
        clock.wrap(decoder, "decode", "decoder")
    else:
        clock.span("decoder", decoder, [decoder])


def install(clock: StageClock, backend: Any, predictor: Any) -> None:
    """Time every stage of `backend.predict` (see the module docstring)."""
    import backend.segmenter as segmenter
    import backend.server as backend_server

    clock.wrap(backend.images, "load", "fetch")
    clock.wrap(predictor, "set_image", "set_image")
    clock.wrap(predictor, "embed_text", "text")
    clock.wrap(predictor, "predict_embeddings", "predict_embeddings")
    time_model(clock, predictor.model)
    clock.wrap(segmenter, "find_regions", "regions")
    for tag in backend.segmenter.tags:  # on the class: a tag with options is a frozen dataclass
        clock.wrap(type(tag), "results", tag_stage(tag))
    clock.wrap(backend_server, "jsonify", "json")


def tag_stage(tag: Any) -> str:
    """The stage name of a control tag: brush, polygon or rectangle."""
    return tag.kind().removesuffix("labels")


def derive(seconds: dict[str, float]) -> dict[str, float]:
    """Split the wrapped totals: preprocess = set_image - encoder - reduce, upsample =
    predict_embeddings - decoder."""
    out = dict(seconds)
    out["preprocess"] = out.pop("set_image", 0.0) - out.get("encoder", 0.0) - out.get("reduce", 0.0)
    out["upsample"] = out.pop("predict_embeddings", 0.0) - out.get("decoder", 0.0)
    return out


def median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for run in runs for k in run}
    return {k: common.median([run.get(k, 0.0) for run in runs]) for k in keys}


def run_direct(backend: Any, task: dict, config: str, clock: StageClock) -> dict[str, float]:
    """The stages as plain calls of the functions the backend calls, in its order."""
    import backend.segmenter as segmenter
    from backend.controls import tag_for

    predictor = backend.predictor
    t: dict[str, float] = {}
    controls = backend.controls(config)
    with common.stopwatch(t, "fetch"):
        image = backend.images.load(task, controls[0].value_key, None).array
    clock.flush()
    with common.stopwatch(t, "set_image"):
        predictor.set_image(image)
    labels = {lab.value: lab.prompts[0] for c in controls for lab in c.labels}
    prompts = list(dict.fromkeys(labels.values()))
    with common.stopwatch(t, "text"):
        conds = predictor.embed_text(prompts)
    with common.stopwatch(t, "predict_embeddings"):
        probs = predictor.predict_embeddings(conds)
    t.update(clock.flush())
    height, width = image.shape[:2]
    min_area = segmenter.min_area_pixels(backend.settings.min_region_area, height, width)
    results = []
    for control in controls:
        with common.stopwatch(t, "regions"):
            regions = [
                r
                for lab, p in zip(labels, probs, strict=True)
                for r in segmenter.find_regions(
                    lab, np.asarray(p), control.threshold, backend.settings.region_mode, min_area
                )
            ]
        tag = tag_for(control, backend.segmenter.tags)
        with common.stopwatch(t, tag_stage(tag)):
            results += tag.results(control, regions)
    with common.stopwatch(t, "json"):
        json.dumps({"results": [{"result": results}]})
    out = derive(t)
    fresh = common.fresh_prompts(prompts)  # what the first request of a project pays
    with common.stopwatch(out, "text_new"):
        predictor.embed_text(fresh)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.common_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="a tiny model (smoke test)")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    common.set_threads(args.threads)

    ckpt = common.build_checkpoint(small=args.small, seed=args.seed, cache_dir=args.cache_dir)
    workdir = Path(tempfile.mkdtemp(prefix="clipseg-bench-latency."))
    (workdir / "data").mkdir()
    image_ref = write_task_image(workdir / "data", args.width, args.height, seed=args.seed)
    config = label_config(LABELS)
    env = {
        **os.environ,
        "CLIPSEG_MODEL": str(ckpt),
        "CLIPSEG_DEVICE": "cpu",
        "CLIPSEG_DTYPE": "float32",
        "LOCAL_FILES_DOCUMENT_ROOT": str(workdir / "data"),
        "MODEL_DIR": str(workdir / "model-data"),
    }
    from backend.model import CLIPSegBackend
    from backend.server import create_app
    from backend.settings import Settings

    settings = Settings.from_env(env)
    backend = CLIPSegBackend.load(settings)
    predictor = backend.predictor
    # every request here sends the same image: time the encoder, not the encoded-image cache
    predictor.image_cache_size = 0
    client = create_app(backend, settings).test_client()
    body = predict_body(image_ref, config)
    task = body["tasks"][0]

    # One clock for both paths; runs alternate (request, direct, request, ...) so that the load
    # of a shared machine hits both alike.
    clock = StageClock()
    install(clock, backend, predictor)
    http_runs: list[dict[str, float]] = []
    direct_runs: list[dict[str, float]] = []
    http_first_text = 0.0
    n_results = 0
    staged = [key for key, _ in STAGES]
    for i in range(args.warmup + args.repeats):
        clock.flush()
        start = time.perf_counter()
        response = client.post("/predict", json=body)
        total = time.perf_counter() - start
        if response.status_code != 200:
            raise RuntimeError(f"/predict answered {response.status_code}: {response.text[:300]}")
        n_results = len(response.get_json()["results"][0]["result"])
        stages = derive(clock.flush())
        stages["total"] = total
        stages["other"] = total - sum(stages.get(k, 0.0) for k in staged)
        direct = run_direct(backend, task, config, clock)
        direct["total"] = sum(direct.get(k, 0.0) for k in staged)
        if i == 0:
            http_first_text = stages.get("text", 0.0)
        if i >= args.warmup:
            http_runs.append(stages)
            direct_runs.append(direct)
    clock.remove()
    shutil.rmtree(workdir, ignore_errors=True)

    http, direct = median_stages(http_runs), median_stages(direct_runs)
    rows = []
    for key, name in STAGES:
        rows.append([name, http.get(key, 0.0) * 1e3, direct.get(key, 0.0) * 1e3])
    rows.append(["other (Flask, parsing, merging, scores)", http["other"] * 1e3, 0.0])
    rows.append(["total", http["total"] * 1e3, direct["total"] * 1e3])
    rows.append(
        [
            f"(not in total) text embeddings of {len(LABELS)} new prompts, first request",
            http_first_text * 1e3,
            direct.get("text_new", 0.0) * 1e3,
        ]
    )
    shape = "small" if args.small else "rd64-refined"
    print(
        f"\nPOST /predict on CPU, fp32, random {shape} weights: one {args.width}x{args.height} "
        f"JPEG, {len(LABELS)} labels on BrushLabels + PolygonLabels ({n_results} result items); "
        f"median of {args.repeats}"
    )
    print(f"Machine: {common.machine_description()}\n")
    print(common.markdown_table(["stage", "in request ms", "direct ms"], rows))


if __name__ == "__main__":
    main()
