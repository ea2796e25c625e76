"""`clipseg-label predict`: pre-label images into Label Studio tasks, COCO and overlays
(`backend.batch.predict`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backend.cli.common import (
    DEVICES,
    Formatter,
    Subparsers,
    UsageError,
    add_ls_connection,
    connect,
    defaults,
    option_words,
    report_failures,
    settings_from,
)
from backend.controls import RESULT_OPTIONS

#: backend.batch.predict.ENGINES (not imported here: it loads torch, and --help should not)
ENGINES = ("local", "ray")


def add_parser(sub: Subparsers) -> None:
    env = defaults()
    p = sub.add_parser(
        "predict",
        help="pre-label images: Label Studio tasks with predictions, COCO, overlays",
        description=(
            "Predict masks for every image and write OUT/tasks.json (Label Studio tasks with "
            "predictions, importable as is), OUT/coco.json (COCO with RLE masks and scores), "
            "OUT/failures.json, OUT/label_config.xml and, with --overlays, OUT/overlays/*.png.\n"
            "Per-image results are kept in OUT/.state/, so running the same command again "
            "skips the images already done and only retries the failed ones."
        ),
        epilog=(
            "examples:\n"
            "  clipseg-label predict photos/ --labels cat,dog --out out/\n"
            "  clipseg-label predict 'data/**/*.jpg' --label-config config.xml --out out/ \\\n"
            "      --image-root data --image-root-url '/data/local-files/?d=' --overlays\n"
            "  clipseg-label predict export.json --labels 'red circle,star' --model demo --out out/"
        ),
        formatter_class=Formatter,
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image files, folders, globs, .txt lists (one path/URL a line), Label Studio JSON "
        "exports (tasks with data.image) or http(s) URLs",
    )
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="comma-separated label names, each its own text prompt")
    labels.add_argument(
        "--label-config",
        metavar="FILE",
        help="a Label Studio label config (XML); prompts, predicted_values, "
        "model_score_threshold, model_tile_size and model_skip are honoured as by the backend",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--model",
        default=env.model,
        help="checkpoint directory, hub id or 'demo'; env CLIPSEG_MODEL",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=env.threshold,
        help="probability threshold per pixel (a config's model_score_threshold wins)",
    )
    p.add_argument("--device", default=env.device, help=f"{DEVICES}; env CLIPSEG_DEVICE")
    p.add_argument("--batch-size", type=int, default=4, help="images per model batch")
    ray = p.add_argument_group(
        "engine",
        "where the model runs: in this process (local), or on a Ray cluster with Ray Data "
        '(ray; needs pip install "clipseg-label-studio[ray]"); both write the same outputs, '
        "and either resumes the other's run (docs/cli.md, 'Ray engine')",
    )
    ray.add_argument("--engine", choices=ENGINES, default="local", help="the batch engine")
    ray.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="the Ray cluster: 'auto' (a node of a running cluster), ray://HEAD:10001 (Ray "
        "client), or unset: a local Ray for this run",
    )
    ray.add_argument(
        "--num-workers", type=int, default=1, metavar="N", help="inference actors (Ray)"
    )
    ray.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs per inference actor, fractions allowed (Ray; 0: CPU)",
    )
    ray.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        metavar="C",
        help="CPUs per inference actor; its torch threads: C rounded up (Ray)",
    )
    ray.add_argument(
        "--max-retries",
        type=int,
        default=3,
        metavar="R",
        help="restarts of a dead actor, retries of its batch and of a failed decode task (Ray)",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        default=env.tile_size,
        metavar="PX",
        help="tiled prediction for small objects in large images: square tiles of PX original "
        "pixels plus the whole image (0: off; a config's model_tile_size wins); env "
        "CLIPSEG_TILE_SIZE",
    )
    p.add_argument(
        "--tile-overlap",
        type=float,
        default=env.tile_overlap,
        metavar="F",
        help="fraction of a tile shared with its neighbours, in [0, 0.9); env CLIPSEG_TILE_OVERLAP",
    )
    p.add_argument(
        "--type",
        dest="result_type",
        choices=tuple(RESULT_OPTIONS),
        default="brush",
        help="result type with --labels (a label config's controls decide otherwise)",
    )
    p.add_argument(
        "--region-mode",
        choices=("instance", "semantic"),
        default=env.region_mode,
        help="one region per connected blob, or one per label",
    )
    p.add_argument(
        "--min-area",
        type=float,
        default=env.min_region_area,
        help="smallest region kept: fraction of the image, or pixels when >= 1",
    )
    p.add_argument(
        "--score",
        choices=("confidence", "uncertainty"),
        default=env.score_mode,
        help="what each prediction's top-level score is",
    )
    p.add_argument(
        "--image-key",
        default=None,
        help="task data key of the image (default: the label "
        "config's <Image value=...>, else 'image'); also read from export tasks",
    )
    p.add_argument(
        "--image-root-url",
        default="",
        metavar="PREFIX",
        help="prefix of data.image for local files, e.g. '/data/local-files/?d=' so Label "
        "Studio serves them (paths then relative to --image-root, percent-encoded behind a URL "
        "prefix as Label Studio's local-files storage writes them)",
    )
    p.add_argument(
        "--image-root",
        default=None,
        metavar="DIR",
        help="folder local paths are made relative to (Label Studio's "
        "LOCAL_FILES_DOCUMENT_ROOT; default: the current folder when --image-root-url is set)",
    )
    p.add_argument(
        "--local-files-root",
        default=env.local_files_document_root,
        metavar="DIR",
        help="read '/data/local-files/?d=' references of exports from this folder "
        "(env LOCAL_FILES_DOCUMENT_ROOT)",
    )
    p.add_argument(
        "--exemplars-project",
        default=None,
        metavar="ID",
        help="mix in the exemplars of this project from the store (see 'exemplars build')",
    )
    p.add_argument(
        "--store",
        default=env.model_dir,
        metavar="MODEL_DIR",
        help="the backend's MODEL_DIR holding exemplar stores; env MODEL_DIR",
    )
    add_ls_connection(p, required=False)
    p.add_argument(
        "--project",
        type=int,
        default=None,
        metavar="ID",
        help="predict the tasks of this Label Studio project (instead of INPUTs) that hold no "
        "prediction of this model_version yet, fetched page by page with --url and --api-key",
    )
    p.add_argument(
        "--push",
        action="store_true",
        help="with --project: import each prediction into its task, in batches as they are done",
    )
    p.add_argument("--recursive", action="store_true", help="search folders recursively")
    p.add_argument("--overlays", action="store_true", help="also write OUT/overlays/*.png")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar and no summary",
    )


def run(args: argparse.Namespace) -> int:
    from backend.batch import predict as batch_predict

    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must lie in [0, 1]")
    if args.tile_size < 0:
        raise UsageError("--tile-size must be 0 (off) or a number of pixels")
    if not 0.0 <= args.tile_overlap < 0.9:
        raise UsageError("--tile-overlap must lie in [0, 0.9)")
    if args.project is None and not args.inputs:
        raise UsageError("give INPUTs, or --project ID to predict a Label Studio project's tasks")
    if args.project is not None and args.inputs:
        raise UsageError("give INPUTs or --project, not both")
    if args.push and args.project is None:
        raise UsageError("--push needs --project (for files: predict, then clipseg-label push)")
    ray_options = None
    if args.engine == "ray":
        from backend.batch.ray_engine import RayOptions

        ray_options = RayOptions(
            address=args.ray_address,
            num_workers=args.num_workers,
            gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
            max_retries=args.max_retries,
        )
        try:
            ray_options.check()
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    elif args.ray_address is not None:
        raise UsageError("--ray-address needs --engine ray")
    settings = settings_from(
        model=args.model,
        device=args.device,
        threshold=args.threshold,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        region_mode=args.region_mode,
        min_region_area=args.min_area,
        score_mode=args.score,
        label_studio_url=args.url.rstrip("/") or None,
        label_studio_api_key=args.api_key or None,
        local_files_document_root=args.local_files_root or None,
        model_dir=args.store,
    )
    summary = batch_predict.predict(
        args.inputs,
        settings=settings,
        out_dir=args.out,
        labels=[s.strip() for s in args.labels.split(",")] if args.labels else None,
        label_config=Path(args.label_config) if args.label_config else None,
        result_type=args.result_type,
        batch_size=args.batch_size,
        image_key=args.image_key,
        image_root=args.image_root,
        image_root_url=args.image_root_url,
        recursive=args.recursive,
        overlays=args.overlays,
        quiet=args.quiet,
        exemplars_project=args.exemplars_project,
        words=option_words,
        engine=args.engine,
        ray_options=ray_options,
        project=args.project,
        client=connect(args) if args.project is not None else None,
        push=args.push,
    )
    if not args.quiet:
        print(
            f"{summary.done} predicted, {summary.skipped} already done, "
            f"{len(summary.failures)} failed; outputs in {args.out}",
            file=sys.stderr,
        )
        if args.project is not None:
            print(
                f"project {args.project}: {summary.already} tasks held this model_version's "
                f"prediction already; {summary.pushed} predictions imported",
                file=sys.stderr,
            )
    return report_failures(summary.failures, Path(args.out) / "failures.json")
