"""Harness for the end-to-end test: a real Label Studio, our backend, and headless Chromium.

Everything here is plumbing, no assertions about our code:

- :func:`ensure_label_studio` installs ``label-studio==LS_VERSION`` into its own virtual
  environment (reused between runs; a marker file is written only after pip succeeded) and
  :func:`ensure_db_template` keeps a migrated, user-less SQLite database next to it, so that each
  run starts from a fresh data directory without paying the ~1 min of migrations again.
- :class:`ProcessRegistry` starts every child in its own process group and stops them by PID
  (SIGTERM to the group, then SIGKILL), from fixture finalizers and, as a last resort, at exit.
- :func:`start_label_studio` starts Label Studio on loopback with no outbound traffic
  (no Sentry, no analytics, no version check) in one of two token modes, :class:`LSClient` talks
  to its REST API with a legacy token or a personal access token (JWT refresh -> Bearer access).
- :class:`WebDriver` is a minimal W3C WebDriver client over ``requests`` for chromedriver
  (no selenium: nothing to download, nothing to keep in step with the browser).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

logger = logging.getLogger(__name__)

LS_VERSION = "1.23.2"
VENV_ENV_VAR = "CLIPSEG_E2E_LS_VENV"
DEFAULT_VENV = Path.home() / ".cache" / "clipseg-e2e" / "ls-venv"
MARKER_NAME = ".clipseg-e2e-complete"
TEMPLATE_DIR_NAME = "clipseg-e2e-db-template"
CHROMIUM_ENV_VAR = "CLIPSEG_E2E_CHROMIUM"
CHROMEDRIVER_ENV_VAR = "CLIPSEG_E2E_CHROMEDRIVER"

USERNAME = "e2e@example.com"
PASSWORD = "e2e-password-1234"
LEGACY_TOKEN = "clipsege2elegacytoken0123456789abcdef0123"

TOKEN_MODES = ("legacy", "pat")


class LabelStudioUnavailable(RuntimeError):
    """Label Studio could not be installed (typically: no access to PyPI)."""


# ---------------------------------------------------------------------------------------------
# installation


def venv_dir() -> Path:
    """The Label Studio venv: $CLIPSEG_E2E_LS_VENV, else ~/.cache/clipseg-e2e/ls-venv."""
    raw = os.environ.get(VENV_ENV_VAR, "").strip()
    return Path(raw).expanduser() if raw else DEFAULT_VENV


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two test runs never install into the same venv at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _marker_ok(marker: Path) -> bool:
    return marker.is_file() and marker.read_text().strip() == LS_VERSION


def ensure_label_studio(venv: Path | None = None, timeout: float = 1800.0) -> Path:
    """Install ``label-studio==LS_VERSION`` into ``venv`` unless a complete install is there.

    Returns the path of the ``label-studio`` executable. A complete install is one whose marker
    file holds LS_VERSION; the marker is written only after ``pip install`` exited with 0, so an
    interrupted install is resumed (pip skips what is already there) on the next run. Raises
    :class:`LabelStudioUnavailable` with pip's output tail when the install fails.
    """
    venv = venv or venv_dir()
    marker = venv / MARKER_NAME
    exe = venv / "bin" / "label-studio"
    if _marker_ok(marker) and exe.exists():
        return exe
    with _file_lock(venv.parent / (venv.name + ".lock")):
        if _marker_ok(marker) and exe.exists():
            return exe
        log = venv.parent / (venv.name + "-install.log")
        started = time.monotonic()
        logger.warning("installing label-studio==%s into %s (log: %s)", LS_VERSION, venv, log)
        print(f"[e2e] installing label-studio=={LS_VERSION} into {venv} (log: {log})", flush=True)
        with open(log, "a") as out:
            if not (venv / "bin" / "python").exists():
                _run_logged([sys.executable, "-m", "venv", str(venv)], out, timeout)
            _run_logged(
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    f"label-studio=={LS_VERSION}",
                ],
                out,
                timeout,
            )
        if not exe.exists():
            raise LabelStudioUnavailable(f"pip succeeded but {exe} is missing; see {log}")
        marker.write_text(LS_VERSION + "\n")
        print(f"[e2e] label-studio installed in {time.monotonic() - started:.0f} s", flush=True)
    return exe


def _run_logged(cmd: list[str], out: Any, timeout: float) -> None:
    out.write(f"\n$ {' '.join(cmd)}\n")
    out.flush()
    try:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise LabelStudioUnavailable(f"{cmd[2:]} took longer than {timeout:.0f} s") from exc
    if proc.returncode != 0:
        out.flush()
        tail = _tail(Path(out.name), 30)
        raise LabelStudioUnavailable(
            f"{' '.join(cmd[-3:])} failed with exit code {proc.returncode}; last lines of "
            f"{out.name}:\n{tail}"
        )


def _ls_env(data_dir: Path, docroot: Path) -> dict[str, str]:
    """Environment for Label Studio: loopback only, nothing phones home, local files served."""
    env = {
        k: v
        for k, v in os.environ.items()
        # our own backend's and the SDK's variables must not leak into Label Studio's settings
        if not k.startswith(("LABEL_STUDIO_", "HEARTEX_", "CLIPSEG_", "DJANGO_"))
        and k not in ("HOST", "PORT", "USERNAME", "PASSWORD", "USER_TOKEN", "DATABASE_NAME")
        # the test's interpreter must not leak into Label Studio's venv
        and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        COLLECT_ANALYTICS="false",
        LATEST_VERSION_CHECK="false",
        LOCAL_FILES_SERVING_ENABLED="true",
        LOCAL_FILES_DOCUMENT_ROOT=str(docroot),
        PYTHONUNBUFFERED="1",
    )
    return env


def ensure_db_template(venv: Path, timeout: float = 900.0) -> Path:
    """A migrated Label Studio SQLite database with no user or organization, built once per venv.

    ``label-studio init --quiet`` runs every migration (about a minute, more on a busy machine)
    and creates no user when no username is given. Copying this file into a fresh data directory
    makes the next start skip the migrations; the user, the organization and its token settings
    are still created by ``label-studio start``, so each run starts empty.
    """
    tdir = venv / TEMPLATE_DIR_NAME
    db = tdir / "label_studio.sqlite3"
    marker = tdir / MARKER_NAME
    if _marker_ok(marker) and db.is_file():
        return db
    with _file_lock(venv.parent / (venv.name + ".lock")):
        if _marker_ok(marker) and db.is_file():
            return db
        work = tdir.with_name(TEMPLATE_DIR_NAME + ".partial")
        if work.exists():
            _rmtree(work)
        work.mkdir(parents=True)
        started = time.monotonic()
        print("[e2e] migrating a template Label Studio database (once per venv)", flush=True)
        log = work / "init.log"
        with open(log, "w") as out:
            proc = subprocess.run(
                [str(venv / "bin" / "label-studio"), "init", "--quiet", "--data-dir", str(work)],
                env=_ls_env(work, work),
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                start_new_session=True,
            )
        if proc.returncode != 0 or not (work / "label_studio.sqlite3").is_file():
            raise RuntimeError(
                f"label-studio init failed (exit {proc.returncode}):\n{_tail(log, 40)}"
            )
        if tdir.exists():
            _rmtree(tdir)
        tdir.mkdir()
        os.replace(work / "label_studio.sqlite3", db)
        marker.write_text(LS_VERSION + "\n")
        _rmtree(work)
        print(f"[e2e] template database ready in {time.monotonic() - started:.0f} s", flush=True)
    return db


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=False)


# ---------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(lines[-n:])


@dataclass
class ManagedProcess:
    """A child started in its own session (process group == its PID), output to ``log``."""

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 40) -> str:
        return _tail(self.log, n)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, wait up to ``grace`` s, then SIGKILL it; reap the child."""
        pgid = self.popen.pid  # start_new_session=True: the child leads its own group
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not _group_alive(pgid):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ProcessRegistry:
    """Every process the e2e test started; :meth:`stop_all` stops them in reverse order."""

    procs: list[ManagedProcess] = field(default_factory=list)

    def start(
        self, name: str, cmd: list[str], *, env: Mapping[str, str], cwd: Path, log: Path
    ) -> ManagedProcess:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # noqa: SIM115 - owned by the child; closed after Popen
        try:
            popen = subprocess.Popen(
                cmd,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        proc = ManagedProcess(name, popen, log)
        self.procs.append(proc)
        print(f"[e2e] started {name} (pid {proc.pid}, log {log})", flush=True)
        return proc

    def stop(self, proc: ManagedProcess) -> None:
        if proc in self.procs:
            self.procs.remove(proc)
        proc.stop()

    def stop_all(self) -> None:
        while self.procs:
            proc = self.procs.pop()
            try:
                proc.stop()
            except Exception:  # keep stopping the others, report this one
                logger.exception("could not stop %s (pid %d)", proc.name, proc.pid)


_REGISTRIES: list[ProcessRegistry] = []


def _stop_everything() -> None:
    for reg in _REGISTRIES:
        reg.stop_all()


atexit.register(_stop_everything)


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (a CI runner cancelling the job): stop our children, then die of the signal."""
    _stop_everything()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def new_registry() -> ProcessRegistry:
    """A registry whose processes are also stopped when the interpreter exits (Ctrl-C raises
    KeyboardInterrupt: pytest runs the finalizers, atexit catches the rest) or gets SIGTERM."""
    reg = ProcessRegistry()
    _REGISTRIES.append(reg)
    if (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        and threading.current_thread() is threading.main_thread()
    ):
        signal.signal(signal.SIGTERM, _on_sigterm)
    return reg


def wait_http(
    url: str,
    proc: ManagedProcess | None,
    timeout: float,
    ok: Callable[[requests.Response], bool] = lambda r: r.status_code == 200,
) -> requests.Response:
    """Poll GET ``url`` until ``ok``; fail early (with the log tail) if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode} before {url} answered; "
                f"last lines of {proc.log}:\n{proc.tail()}"
            )
        try:
            r = requests.get(url, timeout=5)
            if ok(r):
                return r
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.5)
    tail = f"; last lines of {proc.log}:\n{proc.tail()}" if proc is not None else ""
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s ({last}){tail}")


