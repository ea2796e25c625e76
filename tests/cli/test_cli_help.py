"""`clipseg-label --help` is complete: every subcommand and option has help, defaults shown."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from backend.cli import build_parser, main

COMMANDS = [
    ["predict"],
    ["push"],
    ["rank"],
    ["export-coco"],
    ["exemplars"],
    ["exemplars", "build"],
    ["exemplars", "show"],
    ["evaluate"],
]


def _subparser(words: list[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in words:
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = action.choices[word]
    return parser


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_every_option_has_help_and_shows_its_default(words, capsys):
    parser = _subparser(words)
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert parser.description and parser.description.split()[0] in text
    for action in parser._actions:
        assert action.help, f"{' '.join(words)}: {action.dest} has no help"
        for flag in action.option_strings:
            assert flag in text
        has_default = action.default not in (None, False, argparse.SUPPRESS, "")
        if action.option_strings and has_default and action.dest != "help":
            # argparse wraps lines (also at hyphens): compare without whitespace
            want = "".join(f"(default: {action.default})".split())
            assert want in "".join(text.split()), action.dest


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("predict", "push", "rank", "export-coco", "exemplars", "evaluate"):
        assert command in text
    assert "Exit codes" in text


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(tmp_path)])  # no --out, no labels
    assert exit_info.value.code == 2
    assert main(["predict", str(tmp_path / "missing"), "--labels", "a", "--out", "o"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_api_key_default_is_not_shown(monkeypatch, capsys):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret-token-xyz")
    with pytest.raises(SystemExit):
        main(["push", "--help"])
    assert "secret-token-xyz" not in "".join(capsys.readouterr().out.split())


DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _required_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = {
        f for a in parser._actions if a.required and a.option_strings for f in a.option_strings
    }
    for group in parser._mutually_exclusive_groups:
        if group.required:
            flags |= {f for a in group._group_actions for f in a.option_strings}
    return {f for f in flags if f.startswith("--")}


def test_docs_synopsis_shows_exactly_the_required_options():
    """docs/cli.md's synopsis: options outside [...] are the required ones, and exist."""
    block = DOCS.read_text().split("```", 2)[1]
    lines = [ln for ln in block.splitlines() if ln.startswith("clipseg-label ")]
    assert len(lines) == len(COMMANDS) - 1  # 'exemplars' alone has no line
    for line in lines:
        words = line.split()[1:]
        command = words[:2] if words[0] == "exemplars" else words[:1]
        parser = _subparser(command)
        known = {f for a in parser._actions for f in a.option_strings}
        shown = set(re.findall(r"--[a-z-]+", line))
        outside = set(re.findall(r"--[a-z-]+", re.sub(r"\[[^\]]*\]", "", line)))
        assert shown <= known, (line, shown - known)
        assert outside == _required_flags(parser), line


def test_docs_name_the_file_that_lists_the_settings():
    text = " ".join(DOCS.read_text().split())
    match = re.search(
        r"Settings come from the same environment variables as the backend \(([^)]*)\)", text
    )
    assert match, "the settings sentence of docs/cli.md"
    where = match[1]
    assert where == "README.md's Settings table"
    readme = (DOCS.parents[1] / "README.md").read_text()
    table = readme[readme.index("## Settings") :].split("\n## ", 1)[0]
    sentence = text[match.end() : text.index("a command-line option wins")]
    names = re.findall(r"`([A-Z_]+)(?:/([A-Z]+))?`", sentence)
    assert len(names) >= 10
    for name, other in names:
        assert f"`{name}`" in table, name
        if other:
            assert f"`{name.rsplit('_', 1)[0]}_{other}`" in table, other
