"""`clipseg-label exemplars build | show`: build an exemplar store from a Label Studio export,
or list one (`backend.batch.exemplar_build`)."""

from __future__ import annotations

import argparse
import json
import sys

from backend.cli.common import (
    DEVICES,
    EXIT_OK,
    Formatter,
    Subparsers,
    UsageError,
    add_ls_connection,
    defaults,
    option_words,
    read_tasks,
    read_text,
    report_failures,
    settings_from,
)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "exemplars",
        help="build or inspect an exemplar store, offline",
        description=(
            "Exemplars are embeddings of annotated regions that the backend mixes into its "
            "prompts. 'build' makes them from a Label Studio export, in the store layout the "
            "backend reads; 'show' lists a store's projects and per-label counts."
        ),
        formatter_class=Formatter,
    )
    esub = p.add_subparsers(
        dest="exemplars_command", metavar="ACTION", required=True, help="build or show"
    )
    b = esub.add_parser(
        "build",
        help="embed the annotated regions of an export into the store",
        description=(
            "Embed every annotated region (brush, polygon, rectangle) of a Label Studio export "
            "with the model's visual prompt and store them per project and label, as the "
            "backend's training does (annotations stored again replace their exemplars)."
        ),
        epilog=(
            "example:\n  clipseg-label exemplars build --export export.json --images-root "
            "images/ --model demo --store model-data --project 3"
        ),
        formatter_class=Formatter,
    )
    b.add_argument("--export", required=True, metavar="FILE", help="Label Studio JSON export")
    b.add_argument(
        "--images-root",
        default=None,
        metavar="DIR",
        help="folder that '/data/local-files/?d=' paths and plain relative paths are read from",
    )
    b.add_argument(
        "--label-config",
        metavar="FILE",
        default=None,
        help="the project's label config, to find which task data key each region's image "
        "is (default: the region's to_name)",
    )
    env = defaults()
    b.add_argument(
        "--model",
        default=env.model,
        help="checkpoint; env CLIPSEG_MODEL",
    )
    b.add_argument("--device", default=env.device, help=f"{DEVICES}; env CLIPSEG_DEVICE")
    b.add_argument(
        "--store",
        default=env.model_dir,
        metavar="MODEL_DIR",
        help="the backend's MODEL_DIR; env MODEL_DIR",
    )
    b.add_argument(
        "--project", required=True, help="Label Studio project id the exemplars belong to"
    )
    b.add_argument(
        "--max-per-label",
        type=int,
        default=env.max_exemplars_per_label,
        help="newest exemplars kept per label",
    )
    add_ls_connection(b, required=False)
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s = esub.add_parser(
        "show",
        help="list a store's projects, labels and counts",
        description="List the exemplar store: per model and project, the exemplars per label.",
        formatter_class=Formatter,
    )
    s.add_argument(
        "--store",
        default=env.model_dir,
        metavar="MODEL_DIR",
        help="the backend's MODEL_DIR",
    )
    s.add_argument("--project", default=None, help="only this project")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from backend.batch import exemplar_build

    if args.exemplars_command == "show":
        try:
            listing = exemplar_build.describe_store(args.store, project=args.project)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        if args.json:
            print(json.dumps(listing, indent=2))
        else:
            print(exemplar_build.format_listing(listing))
        return EXIT_OK
    settings = settings_from(
        model=args.model,
        device=args.device,
        model_dir=args.store,
        max_exemplars_per_label=args.max_per_label,
        tile_size=0,  # building exemplars predicts nothing
        label_studio_url=args.url.rstrip("/") or None,
        label_studio_api_key=args.api_key or None,
    )
    config = read_text(args.label_config) if args.label_config else None
    try:
        report = exemplar_build.build_store(
            read_tasks(args.export),
            settings=settings,
            project=args.project,
            images_root=args.images_root,
            label_config=config,
            quiet=args.quiet,
            words=option_words,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(
        f"project {args.project}: {report.exemplars} exemplars from {report.annotations} "
        f"annotations stored in {report.store}",
        file=sys.stderr,
    )
    return report_failures(report.failures, None)
