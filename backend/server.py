"""The HTTP protocol Label Studio 1.23 speaks to ML backends, on Flask 3 (+ gunicorn).

Routes: GET / and /health, POST /setup, POST /predict, POST /webhook, GET /learning/<project>.
This module only does HTTP: auth, size limits, JSON in and out, answering busy (503 with
Retry-After); webhooks are checked and handed to `backend.webhooks` (journaled, then applied in
the background); the CLIPSeg work is the backend object's (`backend.model.CLIPSegBackend`:
`health()`, `setup(...)`, `predict(...)`, `fit(event, data)`, `handles(event)`,
`learning_status(project)`).

`clipseg-backend [--host H] [--port P] [--debug]` loads the model first and exits non-zero with
a clear message when it cannot, then serves with gunicorn (WORKERS processes x THREADS threads)
or, with --debug, Werkzeug's development server.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from backend.errors import LabelStudioError
from backend.images import ImageError, ImagesBusy
from backend.journal import WebhookJournal
from backend.label_config import LabelConfigError
from backend.settings import Settings, SettingsError
from backend.webhooks import WebhookBusy, WebhookDataError, WebhookWorker, validate_webhook

if TYPE_CHECKING:  # at run time backend.model is imported inside load_backend_or_exit
    from backend.model import CLIPSegBackend

logger = logging.getLogger(__name__)


#: Seconds a client is told to wait (Retry-After) when the predict slots or pixels are taken.
PREDICT_RETRY_AFTER = 5
#: Seconds a client is told to wait (Retry-After) when the webhook queue or journal is full.
WEBHOOK_RETRY_AFTER = 10


def _error(status: int, message: str) -> Response:
    response = jsonify({"status": "error", "error": message})
    response.status_code = status
    return response


def _json_body() -> dict[str, Any]:
    """The request's JSON object; raises _BadBody with a message saying what is wrong."""
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        # a body without Content-Length (chunked) is cut at the limit without an error
        # (werkzeug reads up to it and stops): it is over the limit if anything is left
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    if not raw.strip():
        raise _BadBody("empty request body: send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadBody(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise _BadBody("malformed JSON: nested too deeply") from exc
    if not isinstance(body, dict):
        raise _BadBody(f"the JSON body must be an object, not {type(body).__name__}")
    return body


class _BadBody(Exception):
    pass


def create_app(backend: CLIPSegBackend, settings: Settings) -> Flask:
    """The Flask app serving `backend` (an already loaded model; never loaded per request)."""
    app = Flask("clipseg-backend")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    expected = (ImageError, LabelStudioError, WebhookDataError, LabelConfigError)
    journal = WebhookJournal(Path(settings.model_dir) / "webhooks", settings.webhook_journal_bytes)
    worker = WebhookWorker(backend.fit, settings.webhook_queue_size, expected, journal)
    app.extensions["clipseg_backend"] = backend
    app.extensions["clipseg_worker"] = worker
    user, password = settings.basic_auth_user, settings.basic_auth_pass
    # Predictions run one at a time on the model anyway; keeping one of the THREADS free of
    # them lets /health, /setup and /webhook answer within Label Studio's 1-3 s while
    # predictions queue (a backend that misses a health check is shown as disconnected, and
    # a webhook that times out is lost).
    predict_slots = max(1, settings.threads - 1)
    predicting = threading.BoundedSemaphore(predict_slots)

    @app.before_request
    def _start_worker() -> None:
        # the webhook thread of this process (it replays the journal first); `clipseg-backend`
        # starts it when a gunicorn worker boots, this covers other servers
        worker.start()

    @app.before_request
    def _check_auth() -> Response | None:
        if not user:
            return None
        auth = request.authorization
        ok = (
            auth is not None
            and auth.type == "basic"
            and hmac.compare_digest((auth.username or "").encode(), user.encode())
            and hmac.compare_digest((auth.password or "").encode(), password.encode())
        )
        if ok:
            return None
        response = _error(401, "authentication required: HTTP Basic with BASIC_AUTH_USER/PASS")
        response.headers["WWW-Authenticate"] = 'Basic realm="clipseg-backend"'
        return response

    @app.errorhandler(_BadBody)
    def _bad_body(exc: _BadBody) -> Response:
        return _error(400, str(exc))

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        return _error(
            413, f"request body over MAX_CONTENT_LENGTH={settings.max_content_length} bytes"
        )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        # the exception's text may hold server paths: it stays in the log
        return _error(500, f"internal error ({type(exc).__name__}); see the backend's log")

    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "UP", **backend.health()})

    @app.post("/setup")
    def setup() -> Response:
        body = _json_body()
        version = backend.setup(
            project=body.get("project"),
            label_config=body.get("schema") or body.get("label_config"),
            hostname=body.get("hostname"),
            access_token=body.get("access_token"),
            extra_params=body.get("extra_params"),
        )
        return jsonify({"model_version": version})

    @app.post("/predict")
    def predict() -> Response:
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise _BadBody("'tasks' must be a list of task objects")
        label_config = body.get("label_config")
        if not isinstance(label_config, str) or not label_config.strip():
            raise _BadBody("'label_config' (the project's labeling config) is missing")
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise _BadBody("'params' must be an object")
        if not predicting.acquire(blocking=False):
            response = _error(
                503, f"busy: {predict_slots} /predict request(s) already running; try again"
            )
            response.headers["Retry-After"] = str(PREDICT_RETRY_AFTER)
            return response
        started = time.monotonic()
        try:
            results = backend.predict(
                tasks,
                context=params.get("context"),
                project=body.get("project"),
                label_config=label_config,
            )
        except ImagesBusy as exc:  # the pixel budget had no room for the first image
            response = _error(503, f"busy: {exc}")
            response.headers["Retry-After"] = str(PREDICT_RETRY_AFTER)
            return response
        finally:
            predicting.release()
        if len(results) != len(tasks):  # Label Studio would silently store nothing
            raise RuntimeError(f"{len(results)} predictions for {len(tasks)} tasks")
        logger.info("predicted %d task(s) in %.2f s", len(tasks), time.monotonic() - started)
        return jsonify({"results": results})

    @app.get("/learning/<project>")
    def learning(project: str) -> Response:
        """The project's learning loop: serving state, training state, stored annotations,
        runs (`CLIPSegBackend.learning_status`)."""
        status = getattr(backend, "learning_status", None)
        if status is None:
            return _error(404, "this backend does not learn")
        try:
            return jsonify(status(project))
        except ValueError as exc:
            return _error(400, f"bad project id: {exc}")

    @app.post("/webhook")
    def webhook() -> Response:
        body = _json_body()
        event = body.get("action")
        if not isinstance(event, str) or not event:
            raise _BadBody("webhook body has no 'action'")
        if not backend.handles(event):
            return jsonify({"status": "ignored", "action": event})
        try:
            validate_webhook(event, body)
        except WebhookDataError as exc:
            return _error(400, str(exc))
        try:
            worker.submit(event, body)  # on disk (the journal) before the answer
        except WebhookBusy as exc:
            response = _error(503, f"{exc}; try again later")
            response.headers["Retry-After"] = str(WEBHOOK_RETRY_AFTER)
            return response
        return jsonify({"status": "queued", "action": event})

    return app


