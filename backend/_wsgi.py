"""The WSGI entry point for gunicorn:
`gunicorn --preload -b 0.0.0.0:9090 -k backend.http_worker.BufferingWorker --threads 4
--keep-alive 0 --timeout 300 backend._wsgi:app`.

`backend.http_worker.BufferingWorker` (what `clipseg-backend` runs) reads each request whole
before a thread gets it, so slow clients cannot take the threads; with gunicorn's own gthread
worker, put a buffering proxy (nginx) in front instead. The webhook thread of each worker (and
the replay of the webhook journal) starts at the worker's first request here; `clipseg-backend`
starts it when the worker boots.

The model is loaded at import, once per process (with --preload: once, in the master, before
the workers fork). Use --preload on CPU only: on a GPU the workers could not use the CUDA state
the master set up before forking them. A model that cannot be loaded stops the process with a
clear message; inside a gunicorn worker with gunicorn's boot-error status, so gunicorn stops
instead of respawning workers that cannot start.
"""

from __future__ import annotations

import sys

from backend.server import WORKER_BOOT_ERROR, configure_logging, create_app, load_backend_or_exit
from backend.settings import Settings, SettingsError

try:
    settings = Settings.from_env()
except SettingsError as exc:
    print(f"clipseg-backend: bad setting: {exc}", file=sys.stderr)
    sys.exit(WORKER_BOOT_ERROR)

configure_logging(settings.log_level)
app = create_app(load_backend_or_exit(settings, WORKER_BOOT_ERROR), settings)
