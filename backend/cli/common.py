"""What the `clipseg-label` subcommands share: exit codes, the usage error, the help format,
the defaults read from the environment, the Label Studio options, and the wording of loading
messages in the command's terms (`--model demo`, not the server's CLIPSEG_MODEL=demo)."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.errors import Part, Setting, spell
from backend.settings import Settings, SettingsError

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

    from backend.batch.outputs import Failure

#: What `add_parser` of a subcommand adds its parser to.
Subparsers = argparse._SubParsersAction

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

DEVICES = "auto, cpu, cuda or cuda:N"


class UsageError(Exception):
    """Bad arguments or inputs: reported on stderr, exit code 2."""


class Formatter(argparse.HelpFormatter):
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


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def defaults() -> Settings:
    """The environment's settings, for the options' defaults; the dataclass defaults when the
    environment holds a bad value (the command then reports it, exit 2)."""
    try:
        return Settings.from_env()
    except SettingsError:
        return Settings()


def add_ls_connection(p: argparse.ArgumentParser, required: bool) -> None:
    need = "" if not required else " (required)"
    p.add_argument(
        "--url",
        default=env("LABEL_STUDIO_URL"),
        help=f"Label Studio URL; env LABEL_STUDIO_URL{need}",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="personal access token or legacy token (default: LABEL_STUDIO_API_KEY, not shown)",
    )


def settings_from(**overrides: Any) -> Settings:
    """The environment's settings with the options given (None: not given) in their place."""
    base = Settings.from_env()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


#: The option of each setting a loading message names (`backend.errors.Setting`).
_OPTIONS = {
    "model": "--model",
    "device": "--device",
    "tile_size": "--tile-size",
    "tile_overlap": "--tile-overlap",
}


def _option_name(setting: Setting) -> str:
    option = _OPTIONS[setting.field]
    return option if setting.value is None else f"{option} {setting.value}"


def option_words(parts: Sequence[Part]) -> str:
    """A loading message in this command's terms (`--model demo`), without the server's
    advice (docker mounts, `clipseg-backend`)."""
    return spell(parts, _option_name, server=False)


def report_failures(failures: Sequence[Failure], where: Path | None) -> int:
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


def report_unmatched(unmatched: Sequence[str]) -> int:
    if not unmatched:
        return EXIT_OK
    print(f"{len(unmatched)} tasks have no match in the project:", file=sys.stderr)
    for ref in unmatched[:20]:
        print(f"  {ref}", file=sys.stderr)
    return EXIT_PARTIAL


def read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_tasks(path: str) -> list[dict[str, Any]]:
    from backend.batch.sources import read_export

    tasks = read_export(path)
    bad = [i for i, t in enumerate(tasks) if not isinstance(t, dict)]
    if bad:
        raise UsageError(f"{path}: items {bad[:5]} are not task objects")
    return tasks


def connect(args: argparse.Namespace) -> LabelStudio:
    """The label-studio-sdk client of ``--url`` / ``--api-key`` (`backend.ls_client.sdk_client`);
    a missing or unusable one is a UsageError."""
    from backend import ls_client

    try:
        return ls_client.sdk_client(args.url, args.api_key or env("LABEL_STUDIO_API_KEY"))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
