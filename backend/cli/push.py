"""`clipseg-label push`: send the predictions of a tasks.json to a Label Studio project
(`backend.batch.push`)."""

from __future__ import annotations

import argparse
import sys

from backend.cli.common import (
    Formatter,
    Subparsers,
    add_ls_connection,
    connect,
    read_tasks,
    report_unmatched,
)


def add_parser(sub: Subparsers) -> None:
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
        formatter_class=Formatter,
    )
    p.add_argument("tasks", metavar="TASKS_JSON", help="tasks.json written by predict")
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--to", choices=("new", "existing"), default="new", help="where predictions go")
    p.add_argument("--image-key", default="image", help="task data key that identifies the image")
    add_ls_connection(p, required=True)


def run(args: argparse.Namespace) -> int:
    from backend.batch import push

    tasks = read_tasks(args.tasks)
    client = connect(args)
    if args.to == "new":
        report = push.import_tasks(client, args.project, tasks)
    else:
        report = push.attach_predictions(client, args.project, tasks, image_key=args.image_key)
    print(
        f"project {args.project}: {report.created_tasks} tasks created, "
        f"{report.created_predictions} predictions created",
        file=sys.stderr,
    )
    return report_unmatched(report.unmatched)
