"""`clipseg-label export-coco`: a Label Studio JSON export to COCO with exact masks
(`backend.batch.export_coco`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from backend.cli.common import EXIT_OK, EXIT_PARTIAL, Formatter, Subparsers, UsageError, read_tasks


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "export-coco",
        help="convert a Label Studio JSON export to COCO with exact masks",
        description=(
            "Convert a Label Studio JSON export to a COCO dataset. Brush masks are decoded "
            "exactly (RLE segmentation), polygons and rectangles rasterised; categories are "
            "the label names."
        ),
        epilog="example:\n  clipseg-label export-coco export.json --out coco.json",
        formatter_class=Formatter,
    )
    p.add_argument("export", metavar="EXPORT_JSON", help="Label Studio JSON export")
    p.add_argument("--out", required=True, metavar="FILE", help="COCO JSON to write")
    p.add_argument(
        "--from",
        dest="source",
        choices=("annotations", "predictions"),
        default="annotations",
        help="take the regions of annotations, or of predictions (with their scores)",
    )
    p.add_argument(
        "--labels",
        default=None,
        help="comma-separated category names in id order (default: every label found, sorted)",
    )
    p.add_argument("--image-key", default=None, help="task data key of the image (default: image)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first bad task (exit 2) instead of leaving it out (exit 1)",
    )


def run(args: argparse.Namespace) -> int:
    from backend.atomic import write_json_atomic
    from backend.batch.export_coco import labelstudio_to_coco

    problems: list[Any] = []
    try:
        coco = labelstudio_to_coco(
            read_tasks(args.export),
            labels=[s.strip() for s in args.labels.split(",")] if args.labels else None,
            source=args.source,
            image_key=args.image_key,
            errors="raise" if args.strict else "skip",
            problems=problems,
        )
    except ValueError as exc:
        raise UsageError(f"{args.export}: {exc}") from exc
    write_json_atomic(Path(args.out), coco)
    print(
        f"{len(coco['images'])} images, {len(coco['annotations'])} annotations, "
        f"{len(coco['categories'])} categories -> {args.out}",
        file=sys.stderr,
    )
    if not problems:
        return EXIT_OK
    print(f"{len(problems)} tasks left out:", file=sys.stderr)
    for problem in problems[:20]:
        print(f"  task {problem.task_id}: {problem.message}", file=sys.stderr)
    return EXIT_PARTIAL
