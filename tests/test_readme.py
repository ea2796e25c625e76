"""README stays true: its Quick start commands are what CI runs, and every setting is documented."""

import re
from pathlib import Path

from backend.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_quick_start_has_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in command for command in commands)
    run, test = commands
    assert "torch==2.13.0" in run and "clipseg-backend" in run and "CLIPSEG_MODEL=demo" in run
    assert "torch==2.13.0" in test and "pytest" in test


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert quick_start_commands()[1] in ci.splitlines()


def test_torch_is_installed_before_the_project() -> None:
    for command in quick_start_commands():
        project = re.search(r"pip install (-e )?[.\"]", command)
        assert project and command.index("pip install torch==2.13.0") < project.start(), command


def test_every_environment_variable_is_documented() -> None:
    source = (ROOT / "backend" / "settings.py").read_text(encoding="utf-8")
    names = set(re.findall(r'_\w+\(\s*env,\s*"([A-Z_]+)"', source))
    assert {"CLIPSEG_MODEL", "LABEL_STUDIO_URL", "WORKERS", "BASIC_AUTH_PASS"} <= names
    settings_section = README.split("## Settings", 1)[1]
    undocumented = sorted(n for n in names if f"`{n}`" not in settings_section)
    assert not undocumented, f"README's Settings table lacks {undocumented}"


def test_documented_defaults_match_settings() -> None:
    defaults = Settings()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]+)`", README, flags=re.M))
    assert rows["CLIPSEG_MODEL"] == defaults.model
    assert float(rows["CLIPSEG_THRESHOLD"]) == defaults.threshold
    assert int(rows["WORKERS"]) == defaults.workers
    assert int(rows["THREADS"]) == defaults.threads
    assert int(rows["CLIPSEG_MAX_IMAGE_PIXELS"]) == defaults.max_image_pixels
