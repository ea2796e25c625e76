"""`clipseg-label rank`: order tasks by uncertainty, what to label next (`backend.batch.rank`)."""

from __future__ import annotations

import argparse
import sys

from backend.cli.common import (
    EXIT_OK,
    Formatter,
    Subparsers,
    UsageError,
    add_ls_connection,
    connect,
    read_tasks,
    report_unmatched,
)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "rank",
        help="order tasks by uncertainty: what to label next",
        description=(
            "Rank tasks by what to label next. By default (--order coverage) each next task is "
            "the one whose predicted labels the tasks ranked before it cover least, the most "
            "uncertain among equals, so that a batch from the top teaches every label; with "
            "--order uncertainty, most uncertain first. The uncertainty is the one "
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
        formatter_class=Formatter,
    )
    p.add_argument(
        "tasks", metavar="TASKS_JSON", help="tasks.json from predict, or a Label Studio export"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="ranking file: .csv or .json")
    p.add_argument("--top", type=int, default=10, help="rows printed to stdout (0: none)")
    p.add_argument("--image-key", default="image", help="task data key of the image")
    p.add_argument(
        "--order",
        choices=("coverage", "uncertainty"),
        default="coverage",
        help="coverage: least covered labels first, then most uncertain; uncertainty: most "
        "uncertain first",
    )
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
    add_ls_connection(p, required=False)


def run(args: argparse.Namespace) -> int:
    from backend.batch import rank

    if args.push and args.project is None:
        raise UsageError("--push needs --project")
    tasks = read_tasks(args.tasks)
    ranking = rank.rank_tasks(tasks, image_key=args.image_key, order=args.order)
    rank.write_ranking(args.out, ranking)
    for row in ranking[: max(args.top, 0)]:
        value = "-" if row.uncertainty is None else f"{row.uncertainty:.4f}"
        print(f"{row.rank:>5}  {value:>8}  {row.image}")
    if not args.push:
        return EXIT_OK
    from backend.batch import push

    client = connect(args)
    scores = [(r.task_id, r.image, r.uncertainty) for r in ranking if r.uncertainty is not None]
    report = push.push_scores(
        client, args.project, scores, model_version=args.model_version, image_key=args.image_key
    )
    print(
        f"project {args.project}: {report.updated_predictions} prediction scores updated",
        file=sys.stderr,
    )
    return report_unmatched(report.unmatched)
