"""`clipseg-label --help` is complete: every subcommand and option has help, defaults shown."""

from __future__ import annotations

import argparse

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
    for command in ("predict", "push", "rank", "export-coco", "exemplars"):
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
