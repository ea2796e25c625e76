"""`clipseg-label`: pre-label, rank, export and push without a running server.

Argument parsing only; the work is in `backend.batch` (and `backend.formats`). Exit codes:
0 everything done, 1 some images or tasks failed (the rest is written; also a push that Label
Studio stopped part way), 2 usage errors (bad arguments, unreadable inputs, malformed exports or
label configs, a model or device that cannot be used, a Label Studio that cannot be reached or
refuses the first request).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend.controls import RESULT_OPTIONS
from backend.errors import Part, Setting, spell
from backend.settings import Settings, SettingsError

logger = logging.getLogger("clipseg-label")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

_DEVICES = "auto, cpu, cuda or cuda:N"


class UsageError(Exception):
    """Bad arguments or inputs: reported on stderr, exit code 2."""


class _Formatter(argparse.HelpFormatter):
    """Defaults shown (where there is one); descriptions wrapped per line, indented lines
    (examples) kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, "", argparse.SUPPRESS) and "%(default)" not in text:
            if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
                text += " (default: %(default)s)"
        return text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if line.startswith(" ") or not line:
                lines.append(indent + line)
            else:
                lines.append(
                    textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n".join(lines)


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def _defaults() -> Settings:
    """The environment's settings, for the options' defaults; the dataclass defaults when the
    environment holds a bad value (the command then reports it, exit 2)."""
    try:
        return Settings.from_env()
    except SettingsError:
        return Settings()


# ------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The `clipseg-label` argument parser (every subcommand with its help)."""
    parser = argparse.ArgumentParser(
        prog="clipseg-label",
        description=(
            "Batch tools around CLIPSeg for Label Studio, no server needed: pre-label images, "
            "rank tasks by uncertainty, export exact COCO masks, push to a project, and build "
            "exemplar stores."
        ),
        epilog=(
            "Exit codes: 0 done, 1 some images/tasks failed (everything else is written), "
            "2 usage error.\nRun 'clipseg-label <command> --help' for a command's options."
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help="what to do")
    _add_predict(sub)
    _add_push(sub)
    _add_rank(sub)
    _add_export_coco(sub)
    _add_exemplars(sub)
    return parser


def _add_predict(sub: Any) -> None:
    env = _defaults()
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
        formatter_class=_Formatter,
    )
    p.add_argument(
        "inputs",
        nargs="+",
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
        "model_score_threshold and model_skip are honoured as by the backend",
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
    p.add_argument("--device", default=env.device, help=f"{_DEVICES}; env CLIPSEG_DEVICE")
    p.add_argument("--batch-size", type=int, default=4, help="images per model batch")
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
    _add_ls_connection(p, required=False)
    p.add_argument("--recursive", action="store_true", help="search folders recursively")
    p.add_argument("--overlays", action="store_true", help="also write OUT/overlays/*.png")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar and no summary",
    )


def _add_ls_connection(p: argparse.ArgumentParser, required: bool) -> None:
    need = "" if not required else " (required)"
    p.add_argument(
        "--url",
        default=_env("LABEL_STUDIO_URL"),
        help=f"Label Studio URL; env LABEL_STUDIO_URL{need}",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="personal access token or legacy token (default: LABEL_STUDIO_API_KEY, not shown)",
    )


def _add_push(sub: Any) -> None:
    p = sub.add_parser(
        "push",
        help="send predictions (tasks.json) to a Label Studio project",
        description=(
            "Send the predictions of a tasks.json (from 'predict') to a Label Studio project "
            "with label-studio-sdk: as new tasks (--to new: imports the tasks with their "
            "predictions) or onto existing tasks (--to existing: each prediction goes to the "
            "project task with the same data[IMAGE_KEY]; tasks without a match are listed)."
        ),
        epilog="example:\n  clipseg-label push out/tasks.json --project 3 --to existing",
        formatter_class=_Formatter,
    )
    p.add_argument("tasks", metavar="TASKS_JSON", help="tasks.json written by predict")
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--to", choices=("new", "existing"), default="new", help="where predictions go")
    p.add_argument("--image-key", default="image", help="task data key that identifies the image")
    _add_ls_connection(p, required=True)


def _add_rank(sub: Any) -> None:
    p = sub.add_parser(
        "rank",
        help="order tasks by uncertainty: what to label next",
        description=(
            "Rank tasks by the model's uncertainty (most uncertain first). The figure is the one "
            "'predict' stores in meta.clipseg.uncertainty: the mean over labels of the fraction "
            "of candidate pixels (p >= CLIPSEG_UNCERTAIN_LOW) whose probability lies in the "
            "uncertain band [CLIPSEG_UNCERTAIN_LOW, CLIPSEG_UNCERTAIN_HIGH]; for tasks without "
            "it (a Label Studio export), 1 - the mean score of the newest prediction's regions; "
            "tasks with neither come last."
        ),
        epilog=(
            "examples:\n"
            "  clipseg-label rank out/tasks.json --out ranking.csv\n"
            "  clipseg-label rank export.json --out ranking.json --push --project 3"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument(
        "tasks", metavar="TASKS_JSON", help="tasks.json from predict, or a Label Studio export"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="ranking file: .csv or .json")
    p.add_argument("--top", type=int, default=10, help="rows printed to stdout (0: none)")
    p.add_argument("--image-key", default="image", help="task data key of the image")
    p.add_argument(
        "--push",
        action="store_true",
        help="store each task's uncertainty as its predictions' score in Label Studio",
    )
    p.add_argument("--project", type=int, help="Label Studio project id (with --push)")
    p.add_argument(
        "--model-version",
        default=None,
        help="with --push, update only predictions of this model_version (default: the newest "
        "prediction of each task)",
    )
    _add_ls_connection(p, required=False)


def _add_export_coco(sub: Any) -> None:
    p = sub.add_parser(
        "export-coco",
        help="convert a Label Studio JSON export to COCO with exact masks",
        description=(
            "Convert a Label Studio JSON export to a COCO dataset. Brush masks are decoded "
            "exactly (RLE segmentation), polygons and rectangles rasterised; categories are "
            "the label names."
        ),
        epilog="example:\n  clipseg-label export-coco export.json --out coco.json",
        formatter_class=_Formatter,
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


def _add_exemplars(sub: Any) -> None:
    p = sub.add_parser(
        "exemplars",
        help="build or inspect an exemplar store, offline",
        description=(
            "Exemplars are embeddings of annotated regions that the backend mixes into its "
            "prompts. 'build' makes them from a Label Studio export, in the store layout the "
            "backend reads; 'show' lists a store's projects and per-label counts."
        ),
        formatter_class=_Formatter,
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
        formatter_class=_Formatter,
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
    env = _defaults()
    b.add_argument(
        "--model",
        default=env.model,
        help="checkpoint; env CLIPSEG_MODEL",
    )
    b.add_argument("--device", default=env.device, help=f"{_DEVICES}; env CLIPSEG_DEVICE")
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
    _add_ls_connection(b, required=False)
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s = esub.add_parser(
        "show",
        help="list a store's projects, labels and counts",
        description="List the exemplar store: per model and project, the exemplars per label.",
        formatter_class=_Formatter,
    )
    s.add_argument(
        "--store",
        default=env.model_dir,
        metavar="MODEL_DIR",
        help="the backend's MODEL_DIR",
    )
    s.add_argument("--project", default=None, help="only this project")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")


# ----------------------------------------------------------------------------------- commands


def _settings(args: argparse.Namespace, **overrides: Any) -> Any:
    from dataclasses import replace

    from backend.settings import Settings

    base = Settings.from_env()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


#: The option of each setting a loading message names (`backend.loading.Setting`).
_OPTIONS = {"model": "--model", "device": "--device"}


def _option_name(setting: Setting) -> str:
    option = _OPTIONS[setting.field]
    return option if setting.value is None else f"{option} {setting.value}"


def option_words(parts: Sequence[Part]) -> str:
    """A loading message in this command's terms (`--model demo`), without the server's
    advice (docker mounts, `clipseg-backend`)."""
    return spell(parts, _option_name, server=False)


def cmd_predict(args: argparse.Namespace) -> int:
    from backend.batch import run as batch_run

    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must lie in [0, 1]")
    settings = _settings(
        args,
        model=args.model,
        device=args.device,
        threshold=args.threshold,
        region_mode=args.region_mode,
        min_region_area=args.min_area,
        score_mode=args.score,
        label_studio_url=args.url.rstrip("/") or None,
        label_studio_api_key=args.api_key or None,
        local_files_document_root=args.local_files_root or None,
        model_dir=args.store,
    )
    summary = batch_run.predict(
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
    )
    if not args.quiet:
        print(
            f"{summary.done} predicted, {summary.skipped} already done, "
            f"{len(summary.failures)} failed; outputs in {args.out}",
            file=sys.stderr,
        )
    return _report_failures(summary.failures, Path(args.out) / "failures.json")


def _report_failures(failures: Sequence[Any], where: Path | None) -> int:
    """List ``failures`` on stderr: the first 20 when they are all in the file ``where``, every
    one when there is no such file."""
    if not failures:
        return EXIT_OK
    shown = failures if where is None else failures[:20]
    listed = "" if where is None else f" (listed in {where})"
    print(f"{len(failures)} failed{listed}:", file=sys.stderr)
    for f in shown:
        print(f"  {f.ref}: {f.error}", file=sys.stderr)
    if len(failures) > len(shown):
        print(f"  ... and {len(failures) - len(shown)} more", file=sys.stderr)
    return EXIT_PARTIAL


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_tasks(path: str) -> list[dict[str, Any]]:
    from backend.batch.sources import read_export

    tasks = read_export(path)
    bad = [i for i, t in enumerate(tasks) if not isinstance(t, dict)]
    if bad:
        raise UsageError(f"{path}: items {bad[:5]} are not task objects")
    return tasks


def _connect(args: argparse.Namespace) -> Any:
    from backend.batch import push

    try:
        return push.connect(args.url, args.api_key or _env("LABEL_STUDIO_API_KEY"))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def cmd_push(args: argparse.Namespace) -> int:
    from backend.batch import push

    tasks = _read_tasks(args.tasks)
    client = _connect(args)
    if args.to == "new":
        report = push.import_tasks(client, args.project, tasks)
    else:
        report = push.attach_predictions(client, args.project, tasks, image_key=args.image_key)
    print(
        f"project {args.project}: {report.created_tasks} tasks created, "
        f"{report.created_predictions} predictions created",
        file=sys.stderr,
    )
    return _report_unmatched(report.unmatched)


def _report_unmatched(unmatched: Sequence[str]) -> int:
    if not unmatched:
        return EXIT_OK
    print(f"{len(unmatched)} tasks have no match in the project:", file=sys.stderr)
    for ref in unmatched[:20]:
        print(f"  {ref}", file=sys.stderr)
    return EXIT_PARTIAL


def cmd_rank(args: argparse.Namespace) -> int:
    from backend.batch import rank

    if args.push and args.project is None:
        raise UsageError("--push needs --project")
    tasks = _read_tasks(args.tasks)
    ranking = rank.rank_tasks(tasks, image_key=args.image_key)
    rank.write_ranking(args.out, ranking)
    for row in ranking[: max(args.top, 0)]:
        value = "-" if row.uncertainty is None else f"{row.uncertainty:.4f}"
        print(f"{row.rank:>5}  {value:>8}  {row.image}")
    if not args.push:
        return EXIT_OK
    from backend.batch import push

    client = _connect(args)
    scores = [(r.task_id, r.image, r.uncertainty) for r in ranking if r.uncertainty is not None]
    report = push.push_scores(
        client, args.project, scores, model_version=args.model_version, image_key=args.image_key
    )
    print(
        f"project {args.project}: {report.updated_predictions} prediction scores updated",
        file=sys.stderr,
    )
    return _report_unmatched(report.unmatched)


def cmd_export_coco(args: argparse.Namespace) -> int:
    from backend.atomic import write_json_atomic
    from backend.batch.export_coco import labelstudio_to_coco

    problems: list[Any] = []
    try:
        coco = labelstudio_to_coco(
            _read_tasks(args.export),
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


def cmd_exemplars(args: argparse.Namespace) -> int:
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
    settings = _settings(
        args,
        model=args.model,
        device=args.device,
        model_dir=args.store,
        max_exemplars_per_label=args.max_per_label,
        label_studio_url=args.url.rstrip("/") or None,
        label_studio_api_key=args.api_key or None,
    )
    config = _read_text(args.label_config) if args.label_config else None
    try:
        report = exemplar_build.build_store(
            _read_tasks(args.export),
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
    return _report_failures(report.failures, None)


def _report_push_error(done: Any) -> int:
    """Exit 2 when Label Studio could not be reached or refused before anything was written
    (fix the URL, key or project and run again); else say what was written, exit 1."""
    if not done.changed:
        return EXIT_USAGE
    print(
        f"before that: {done.created_tasks} tasks created, {done.created_predictions} "
        f"predictions created, {done.updated_predictions} prediction scores updated",
        file=sys.stderr,
    )
    return EXIT_PARTIAL


_COMMANDS = {
    "predict": cmd_predict,
    "push": cmd_push,
    "rank": cmd_rank,
    "export-coco": cmd_export_coco,
    "exemplars": cmd_exemplars,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `clipseg-label`; returns the exit code (also when called from Python)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from backend.batch.push import PushError
    from backend.errors import LabelConfigError, ModelLoadError, SourceError
    from backend.settings import SettingsError

    prefix = f"clipseg-label {args.command}"
    try:
        return _COMMANDS[args.command](args)
    except ModelLoadError as exc:
        print(f"{prefix}: error: {exc.worded(option_words)}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, SourceError, LabelConfigError, SettingsError) as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PushError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return _report_push_error(exc.report)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
