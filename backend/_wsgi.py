"""The WSGI entry point for gunicorn: `gunicorn --preload -b 0.0.0.0:9090 backend._wsgi:app`.

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
