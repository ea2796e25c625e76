"""`clipseg-label`: pre-label, rank, export and push without a running server.

Argument parsing only; the work is in `backend.batch`, `backend.learning` (and
`backend.formats`). One module per subcommand, its parser beside its command (`add_parser`,
`run`): `predict`, `push`, `rank`, `export_coco`, `exemplars`, `evaluate`, `learn`; what they
share is in `common`. Exit codes: 0 everything done, 1 some images or tasks failed (the rest is
written; also a push that Label Studio stopped part way; results or tasks evaluate or learn had
to leave out), 2 usage errors (bad arguments, unreadable
inputs, malformed exports or label configs, a model or device that cannot be used, a Label Studio
that cannot be reached or refuses the first request).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from backend.cli import evaluate, exemplars, export_coco, learn, predict, push, rank
from backend.cli.common import EXIT_PARTIAL, EXIT_USAGE, Formatter, UsageError, option_words

if TYPE_CHECKING:
    from backend.batch.push import PushReport

__all__ = ["build_parser", "main"]

#: The subcommands, in the order --help lists them.
COMMANDS = {
    "predict": predict,
    "push": push,
    "rank": rank,
    "export-coco": export_coco,
    "exemplars": exemplars,
    "evaluate": evaluate,
    "learn": learn,
}


def build_parser() -> argparse.ArgumentParser:
    """The `clipseg-label` argument parser (every subcommand with its help)."""
    parser = argparse.ArgumentParser(
        prog="clipseg-label",
        description=(
            "Batch tools around CLIPSeg for Label Studio, no server needed: pre-label images, "
            "rank tasks by uncertainty, export exact COCO masks, push to a project, build "
            "exemplar stores, and measure predictions against accepted annotations."
        ),
        epilog=(
            "Exit codes: 0 done, 1 some images/tasks failed (everything else is written), "
            "2 usage error.\nRun 'clipseg-label <command> --help' for a command's options."
        ),
        formatter_class=Formatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help="what to do")
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def _report_push_error(done: PushReport) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `clipseg-label`; returns the exit code (also when called from Python)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from backend.batch.push import PushError
    from backend.errors import EngineError, LabelConfigError, ModelLoadError, SourceError
    from backend.settings import SettingsError

    prefix = f"clipseg-label {args.command}"
    try:
        return COMMANDS[args.command].run(args)
    except ModelLoadError as exc:
        print(f"{prefix}: error: {exc.worded(option_words)}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, SourceError, LabelConfigError, SettingsError, EngineError) as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PushError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return _report_push_error(exc.report)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