# ---------------------------------------------------------------------------------------------
# Label Studio


@dataclass
class LabelStudio:
    """A running Label Studio: its URL, the admin's credentials and the API token of the mode."""

    url: str
    port: int
    mode: str
    proc: ManagedProcess
    data_dir: Path
    docroot: Path
    api_key: str  # what a client puts in LABEL_STUDIO_API_KEY: legacy token or PAT
    client: LSClient


def start_label_studio(
    reg: ProcessRegistry,
    venv: Path,
    mode: str,
    workdir: Path,
    docroot: Path,
    template_db: Path | None,
    timeout: float = 600.0,
) -> LabelStudio:
    """Start Label Studio on 127.0.0.1:<free port> with a fresh data dir under ``workdir``.

    ``mode="legacy"``: the organization is created with legacy tokens enabled and the admin's
    legacy token is LEGACY_TOKEN. ``mode="pat"``: legacy tokens stay disabled; a personal access
    token is created headless through the login form and /api/token/.
    """
    if mode not in TOKEN_MODES:
        raise ValueError(f"unknown token mode {mode!r}; use one of {TOKEN_MODES}")
    import shutil

    data_dir = workdir / f"ls-data-{mode}"
    data_dir.mkdir(parents=True)
    if template_db is not None:
        shutil.copyfile(template_db, data_dir / "label_studio.sqlite3")
    port = free_port()
    cmd = [
        str(venv / "bin" / "label-studio"),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--username",
        USERNAME,
        "--password",
        PASSWORD,
    ]
    if mode == "legacy":
        cmd += ["--user-token", LEGACY_TOKEN, "--enable-legacy-api-token"]
    started = time.monotonic()
    proc = reg.start(
        f"label-studio[{mode}]",
        cmd,
        env=_ls_env(data_dir, docroot),
        cwd=workdir,
        log=workdir / f"label-studio-{mode}.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc, timeout)
    version = requests.get(url + "/api/version/", timeout=10).json()
    if version.get("release") != LS_VERSION:
        raise RuntimeError(f"expected Label Studio {LS_VERSION}, {url}/api/version/ says {version}")
    print(
        f"[e2e] label-studio[{mode}] up at {url} in {time.monotonic() - started:.0f} s", flush=True
    )
    if mode == "legacy":
        api_key = LEGACY_TOKEN
    else:
        api_key = create_personal_access_token(url, USERNAME, PASSWORD)
    client = LSClient(url, api_key, mode)
    return LabelStudio(url, port, mode, proc, data_dir, docroot, api_key, client)


def login_session(url: str, email: str, password: str) -> requests.Session:
    """A requests session logged in through the HTML login form (CSRF token from the form)."""
    s = requests.Session()
    r = s.get(url + "/user/login/", timeout=30)
    r.raise_for_status()
    m = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', r.text)
    if m is None:
        raise RuntimeError(f"no csrfmiddlewaretoken in {url}/user/login/: {r.text[:300]}")
    r = s.post(
        url + "/user/login/",
        data={"csrfmiddlewaretoken": m.group(1), "email": email, "password": password},
        headers={"Referer": url + "/user/login/"},
        allow_redirects=False,
        timeout=30,
    )
    if r.status_code != 302 or "/user/login" in r.headers.get("Location", ""):
        raise RuntimeError(f"login as {email} failed: HTTP {r.status_code} {r.text[:300]}")
    return s


def create_personal_access_token(url: str, email: str, password: str) -> str:
    """Log in through the form and POST /api/token/ (session + CSRF): returns the PAT.

    In Label Studio 1.23 a personal access token is a JWT refresh token; clients exchange it at
    /api/token/refresh/ for a short-lived access token sent as ``Authorization: Bearer``.
    """
    s = login_session(url, email, password)
    r = s.post(
        url + "/api/token/",
        headers={"X-CSRFToken": s.cookies.get("csrftoken", ""), "Referer": url + "/"},
        timeout=30,
    )
    if r.status_code != 201:
        raise RuntimeError(f"POST /api/token/ answered {r.status_code}: {r.text[:300]}")
    return str(r.json()["token"])


class LSError(RuntimeError):
    """Label Studio answered a REST call with an unexpected status."""


class LSClient:
    """Label Studio's REST API with a legacy token (``Token``) or a PAT (``Bearer`` access)."""

    def __init__(self, url: str, api_key: str, mode: str) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.mode = mode
        self._access: str | None = None

    def refresh_access(self) -> str:
        """Exchange the PAT (a refresh token) for a new access token."""
        r = requests.post(
            self.url + "/api/token/refresh/", json={"refresh": self.api_key}, timeout=30
        )
        if r.status_code != 200:
            raise LSError(f"/api/token/refresh/ answered {r.status_code}: {r.text[:300]}")
        self._access = str(r.json()["access"])
        return self._access

    def auth_header(self) -> str:
        if self.mode == "legacy":
            return f"Token {self.api_key}"
        return f"Bearer {self._access or self.refresh_access()}"

    def request(
        self, method: str, path: str, *, expect: tuple[int, ...] = (200, 201), **kw: Any
    ) -> requests.Response:
        kw.setdefault("timeout", 300)
        extra_headers = kw.pop("headers", {})
        for attempt in (0, 1):
            # a fresh connection per call, closed after it: Django's dev server keeps a
            # connection open after a streamed file response (the next request on it waits for
            # its timeout) and may drop idle ones that a pool would reuse
            headers = {
                "Authorization": self.auth_header(),
                "Connection": "close",
                **extra_headers,
            }
            r = requests.request(method, self.url + path, headers=headers, **kw)
            if r.status_code == 401 and self.mode == "pat" and attempt == 0:
                self.refresh_access()  # access tokens are short-lived
                continue
            break
        if r.status_code not in expect:
            raise LSError(f"{method} {path} answered {r.status_code}: {r.text[:1000]}")
        return r

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw).json()

    def post(self, path: str, **kw: Any) -> Any:
        r = self.request("POST", path, **kw)
        return r.json() if r.content else None

    def patch(self, path: str, **kw: Any) -> Any:
        return self.request("PATCH", path, **kw).json()

    # --- the calls the test makes

    def create_project(self, title: str, label_config: str) -> dict:
        return self.post("/api/projects", json={"title": title, "label_config": label_config})

    def import_files(self, project: int, files: list[Path]) -> dict:
        # one form field per file: Label Studio reads request.FILES.items(), one file per key
        handles = [(p.name, (p.name, p.read_bytes(), "image/png")) for p in files]
        return self.post(f"/api/projects/{project}/import", files=handles)

    def add_local_storage(self, project: int, path: Path, regex: str = r".*\.png") -> dict:
        return self.post(
            "/api/storages/localfiles",
            json={
                "project": project,
                "path": str(path),
                "regex_filter": regex,
                "use_blob_urls": True,
                "title": "e2e local files",
            },
        )

    def sync_local_storage(self, storage: int) -> dict:
        return self.post(f"/api/storages/localfiles/{storage}/sync")

    def tasks(self, project: int) -> list[dict]:
        """Every task of the project, with predictions and annotations."""
        out: list[dict] = []
        page = 1
        while True:
            r = self.request(
                "GET",
                "/api/tasks",
                params={"project": project, "page": page, "page_size": 100, "fields": "all"},
                expect=(200, 404),
            )
            if r.status_code == 404:
                break
            data = r.json()
            batch = data["tasks"] if isinstance(data, dict) else data
            out.extend(batch)
            total = data.get("total", len(out)) if isinstance(data, dict) else len(out)
            if not batch or len(out) >= total:
                break
            page += 1
        return out

    def predictions(self, task: int) -> list[dict]:
        return self.get("/api/predictions", params={"task": task})

    def wait_task_count(self, project: int, n: int, timeout: float = 120.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            tasks = self.tasks(project)
            if len(tasks) >= n or time.monotonic() > deadline:
                return tasks
            time.sleep(1)

    def connect_ml_backend(self, project: int, url: str, title: str) -> dict:
        return self.post("/api/ml", json={"url": url, "project": project, "title": title})

    def set_interactive(self, ml_backend: int) -> dict:
        """Turn on "Interactive preannotations" for a connected ML backend. The PATCH carries
        the backend's URL and project again: Label Studio 1.23.2 answers 500 without them (its
        serializer health-checks and sets up the backend with the fields of the request body)."""
        ml = self.get(f"/api/ml/{ml_backend}")
        body = {"url": ml["url"], "project": ml["project"], "is_interactive": True}
        return self.patch(f"/api/ml/{ml_backend}", json=body)

    def interactive_annotating(self, ml_backend: int, task: int, context: dict) -> dict:
        """What the labeling page asks when an annotator draws a smart region or submits a
        prompt: Label Studio sends the task and `context` to the backend's /predict and answers
        {"data": <the prediction>} or {"errors": [...]}."""
        return self.post(
            f"/api/ml/{ml_backend}/interactive-annotating", json={"task": task, "context": context}
        )

    def retrieve_predictions(self, project: int, tasks: list[int] | None = None) -> dict:
        """The data manager's "Retrieve predictions" on every task, or on the ``tasks`` (ids)
        selected."""
        selected = (
            {"all": True, "excluded": []} if tasks is None else {"all": False, "included": tasks}
        )
        return self.post(
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": selected},
        )

    def train(self, ml_backend: int) -> None:
        """The "Start training" button of a connected ML backend: Label Studio 1.23.2 posts a
        START_TRAINING webhook (the project, no annotation) to the backend's /webhook."""
        self.post(f"/api/ml/{ml_backend}/train")

    def create_annotation(self, task: int, result: list[dict]) -> dict:
        return self.post(f"/api/tasks/{task}/annotations", json={"result": result})

    def export_json(self, project: int) -> list[dict]:
        return self.get(f"/api/projects/{project}/export", params={"exportType": "JSON"})


# ---------------------------------------------------------------------------------------------
# headless Chromium through chromedriver (W3C WebDriver over HTTP)

ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--metrics-recording-only",
    "--window-size=1400,2000",  # tall: the regions panel renders only what fits
    # nothing may leave the machine: every host name fails to resolve except loopback, and
    # whatever is not loopback goes to a proxy that does not exist (loopback bypasses proxies)
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
)


