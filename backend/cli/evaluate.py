"""`clipseg-label evaluate`: what an annotator must fix, measured (`backend.batch.evaluate`)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from backend.cli.common import (
    DEVICES,
    EXIT_OK,
    EXIT_PARTIAL,
    Formatter,
    Subparsers,
    UsageError,
    defaults,
    option_words,
    report_failures,
    settings_from,
)
from backend.controls import RESULT_OPTIONS

#: How many tasks or problems are listed on stderr (all of them are in --json).
SHOWN = 20


def add_parser(sub: Subparsers) -> None:
    env = defaults()
    p = sub.add_parser(
        "evaluate",
        help="measure predictions against accepted annotations: PQ, false and missed regions",
        description=(
            "Compare predictions with the accepted annotations, as an annotator would fix them: "
            "per label and overall, PQ = SQ x RQ (one-to-one matches per label at IoU > 0.5), "
            "false regions per task (predictions to delete), missed regions per task (objects "
            "to draw) and semantic IoU. Brush, polygon and rectangle results alike, each drawn "
            "at its original size.\n"
            "TRUTH is a Label Studio JSON export (the latest non-cancelled annotation of each "
            "task) or a COCO file (images matched to the tasks by file name). The predictions "
            "are --predictions FILE (predict's tasks.json, a Label Studio export with "
            "predictions, or COCO), --model M (predicted here, as 'clipseg-label predict' "
            "does), or else TRUTH's own predictions. Tasks are matched by id, else by image "
            "URL/path, else by image file name; those without a match are listed."
        ),
        epilog=(
            "examples:\n"
            "  clipseg-label evaluate export.json --predictions out/tasks.json --csv tasks.csv\n"
            "  clipseg-label evaluate export.json --model demo --json figures.json\n"
            "  clipseg-label evaluate export.json          # the export's own predictions\n"
            "  clipseg-label evaluate coco.json --predictions out/tasks.json"
        ),
        formatter_class=Formatter,
    )
    p.add_argument(
        "truth", metavar="TRUTH", help="accepted annotations: a Label Studio JSON export or COCO"
    )
    given = p.add_mutually_exclusive_group()
    given.add_argument(
        "--predictions",
        metavar="FILE",
        help="predict's tasks.json, a Label Studio export with predictions, or COCO (default: "
        "TRUTH's predictions)",
    )
    given.add_argument(
        "--model",
        default=None,
        help="run this model (checkpoint directory, hub id or 'demo') on TRUTH's tasks first",
    )
    labels = p.add_mutually_exclusive_group()
    labels.add_argument(
        "--labels",
        help="comma-separated label names: results of other labels are reported and skipped; "
        "with --model, the prompts (default: every label of TRUTH)",
    )
    labels.add_argument(
        "--label-config",
        metavar="FILE",
        help="a Label Studio label config: its labels as --labels; with --model, its prompts, "
        "thresholds and controls as in predict",
    )
    p.add_argument("--json", metavar="PATH", help="write every figure, per label and per task")
    p.add_argument("--csv", metavar="PATH", help="write one row per task (tp, fp, fn, pq, ...)")
    p.add_argument(
        "--model-version",
        default=None,
        help="only predictions of this model_version (default: each task's newest prediction)",
    )
    p.add_argument("--image-key", default=None, help="task data key of the image")
    model = p.add_argument_group("with --model")
    model.add_argument(
        "--threshold",
        type=float,
        default=env.threshold,
        help="probability threshold per pixel (a config's model_score_threshold wins)",
    )
    model.add_argument(
        "--type",
        dest="result_type",
        choices=tuple(RESULT_OPTIONS),
        default="brush",
        help="result type of the predictions without --label-config",
    )
    model.add_argument("--device", default=env.device, help=f"{DEVICES}; env CLIPSEG_DEVICE")
    model.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="keep the predictions there (predict's outputs; running again reuses them); "
        "default: a temporary folder",
    )
    model.add_argument(
        "--images-root",
        metavar="DIR",
        default=None,
        help="folder of a COCO TRUTH's file_names (default: the COCO file's folder)",
    )
    model.add_argument(
        "--local-files-root",
        default=env.local_files_document_root,
        metavar="DIR",
        help="read '/data/local-files/?d=' images from this folder (env LOCAL_FILES_DOCUMENT_ROOT)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no table, only the files")


def _known_labels(args: argparse.Namespace, threshold: float) -> list[str] | None:
    if args.labels:
        names = [s.strip() for s in args.labels.split(",") if s.strip()]
        if not names:
            raise UsageError("--labels needs comma-separated label names")
        return names
    if args.label_config:
        from backend.batch.predict import load_controls

        _, controls = load_controls(None, Path(args.label_config), "brush", threshold)
        return sorted({lab.value for c in controls for lab in c.labels})
    return None


def _predict(args: argparse.Namespace, truth, labels: list[str] | None, out: Path) -> Path:
    """Run the model on the truth's tasks (`backend.batch.predict.predict`); its tasks.json."""
    from backend.batch import evaluate
    from backend.batch import predict as batch_predict

    settings = settings_from(
        model=args.model,
        device=args.device,
        threshold=args.threshold,
        local_files_document_root=args.local_files_root or None,
    )
    images_root = Path(args.images_root) if args.images_root else None
    inputs = evaluate.prediction_inputs(truth, out, images_root)
    prompts = None if args.label_config else (labels or evaluate.truth_labels(truth))
    if not args.label_config and not prompts:
        raise UsageError(f"{args.truth} names no label: give --labels or --label-config")
    summary = batch_predict.predict(
        inputs,
        settings=settings,
        out_dir=out,
        labels=prompts,
        label_config=Path(args.label_config) if args.label_config else None,
        result_type=args.result_type,
        image_key=args.image_key,
        quiet=True,
        words=option_words,
    )
    report_failures(summary.failures, out / "failures.json" if args.out else None)
    return summary.outputs["tasks"]


