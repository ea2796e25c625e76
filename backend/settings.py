"""Every environment variable the backend reads, in one place.

`Settings.from_env()` reads them once into a frozen dataclass; the rest of the backend takes a
`Settings` and never looks at `os.environ`. README.md's Settings table lists each variable with
its default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"


class SettingsError(ValueError):
    """An environment variable holds a value the backend cannot use."""


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _get(env, name, str(default))
    try:
        value = int(raw.replace("_", ""))
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an integer") from exc
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _float(
    env: Mapping[str, str],
    name: str,
    default: float,
    lo: float | None = None,
    hi: float | None = None,
) -> float:
    raw = _get(env, name, str(default))
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise SettingsError(f"{name}={value} must lie in [{lo}, {hi}]")
    if lo is not None and value < lo:
        raise SettingsError(f"{name}={value} must be >= {lo}")
    if hi is not None and value > hi:
        raise SettingsError(f"{name}={value} must be <= {hi}")
    return value


#: The devices the backend runs on (CLIPSEG_DEVICE, clipseg-label --device).
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def _device(env: Mapping[str, str]) -> str:
    value = _get(env, "CLIPSEG_DEVICE", "auto").lower()
    if not DEVICE_PATTERN.fullmatch(value):
        raise SettingsError(
            f"CLIPSEG_DEVICE={value!r} is not a device: use auto, cpu, cuda or cuda:N"
        )
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name, "true" if default else "false").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _get(env, name, default).lower()
    if value not in choices:
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def _overlap(env: Mapping[str, str]) -> float:
    value = _float(env, "CLIPSEG_TILE_OVERLAP", Settings.tile_overlap, 0.0)
    if value >= 0.9:
        raise SettingsError(f"CLIPSEG_TILE_OVERLAP={value} must lie in [0, 0.9)")
    return value


def _pins(raw: str) -> tuple[tuple[str, str], ...]:
    """CLIPSEG_LEARN_PIN: comma-separated `project=state`, a state id (s000002) or `base`."""
    pins = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        project, _, state = (part.strip() for part in entry.partition("="))
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", project) or not re.fullmatch(
            r"s\d{6}|base", state
        ):
            raise SettingsError(
                f"CLIPSEG_LEARN_PIN entry {entry!r}: expected <project id>=<state>, the state "
                "a learned state's id (s000002) or 'base', e.g. 3=s000002,5=base"
            )
        pins.append((project, state))
    return tuple(pins)


def _hosts(raw: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in raw.split(",") if h.strip())


@dataclass(frozen=True)
class Settings:
    """The backend's configuration; see docs/backend.md for what each field does."""

    # --- the model
    model: str = DEFAULT_MODEL  # CLIPSEG_MODEL: checkpoint directory, hub id, or "demo"
    device: str = "auto"  # CLIPSEG_DEVICE: auto / cpu / cuda / cuda:N
    dtype: str = "auto"  # CLIPSEG_DTYPE: auto / float32 / float16 / bfloat16
    # --- turning probabilities into regions
    threshold: float = 0.3  # CLIPSEG_THRESHOLD: default probability threshold per pixel
    region_mode: str = "instance"  # CLIPSEG_REGION_MODE: instance (one region per blob) / semantic
    min_region_area: float = (
        0.0005  # CLIPSEG_MIN_REGION_AREA: fraction of the image (or px if >= 1)
    )
    polygon_tolerance: float = 0.5  # CLIPSEG_POLYGON_TOLERANCE: simplification, pixels
    # --- tiled prediction (small objects in large images)
    tile_size: int = 0  # CLIPSEG_TILE_SIZE: tile side in original px; 0: off (the whole image)
    tile_overlap: float = 0.25  # CLIPSEG_TILE_OVERLAP: fraction of a tile shared, in [0, 0.9)
    # --- exemplars
    exemplar_weight: float = 0.5  # CLIPSEG_EXEMPLAR_WEIGHT: w in w * text + (1 - w) * exemplars
    max_exemplars_per_label: int = 16  # CLIPSEG_MAX_EXEMPLARS_PER_LABEL (the newest are kept)
    # --- learning from annotations (backend.learning)
    learn_keep: int = 5  # CLIPSEG_LEARN_KEEP: learned states kept per project (+ the serving one)
    learn_pins: tuple[tuple[str, str], ...] = ()  # CLIPSEG_LEARN_PIN: project=state served, fixed
    train_every: int = 10  # CLIPSEG_TRAIN_EVERY: new/changed annotations that start a training
    train_time_limit: float = 300.0  # CLIPSEG_TRAIN_TIME_LIMIT: seconds reading a run's images
    train_max_images: int = 200  # CLIPSEG_TRAIN_MAX_IMAGES: newest annotated images per run
    # --- scores
    score_mode: str = "confidence"  # CLIPSEG_SCORE: what the prediction's top-level score is
    uncertain_low: float = 0.2  # CLIPSEG_UNCERTAIN_LOW: lower edge of the uncertain band
    uncertain_high: float = 0.8  # CLIPSEG_UNCERTAIN_HIGH: upper edge of the uncertain band
    # --- task data
    label_studio_url: str = ""  # LABEL_STUDIO_URL (else the hostname /setup sends)
    label_studio_api_key: str = ""  # LABEL_STUDIO_API_KEY (else the access_token /setup sends)
    local_files_document_root: str = ""  # LOCAL_FILES_DOCUMENT_ROOT
    allowed_hosts: tuple[str, ...] = ()  # CLIPSEG_ALLOWED_HOSTS: extra hosts images may come from
    max_image_pixels: int = 50_000_000  # CLIPSEG_MAX_IMAGE_PIXELS
    pixel_budget: int = 100_000_000  # CLIPSEG_PIXEL_BUDGET: decoded pixels in flight, per worker
    max_download_bytes: int = 64 * 1024 * 1024  # CLIPSEG_MAX_DOWNLOAD_BYTES
    http_timeout: float = 30.0  # CLIPSEG_HTTP_TIMEOUT: seconds per request, whole download
    predict_budget: float = 70.0  # CLIPSEG_PREDICT_BUDGET: seconds per /predict (0: no limit)
    # --- storage and server
    model_dir: str = "./model-data"  # MODEL_DIR: where exemplars are stored
    basic_auth_user: str = ""  # BASIC_AUTH_USER
    basic_auth_pass: str = field(default="", repr=False)  # BASIC_AUTH_PASS
    max_content_length: int = 64 * 1024 * 1024  # MAX_CONTENT_LENGTH: request body limit, bytes
    webhook_queue_size: int = 1000  # CLIPSEG_WEBHOOK_QUEUE_SIZE
    webhook_journal_bytes: int = (
        256 * 1024 * 1024
    )  # CLIPSEG_WEBHOOK_JOURNAL_BYTES: pending, on disk
    workers: int = 1  # WORKERS: gunicorn worker processes
    threads: int = 4  # THREADS: gunicorn threads per worker
    timeout: int = 300  # GUNICORN_TIMEOUT: seconds before gunicorn restarts a silent worker
    header_timeout: float = 10.0  # CLIPSEG_HEADER_TIMEOUT: seconds to send the request header
    body_timeout: float = 60.0  # CLIPSEG_BODY_TIMEOUT: seconds to send the whole request
    log_level: str = "INFO"  # LOG_LEVEL

    def __repr__(self) -> str:  # never print the API key or the password
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("label_studio_api_key", "basic_auth_pass") and value:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from `env` (default `os.environ`); SettingsError on bad values."""
        env = os.environ if env is None else env
        low = _float(env, "CLIPSEG_UNCERTAIN_LOW", cls.uncertain_low, 0.0, 1.0)
        high = _float(env, "CLIPSEG_UNCERTAIN_HIGH", cls.uncertain_high, 0.0, 1.0)
        if low >= high:
            raise SettingsError("CLIPSEG_UNCERTAIN_LOW must be below CLIPSEG_UNCERTAIN_HIGH")
        max_pixels = _int(env, "CLIPSEG_MAX_IMAGE_PIXELS", cls.max_image_pixels, 1)
        pixel_budget = _int(env, "CLIPSEG_PIXEL_BUDGET", max(cls.pixel_budget, max_pixels), 1)
        if pixel_budget < max_pixels:
            raise SettingsError(
                f"CLIPSEG_PIXEL_BUDGET={pixel_budget} is below CLIPSEG_MAX_IMAGE_PIXELS="
                f"{max_pixels}: an image of the largest size allowed could never be decoded"
            )
        header_timeout = _float(env, "CLIPSEG_HEADER_TIMEOUT", cls.header_timeout, 0.1)
        body_timeout = _float(env, "CLIPSEG_BODY_TIMEOUT", cls.body_timeout, 0.1)
        if body_timeout < header_timeout:
            raise SettingsError("CLIPSEG_BODY_TIMEOUT must not be below CLIPSEG_HEADER_TIMEOUT")
        user = _get(env, "BASIC_AUTH_USER", "")
        password = _get(env, "BASIC_AUTH_PASS", "")
        if bool(user) != bool(password):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        return cls(
            model=_get(env, "CLIPSEG_MODEL", DEFAULT_MODEL),
            device=_device(env),
            dtype=_choice(env, "CLIPSEG_DTYPE", "auto", ("auto", "float32", "float16", "bfloat16")),
            threshold=_float(env, "CLIPSEG_THRESHOLD", cls.threshold, 0.0, 1.0),
            region_mode=_choice(env, "CLIPSEG_REGION_MODE", "instance", ("instance", "semantic")),
            min_region_area=_float(env, "CLIPSEG_MIN_REGION_AREA", cls.min_region_area, 0.0),
            polygon_tolerance=_float(env, "CLIPSEG_POLYGON_TOLERANCE", cls.polygon_tolerance, 0.0),
            tile_size=_int(env, "CLIPSEG_TILE_SIZE", cls.tile_size, 0),
            tile_overlap=_overlap(env),
            exemplar_weight=_float(env, "CLIPSEG_EXEMPLAR_WEIGHT", cls.exemplar_weight, 0.0, 1.0),
            max_exemplars_per_label=_int(
                env, "CLIPSEG_MAX_EXEMPLARS_PER_LABEL", cls.max_exemplars_per_label, 1
            ),
            learn_keep=_int(env, "CLIPSEG_LEARN_KEEP", cls.learn_keep, 1),
            learn_pins=_pins(_get(env, "CLIPSEG_LEARN_PIN", "")),
            train_every=_int(env, "CLIPSEG_TRAIN_EVERY", cls.train_every, 0),
            train_time_limit=_float(env, "CLIPSEG_TRAIN_TIME_LIMIT", cls.train_time_limit, 1.0),
            train_max_images=_int(env, "CLIPSEG_TRAIN_MAX_IMAGES", cls.train_max_images, 2),
            score_mode=_choice(env, "CLIPSEG_SCORE", "confidence", ("confidence", "uncertainty")),
            uncertain_low=low,
            uncertain_high=high,
            label_studio_url=_get(env, "LABEL_STUDIO_URL", "").rstrip("/"),
            label_studio_api_key=_get(env, "LABEL_STUDIO_API_KEY", ""),
            local_files_document_root=_get(env, "LOCAL_FILES_DOCUMENT_ROOT", ""),
            allowed_hosts=_hosts(_get(env, "CLIPSEG_ALLOWED_HOSTS", "")),
            max_image_pixels=max_pixels,
            pixel_budget=pixel_budget,
            max_download_bytes=_int(env, "CLIPSEG_MAX_DOWNLOAD_BYTES", cls.max_download_bytes, 1),
            http_timeout=_float(env, "CLIPSEG_HTTP_TIMEOUT", cls.http_timeout, 0.1),
            predict_budget=_float(env, "CLIPSEG_PREDICT_BUDGET", cls.predict_budget, 0.0),
            model_dir=_get(env, "MODEL_DIR", cls.model_dir),
            basic_auth_user=user,
            basic_auth_pass=password,
            max_content_length=_int(env, "MAX_CONTENT_LENGTH", cls.max_content_length, 1),
            webhook_queue_size=_int(env, "CLIPSEG_WEBHOOK_QUEUE_SIZE", cls.webhook_queue_size, 1),
            webhook_journal_bytes=_int(
                env, "CLIPSEG_WEBHOOK_JOURNAL_BYTES", cls.webhook_journal_bytes, 65536
            ),
            workers=_int(env, "WORKERS", cls.workers, 1),
            threads=_int(env, "THREADS", cls.threads, 1),
            timeout=_int(env, "GUNICORN_TIMEOUT", cls.timeout, 1),
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            log_level=_choice(
                env, "LOG_LEVEL", cls.log_level.lower(), ("debug", "info", "warning", "error")
            ).upper(),
        )