def configure_logging(level: str) -> None:
    """Log at `level`; DEBUG only for our packages (label-studio-sdk's dependencies are chatty)."""
    wanted = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(
        level=max(wanted, logging.INFO),
        format="[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s",
    )
    for name in ("backend", "clipseg"):
        logging.getLogger(name).setLevel(wanted)


#: gunicorn's exit status for "worker failed to boot": the master stops instead of respawning.
WORKER_BOOT_ERROR = 3


def load_backend_or_exit(settings: Settings, status: int = 1) -> CLIPSegBackend:
    """Load the model; on failure log why and how to fix it, and exit with `status`.

    Inside a gunicorn worker pass WORKER_BOOT_ERROR, so that gunicorn halts rather than
    restarting the worker forever.
    """
    from backend.model import CLIPSegBackend, ModelLoadError

    try:
        return CLIPSegBackend.load(settings)
    except ModelLoadError as exc:
        logger.error("cannot start: %s", exc)
        sys.exit(status)
    except SettingsError as exc:  # a setting that names what is not there (CLIPSEG_LEARN_PIN)
        logger.error("cannot start: bad setting: %s", exc)
        sys.exit(2 if status == 1 else status)


def _start_webhook_worker(worker: Any) -> None:
    """gunicorn's post_worker_init hook: the webhook thread (and the journal's replay) starts
    when a worker boots, not at its first request."""
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", {})
    if "clipseg_worker" in extensions:
        extensions["clipseg_worker"].start()


def _gunicorn(app_factory: Callable[[], Flask], settings: Settings, bind: str, preload: bool):
    from gunicorn.app.base import BaseApplication

    from backend.http_worker import worker_class

    class _Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", bind)
            self.cfg.set("workers", settings.workers)
            self.cfg.set("threads", settings.threads)
            # gthread whose main loop reads each request whole before a thread gets it: slow
            # clients cannot take the threads (backend/http_worker.py says why this way)
            self.cfg.set("worker_class", worker_class(settings))
            self.cfg.set("keepalive", 0)
            self.cfg.set("timeout", settings.timeout)
            self.cfg.set("preload_app", preload)
            self.cfg.set("loglevel", settings.log_level.lower())
            self.cfg.set("accesslog", "-")
            self.cfg.set("post_worker_init", _start_webhook_worker)

        def load(self) -> Flask:
            return app_factory()

    return _Server()


def main(argv: list[str] | None = None) -> None:
    """`clipseg-backend`: load the model, then serve it (gunicorn, or Werkzeug with --debug)."""
    parser = argparse.ArgumentParser(
        prog="clipseg-backend", description="CLIPSeg ML backend for Label Studio"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    parser.add_argument("--debug", action="store_true", help="Werkzeug dev server, debug logs")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"clipseg-backend: bad setting: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging("DEBUG" if args.debug else settings.log_level)

    from backend.model import ModelLoadError, resolve_device

    try:
        device = resolve_device(settings.device)
    except ModelLoadError as exc:
        logger.error("cannot start: %s", exc)
        sys.exit(1)
    if args.debug:
        app = create_app(load_backend_or_exit(settings), settings)
        app.extensions["clipseg_worker"].start()
        app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)
        return
    if device.startswith("cuda"):
        # CUDA does not survive fork: check the checkpoint here, load it in each worker. A
        # worker that fails to load exits with gunicorn's boot-error code, which stops gunicorn
        # (no restart loop).
        from backend.model import check_checkpoint_or_exit

        check_checkpoint_or_exit(settings)
        server = _gunicorn(
            lambda: create_app(load_backend_or_exit(settings, WORKER_BOOT_ERROR), settings),
            settings,
            f"{args.host}:{args.port}",
            preload=False,
        )
    else:
        # CPU: load once in the master; the workers share its memory after fork.
        app = create_app(load_backend_or_exit(settings), settings)
        server = _gunicorn(lambda: app, settings, f"{args.host}:{args.port}", preload=True)
    server.run()


if __name__ == "__main__":
    main()
