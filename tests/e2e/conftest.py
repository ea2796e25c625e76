"""Fixtures of the end-to-end tests: the Label Studio venv, one running Label Studio per token
mode, a process registry, a work dir.

``label_studio`` is session-scoped and parametrized by token mode: every test that takes it runs
once per mode, and pytest groups those tests by mode, so each mode's Label Studio starts once per
session and only one runs at a time. Every process goes through a :class:`ProcessRegistry`
(``processes`` per test, one per Label Studio) whose finalizer stops them by process group, also
when a test fails; an ``atexit`` hook in the harness stops whatever is left when the run is
interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .label_studio import (
    TOKEN_MODES,
    LabelStudio,
    LabelStudioUnavailable,
    ProcessRegistry,
    StepTimer,
    ensure_db_template,
    ensure_label_studio,
    find_browser,
    new_registry,
    start_label_studio,
    venv_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts" / "e2e"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def ls_venv() -> Path:
    """The Label Studio venv, installed on first use; CI fails without it, elsewhere we skip."""
    venv = venv_dir()
    try:
        ensure_label_studio(venv)
    except LabelStudioUnavailable as exc:
        message = (
            f"cannot install Label Studio into {venv} (set CLIPSEG_E2E_LS_VENV to use another "
            f"location; pip needs access to PyPI): {exc}"
        )
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return venv


@pytest.fixture(scope="session")
def browser() -> tuple[Path, Path]:
    """(chromium, chromedriver), checked before anything starts; CI fails without them."""
    try:
        return find_browser()
    except FileNotFoundError as exc:
        if _in_ci():
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def ls_template_db(ls_venv: Path) -> Path:
    """A migrated, empty Label Studio database (built once per venv) to seed fresh data dirs."""
    return ensure_db_template(ls_venv)


LS_START_TIMEOUT = 600.0  # the first start on a busy 2-core machine runs migrations


@pytest.fixture(scope="session")
def ls_docroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LOCAL_FILES_DOCUMENT_ROOT of every Label Studio (and backend) of the session; each test
    writes its images into its own subfolder."""
    return tmp_path_factory.mktemp("ls-docroot")


@pytest.fixture(scope="session", params=TOKEN_MODES)
def label_studio(
    request: pytest.FixtureRequest,
    ls_venv: Path,
    ls_template_db: Path,
    ls_docroot: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LabelStudio]:
    """A running Label Studio in token mode ``request.param`` (``legacy`` or ``pat``) on a fresh
    data dir, started once per session and stopped (by PID) after the mode's last test."""
    mode = request.param
    reg = new_registry()
    started = time.monotonic()
    try:
        ls = start_label_studio(
            reg,
            ls_venv,
            mode,
            tmp_path_factory.mktemp(f"ls-{mode}"),
            ls_docroot,
            ls_template_db,
            LS_START_TIMEOUT,
        )
        _REPORT.append(f"label studio [{mode}] up in {time.monotonic() - started:.1f} s")
        yield ls
    finally:
        reg.stop_all()


@pytest.fixture
def processes() -> Iterator[ProcessRegistry]:
    """Processes started by one test; all stopped (by PID / process group) at teardown."""
    reg = new_registry()
    try:
        yield reg
    finally:
        reg.stop_all()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """./artifacts/e2e (gitignored): screenshots and JSON kept for CI."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


_REPORT: list[str] = []


@pytest.fixture(scope="session")
def e2e_report() -> list[str]:
    """Lines (measured IoUs, wall times, screenshot paths) printed in pytest's terminal summary,
    so they show up in CI logs whether or not output capture is on."""
    return _REPORT


@pytest.fixture
def step_timer(request: pytest.FixtureRequest, e2e_report: list[str]) -> Iterator[StepTimer]:
    """A StepTimer for the test; its wall time goes into the report at teardown."""
    timer = StepTimer(request.node.name)
    yield timer
    e2e_report.append(timer.summary())
    print(f"\n[e2e] {timer.summary()}", flush=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "token_mode(mode, reason=...): run the test against that token mode's Label Studio only",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a ``token_mode``-marked test in the other modes before its fixtures are set up (no
    backend started, no empty wall time in the report)."""
    marker = item.get_closest_marker("token_mode")
    callspec = getattr(item, "callspec", None)
    if marker is None or callspec is None or "label_studio" not in callspec.params:
        return
    if callspec.params["label_studio"] not in marker.args:
        why = marker.kwargs.get("reason", "")
        pytest.skip(
            f"runs in the {'/'.join(marker.args)} token mode only" + (f": {why}" if why else "")
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT:
        terminalreporter.section("clipseg e2e")
        for line in _REPORT:
            terminalreporter.write_line(line)
