"""`clipseg-label learn`: learn a project's labels from its annotations, into the backend's store
(`backend.learning`), and list, pin or roll back its learned states."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.cli.common import (
    DEVICES,
    EXIT_OK,
    EXIT_PARTIAL,
    Formatter,
    Subparsers,
    UsageError,
    defaults,
    option_words,
    settings_from,
)

if TYPE_CHECKING:
    from backend.model import CLIPSegBackend

#: Problems listed on stderr (all of them are in --json).
SHOWN = 20


def add_parser(sub: Subparsers) -> None:
    env = defaults()
    p = sub.add_parser(
        "learn",
        help="learn a project's labels from a Label Studio export into the backend's store",
        description=(
            "Train a learned state for project P from the accepted annotations of a Label "
            "Studio JSON export, into the store under --store (the backend's MODEL_DIR), "
            "which the backend serves from the next prediction on. A quarter of the annotated "
            "tasks is held out; the new state is promoted only when its validation PQ is above "
            "the serving state's, else it is kept as rejected with its figures. With --list, "
            "--pin, --unpin or --rollback, it manages the states instead (docs/learning.md)."
        ),
        epilog=(
            "examples:\n"
            "  clipseg-label learn --export export.json --label-config config.xml "
            "--model demo --store ./model_dir --project 3\n"
            "  clipseg-label learn --model demo --store ./model_dir --project 3 --list\n"
            "  clipseg-label learn --model demo --store ./model_dir --project 3 --rollback"
        ),
        formatter_class=Formatter,
    )
    p.add_argument("--export", metavar="FILE", help="Label Studio JSON export with annotations")
    p.add_argument(
        "--model", default=env.model, help="checkpoint directory, hub id or 'demo' (CLIPSEG_MODEL)"
    )
    p.add_argument(
        "--store",
        metavar="DIR",
        default=env.model_dir,
        help="the backend's MODEL_DIR (learned states go under DIR/learning/)",
    )
    p.add_argument("--project", required=True, help="Label Studio project id")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument(
        "--label-config",
        metavar="FILE",
        help="the project's label config (its control names must be the project's for the "
        "backend to use the state)",
    )
    labels.add_argument(
        "--labels", help="comma-separated labels of one BrushLabels control (without a config)"
    )
    p.add_argument(
        "--images-root",
        metavar="DIR",
        default=None,
        help="find each task's image in DIR by its file name (default: the image reference as "
        "it is: a path, a URL, or /data/local-files/ under --local-files-root)",
    )
    p.add_argument(
        "--local-files-root",
        default=env.local_files_document_root,
        metavar="DIR",
        help="read '/data/local-files/?d=' images from this folder (env LOCAL_FILES_DOCUMENT_ROOT)",
    )
    p.add_argument("--image-key", default=None, help="task data key of the image")
    p.add_argument("--device", default=env.device, help=f"{DEVICES}; env CLIPSEG_DEVICE")
    p.add_argument("--json", metavar="PATH", help="write the run's record (or the listing)")
    manage = p.add_mutually_exclusive_group()
    manage.add_argument("--list", action="store_true", help="list the project's learned states")
    manage.add_argument(
        "--pin",
        metavar="ID",
        help="serve state ID (or 'base') until --unpin, whatever training finds",
    )
    manage.add_argument("--unpin", action="store_true", help="let training promote again")
    manage.add_argument(
        "--rollback",
        action="store_true",
        help="serve the state served before the current one (pinned)",
    )


def _store(args: argparse.Namespace):
    from backend.model import CLIPSegBackend

    settings = settings_from(model=args.model, device=args.device, model_dir=args.store)
    backend = CLIPSegBackend.load(settings, option_words)
    return backend


def _project(args: argparse.Namespace) -> str:
    from backend.exemplars import project_key

    try:
        return project_key(args.project)
    except ValueError as exc:
        raise UsageError(f"--project: {exc}") from exc


def _listing(backend: CLIPSegBackend, project: str) -> dict[str, Any]:
    store = backend.learned
    return {
        "project": project,
        "model_version": backend.model_version(project),
        "serving": store.serving_id(project) or "base",
        "pinned": store.pinned(project),
        "runs": store.runs(project),
    }


def _print_listing(listing: dict[str, Any]) -> None:
    pinned = " (pinned)" if listing["pinned"] else ""
    print(f"project {listing['project']}: serving {listing['serving']}{pinned}")
    print(f"model_version {listing['model_version']}")
    for run in listing["runs"]:
        v = run.get("validation", {})
        new, serving = v.get("new", {}), v.get("serving", {})
        verdict = "promoted" if run.get("promoted") else "rejected"
        print(
            f"  {run['id']}  {run.get('created', '')}  {verdict:8}  "
            f"validation PQ {new.get('pq', float('nan')):.3f} "
            f"(serving {serving.get('pq', float('nan')):.3f}), "
            f"{run.get('train_tasks', 0)}+{run.get('validation_tasks', 0)} tasks: "
            f"{run.get('reason', '')}"
        )


def _write_json(path: str | None, data: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=1), encoding="utf-8")


def _image_reader(args: argparse.Namespace, settings: Any, export: Path):
    from backend.batch.sources import ImageSource, SourceReader, is_url

    reader = SourceReader(settings)
    root = Path(args.images_root) if args.images_root else None

    def read(task: Any):
        ref = task.image
        if ref is None:
            raise OSError("the task has no image reference")
        if root is not None:
            source = ImageSource(ref=str((root / (task.file_name or ref)).resolve()))
        elif is_url(ref) or ref.startswith("/data/"):
            source = ImageSource(ref=ref, task={"id": task.task_id, "data": dict(task.data or {})})
        else:
            source = ImageSource(ref=str((export.parent / ref).resolve()))
        with reader.read(source) as image:
            return image.array

    return read


def run(args: argparse.Namespace) -> int:
    from backend.batch.predict import load_controls
    from backend.learning.annotations import read_annotated, to_examples
    from backend.learning.trainer import run_training

    project = _project(args)
    manage = args.list or args.pin or args.unpin or args.rollback
    if not manage and not args.export:
        raise UsageError("give --export FILE to learn from, or --list/--pin/--unpin/--rollback")
    if manage and args.export:
        raise UsageError("--export trains; --list/--pin/--unpin/--rollback manage: one at a time")
    if args.export and not (args.label_config or args.labels):
        raise UsageError("give the project's --label-config FILE (or --labels for one control)")
    if args.export:  # read before the model loads: a bad file is a quick usage error
        side = read_annotated(args.export, args.image_key)
        if not side.tasks:
            raise UsageError(f"{args.export} holds no accepted annotation")
        labels = [s.strip() for s in (args.labels or "").split(",") if s.strip()] or None
        config_path = Path(args.label_config) if args.label_config else None
        _, controls = load_controls(labels, config_path, "brush", defaults().threshold)
    backend = _store(args)
    store = backend.learned
    if args.pin:
        store.pin(project, args.pin)
    elif args.unpin:
        store.unpin(project)
    elif args.rollback:
        store.rollback(project)
    if manage:
        listing = _listing(backend, project)
        _print_listing(listing)
        _write_json(args.json, listing)
        return EXIT_OK
    settings = settings_from(local_files_document_root=args.local_files_root or None)
    read = _image_reader(args, settings, Path(args.export))
    known = {lab.value for c in controls for lab in c.labels}
    examples, problems = to_examples(side.tasks, read, known, str(args.export))
    for problem in problems[:SHOWN]:
        print(f"skipped: {problem}")
    if len(problems) > SHOWN:
        print(f"... and {len(problems) - SHOWN} more problems (all of them in --json)")
    stored = backend.store.embeddings(project)
    with backend.trainer.exclusive(project) as free:  # never beside the backend's own run
        if not free:
            raise UsageError(
                f"project {project} is being trained by the backend on this store; try again "
                "when GET /learning/<project> says idle"
            )
        try:
            record = run_training(backend.segmenter, controls, examples, stored, store, project)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    record["problems"] = [str(p) for p in problems]
    v = record["validation"]
    print(
        f"project {project}: {len(examples)} annotated tasks "
        f"({record['train_tasks']} to train, {record['validation_tasks']} held out)"
    )
    for name in ("base", "serving", "new"):
        f = v[name]
        print(
            f"  {name:8} validation PQ {f['pq']:.3f}  SQ {f['sq']:.3f}  RQ {f['rq']:.3f}  "
            f"false/task {f['false_per_task']:.2f}  missed/task {f['missed_per_task']:.2f}"
        )
    verdict = "promoted" if record["promoted"] else "kept as rejected"
    print(f"state {record['id']} {verdict}: {record['reason']}")
    print(f"model_version {backend.model_version(project)}")
    _write_json(args.json, record)
    return EXIT_PARTIAL if problems else EXIT_OK