def find_browser() -> tuple[Path, Path]:
    """(chromium, chromedriver) from $CLIPSEG_E2E_CHROMIUM/$CLIPSEG_E2E_CHROMEDRIVER or PATH."""
    import shutil

    found = []
    for var, names in (
        (CHROMIUM_ENV_VAR, ("chromium", "chromium-browser", "google-chrome")),
        (CHROMEDRIVER_ENV_VAR, ("chromedriver",)),
    ):
        raw = os.environ.get(var, "").strip()
        path = raw or next((p for n in names if (p := shutil.which(n))), None)
        if not path or not Path(path).exists():
            raise FileNotFoundError(
                f"{names[0]} not found: install it (Debian: apt-get install chromium "
                f"chromium-driver) or set {var}"
            )
        found.append(Path(path))
    return found[0], found[1]


class WebDriverError(RuntimeError):
    """chromedriver answered a command with an error."""


class WebDriver:
    """The few W3C WebDriver commands the test needs, against a chromedriver we start."""

    def __init__(
        self, reg: ProcessRegistry, workdir: Path, chromium: Path, chromedriver: Path
    ) -> None:
        self.port = free_port()
        self.proc = reg.start(
            "chromedriver",
            [str(chromedriver), f"--port={self.port}", "--allowed-ips=127.0.0.1"],
            env={k: v for k, v in os.environ.items()},
            cwd=workdir,
            log=workdir / "chromedriver.log",
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_http(self.base + "/status", self.proc, 60, ok=lambda r: r.json()["value"]["ready"])
        profile = workdir / "chromium-profile"
        profile.mkdir(exist_ok=True)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": {
                        "binary": str(chromium),
                        "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile}"],
                    },
                    "goog:loggingPrefs": {"browser": "ALL"},
                }
            }
        }
        value = self._cmd("POST", "/session", caps, timeout=120)
        self.session_id = value["sessionId"]
        self._cmd("POST", self._s("/timeouts"), {"pageLoad": 120_000, "script": 60_000})

    def _s(self, path: str) -> str:
        return f"/session/{self.session_id}{path}"

    def _cmd(self, method: str, path: str, body: Any = None, timeout: float = 150) -> Any:
        r = requests.request(method, self.base + path, json=body, timeout=timeout)
        data = r.json()
        value = data.get("value")
        if r.status_code != 200:
            err = value.get("error") if isinstance(value, dict) else value
            msg = value.get("message", "") if isinstance(value, dict) else ""
            raise WebDriverError(f"{method} {path}: {err}: {msg[:500]}")
        return value

    def get(self, url: str) -> None:
        self._cmd("POST", self._s("/url"), {"url": url})

    def current_url(self) -> str:
        return str(self._cmd("GET", self._s("/url")))

    def find_all(self, css: str) -> list[str]:
        found = self._cmd("POST", self._s("/elements"), {"using": "css selector", "value": css})
        if not isinstance(found, list) or not all(ELEMENT_KEY in e for e in found):
            raise WebDriverError(f"unexpected answer to find elements {css!r}: {found!r}")
        return [e[ELEMENT_KEY] for e in found]

    def wait_for(self, css: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_all(css)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no element matches {css!r} after {timeout:.0f} s")
            time.sleep(0.5)

    def send_keys(self, element: str, text: str) -> None:
        self._cmd("POST", self._s(f"/element/{element}/value"), {"text": text})

    def click(self, element: str) -> None:
        self._cmd("POST", self._s(f"/element/{element}/click"), {})

    def execute(self, script: str, *args: Any) -> Any:
        return self._cmd("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def page_text(self) -> str:
        return str(self.execute("return document.body ? document.body.innerText : '';"))

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not true after {timeout:.0f} s")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        png = base64.b64decode(self._cmd("GET", self._s("/screenshot")))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return path

    def browser_log(self) -> list[dict]:
        """Console messages (chromedriver's goog:loggingPrefs); empty if unsupported."""
        try:
            return list(self._cmd("POST", self._s("/se/log"), {"type": "browser"}))
        except WebDriverError:
            return []

    def login(self, url: str, email: str, password: str) -> None:
        """Log in through Label Studio's login form, as a person would."""
        self.get(url + "/user/login/")
        self.send_keys(self.wait_for("input[name=email]"), email)
        self.send_keys(self.wait_for("input[name=password]"), password)
        self.click(self.wait_for("form button[type=submit], form input[type=submit]"))
        self.wait_until(lambda: "/user/login" not in self.current_url(), "login redirect")

    def quit(self) -> None:
        with contextlib.suppress(requests.RequestException, WebDriverError, AttributeError):
            self._cmd("DELETE", self._s(""), timeout=30)


class StepTimer:
    """Marks the time of each step of a test; the wall time is reported, pass or fail."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def mark(self, step: str) -> None:
        self.marks.append((step, time.monotonic() - self.started))
        print(f"[e2e] {self.name}: {step} at {self.marks[-1][1]:.1f} s", flush=True)

    def summary(self) -> str:
        steps = ", ".join(f"{step} at {t:.0f} s" for step, t in self.marks)
        return f"{self.name}: wall time {time.monotonic() - self.started:.1f} s ({steps})"


def dump_json(obj: Any, path: Path) -> Path:
    """Write ``obj`` as indented JSON (for artifacts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str))
    return path