def _listed(title: str, names: list[str]) -> None:
    if not names:
        return
    print(f"{len(names)} {title}:", file=sys.stderr)
    for name in names[:SHOWN]:
        print(f"  {name}", file=sys.stderr)
    if len(names) > SHOWN:
        print(f"  ... and {len(names) - SHOWN} more", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from backend.batch import evaluate

    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must lie in [0, 1]")
    labels = _known_labels(args, args.threshold)
    truth = evaluate.load_file(args.truth, "annotations", image_key=args.image_key)
    if not truth.tasks:
        raise UsageError(
            f"{args.truth} holds no accepted annotation (every task is unannotated or cancelled)"
        )
    if args.model is None:
        path = args.predictions or args.truth
        predictions = evaluate.load_file(
            path, "predictions", image_key=args.image_key, model_version=args.model_version
        )
    else:
        with tempfile.TemporaryDirectory(prefix="clipseg-evaluate-") as tmp:
            out = Path(args.out) if args.out else Path(tmp)
            tasks = _predict(args, truth, labels, out)
            predictions = evaluate.load_file(
                tasks, "predictions", image_key=args.image_key, model_version=args.model_version
            )
    report = evaluate.evaluate_sides(predictions, truth, labels=labels)
    if not report.matching.pairs:
        raise UsageError(
            f"no task of {predictions.path} matches a task of {args.truth} (by task id, image "
            "URL/path or image file name); pass --image-key if the image is under another key"
        )
    if args.json:
        evaluate.write_json(args.json, report)
    if args.csv:
        evaluate.write_csv(args.csv, report)
    if not args.quiet:
        print(evaluate.format_table(report))
    m = report.matching
    _listed("annotated tasks have no prediction (not evaluated)", [t.name for t in m.truth_only])
    if m.predictions_only:
        print(
            f"{len(m.predictions_only)} predicted tasks have no accepted annotation (not "
            "evaluated)",
            file=sys.stderr,
        )
    if truth.without:
        print(f"{len(truth.without)} tasks of {args.truth} are not annotated", file=sys.stderr)
    _listed("results left out", [str(p) for p in report.problems])
    return EXIT_PARTIAL if report.problems or m.truth_only else EXIT_OK
