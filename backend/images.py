"""Fetch and validate task images.

Where an image may come from (task data cannot make the backend read or fetch anything else):

- `/data/local-files/?d=<path>`: read directly under LOCAL_FILES_DOCUMENT_ROOT when it is set
  (resolved, symlinks included, and checked to stay inside it), else fetched from Label Studio;
- `/data/upload/...` and any other relative URL: fetched from Label Studio, authenticated;
- `s3://`, `gs://`, `azure-blob://`: through Label Studio's presign endpoint
  (`/tasks/<id>/presign/?fileuri=<base64>`), whose redirect to the storage is followed without
  credentials;
- absolute `http(s)://` URLs: only on the Label Studio host or a host in CLIPSEG_ALLOWED_HOSTS.

Every request has a timeout and a byte cap; the pixel count is checked from the image header
before the pixels are decoded; EXIF orientation is applied, so the returned size is the one
Label Studio shows (`original_width` / `original_height`).

Requests to Label Studio itself go through `backend.ls_client.LabelStudioClient` (its tokens,
and credentials sent only to its origin); this module decides what may be fetched, bounds the
download and decodes it.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import stat
import struct
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urljoin, urlparse

import numpy as np
import requests
import urllib3
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
    encode_presign_fileuri,
    is_cloud_storage_uri,
)
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.pixel_budget import PixelBudget, PixelBudgetExceeded, Reservation
from backend.settings import Settings

if TYPE_CHECKING:
    from backend.ls_client import LabelStudioClient

logger = logging.getLogger(__name__)

#: Raster formats the backend decodes (PIL names); anything else is refused.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "TGA")
_MAX_REDIRECTS = 3
#: Seconds an image waits for room in the pixel budget by default (a /predict; then 503).
PIXEL_BUDGET_WAIT = 5.0


class ImageError(Exception):
    """A task's image cannot be loaded; the task is answered without a result."""


class DisallowedSourceError(ImageError):
    """The image would come from a host or path the backend must not read."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded task image: (H, W, 3) uint8 RGB after EXIF orientation.

    An image from `ImageLoader.load` holds its pixels in the process's pixel budget
    (CLIPSEG_PIXEL_BUDGET) until `release()` (or the end of a `with` block; at the latest when
    it is garbage collected)."""

    array: np.ndarray
    source: str
    reservation: Reservation | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.reservation is not None:  # a forgotten release cannot leak the budget
            weakref.finalize(self, self.reservation.release)

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    def release(self) -> None:
        """Give the image's pixels back to the budget (the array stays usable)."""
        if self.reservation is not None:
            self.reservation.release()

    def __enter__(self) -> LoadedImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ImagesBusy(ImageError):
    """The pixel budget has no room for the image now; the request may be retried later."""


#: What a host may be: a DNS name or IPv4 address, or an IPv6 address in brackets. Anything
#: else (percent escapes, backslashes, userinfo, whitespace) is refused rather than interpreted,
#: because URL parsers disagree on it: `urlparse` read `http://a:1\@b:2/` as host b while the
#: HTTP client connected to a.
_HOST = re.compile(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]")


@dataclass(frozen=True)
class HttpUrl:
    """An http(s) URL parsed once: the (scheme, host, port) that is checked is the one that is
    connected to, because requests are made to `url`, rebuilt from these parts."""

    scheme: str
    host: str  # lower case; an IPv6 address keeps its brackets
    port: int
    target: str  # path, and "?query" when there is one ("/" at least)

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.target}"


def parse_http_url(url: str) -> HttpUrl:
    """Parse an absolute http(s) URL strictly; DisallowedSourceError names what is wrong.

    Refused: other schemes, userinfo (`user@`), backslashes, control characters and spaces,
    and hosts that are not plain names or addresses (see `_HOST`)."""
    if not isinstance(url, str):
        raise DisallowedSourceError(f"a URL must be a string, got {type(url).__name__}")
    if "\\" in url or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise DisallowedSourceError(
            f"refusing a URL with backslashes or control characters: {url[:200]!r}"
        )
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        raise DisallowedSourceError(f"not an http(s) URL: {url[:200]!r}")
    netloc = parsed.netloc
    if "@" in netloc:
        raise DisallowedSourceError(f"refusing a URL with credentials in it: {url[:200]!r}")
    try:
        port = parsed.port
    except ValueError as exc:
        raise DisallowedSourceError(f"bad port in {url[:200]!r}") from exc
    host = netloc.lower()
    if port is not None or host.endswith(":"):
        host = host.rpartition(":")[0]
    if not _HOST.fullmatch(host):
        raise DisallowedSourceError(f"refusing the host of {url[:200]!r}")
    target = parsed.path or "/"
    if parsed.query:
        target += "?" + parsed.query
    return HttpUrl(scheme, host, port or {"http": 80, "https": 443}[scheme], target)


def _host_port(url: str) -> tuple[str, int | None]:
    parsed = parse_http_url(url)
    return parsed.host.strip("[]"), parsed.port


class ImageLoader:
    """Resolve a task's image reference, fetch it within the limits, and decode it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        root = settings.local_files_document_root
        self.local_root = Path(root).resolve() if root else None
        if self.local_root is not None and self.local_root == Path(self.local_root.anchor):
            raise ValueError("LOCAL_FILES_DOCUMENT_ROOT must not be the filesystem root")
        self._session = requests.Session()
        self.reveal_paths = False  # messages name local files relative to the root (`_shown`)
        # per process; never smaller than one image of the largest size allowed
        self.budget = PixelBudget(max(settings.pixel_budget, settings.max_image_pixels))
        self.budget_wait = PIXEL_BUDGET_WAIT

    # ---- host policy
    def host_allowed(self, url: str, ls: LabelStudioClient | None) -> bool:
        """Whether an image may be downloaded from `url`'s host."""
        try:
            host, port = _host_port(url)
        except DisallowedSourceError:
            return False
        if ls is not None and ls.owns(url):
            return True
        for entry in self.settings.allowed_hosts:
            name, _, want_port = entry.partition(":")
            if want_port and str(port) != want_port:
                continue
            if name == host or (name.startswith("*.") and host.endswith(name[1:])):
                return True
        return False

    # ---- entry point
    def load(
        self,
        task: dict,
        value_key: str,
        ls: LabelStudioClient | None,
        deadline: float | None = None,
        budget_wait: float | None = None,
    ) -> LoadedImage:
        """The image of `task["data"][value_key]`; raises ImageError when it cannot be had.

        `deadline` (a `time.monotonic()` value): a download must be over by then, on top of
        CLIPSEG_HTTP_TIMEOUT (the caller's time budget). The image holds its pixels in the
        process's budget (CLIPSEG_PIXEL_BUDGET) until it is released: use it in a `with`
        block. ImagesBusy when the budget has no room within `budget_wait` seconds
        (`self.budget_wait`, PIXEL_BUDGET_WAIT, by default)."""
        data = task.get("data")
        if not isinstance(data, dict):
            raise ImageError(f"the task's data is not an object: {data!r:.80}")
        if value_key not in data:
            keys = ", ".join(sorted(map(str, data))[:10]) or "none"
            raise ImageError(f"the task has no data key {value_key!r} (its keys: {keys})")
        ref = data[value_key]
        if isinstance(ref, list):
            raise ImageError(
                f"data[{value_key!r}] is a list of {len(ref)}: tasks with "
                "several images in one <Image valueList=...> are not supported"
            )
        if not isinstance(ref, str) or not ref.strip():
            raise ImageError(f"data[{value_key!r}] is not an image URL: {ref!r:.80}")
        ref = ref.strip()
        source = ref if not ref.startswith("data:") else f"{ref[:40]}... ({len(ref)} characters)"
        data = self.read_bytes(ref, task.get("id"), ls, deadline)
        wait = self.budget_wait if budget_wait is None else budget_wait
        return decode_image(data, self.settings, source, self.budget, wait)

    def read_bytes(
        self, ref: str, task_id: Any, ls: LabelStudioClient | None, deadline: float | None = None
    ) -> bytes:
        """The raw bytes an image reference points at, following the source rules above."""
        if ref.startswith("data:"):
            return self._data_uri(ref)
        parsed = urlparse(ref)
        if parsed.path.startswith("/data/local-files") and not parsed.netloc:
            path = self.local_file(ref)
            if path is not None:
                return self._read_file(path, deadline)
        if is_cloud_storage_uri(ref) or ref.startswith("gcs:"):
            if ls is None:
                raise ImageError(f"{ref}: cloud storage needs LABEL_STUDIO_URL (or /setup)")
            if task_id is None:
                raise ImageError(f"{ref}: cloud storage needs the task id for presigning")
            presign = f"/tasks/{task_id}/presign/?fileuri={encode_presign_fileuri(ref)}"
            return self._download(presign, ls, presigned=True, deadline=deadline)
        if ref.startswith("/"):
            if ls is None:
                raise ImageError(
                    f"{ref} is relative to Label Studio, whose URL is unknown: set "
                    "LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY)"
                )
            return self._download(ref, ls, presigned="/presign" in parsed.path, deadline=deadline)
        if parsed.scheme in ("http", "https"):
            return self._download(ref, ls, presigned=False, deadline=deadline)
        raise DisallowedSourceError(f"unsupported image reference: {ref[:200]!r}")

    def _data_uri(self, ref: str) -> bytes:
        """The bytes of a `data:image/...;base64,...` URI (Label Studio shows those too)."""
        header, comma, payload = ref.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ImageError(f"{header[:60]!r}: only base64 data URIs are supported")
        cap = self.settings.max_download_bytes
        if len(payload) // 4 * 3 > cap:
            raise ImageError(
                f"data URI of {len(payload)} characters is over CLIPSEG_MAX_DOWNLOAD_BYTES={cap}"
            )
        try:
            return base64.b64decode(payload, validate=True)
        except ValueError as exc:
            raise ImageError(f"{header[:60]}: malformed base64 ({exc})") from exc

    # ---- local files
    def local_file(self, ref: str) -> Path | None:
        """The path of a `/data/local-files/?d=...` URL under LOCAL_FILES_DOCUMENT_ROOT.

        None when the root is not set (then Label Studio serves the file). Raises
        DisallowedSourceError for a path that resolves outside the root (`..`, absolute paths,
        symlinks out).
        """
        if self.local_root is None:
            return None
        values = parse_qs(urlparse(ref).query, keep_blank_values=True).get("d") or [""]
        relative = values[-1]
        if not relative:
            raise ImageError(f"{ref}: local-files URL without ?d=")
        if "\x00" in relative:
            raise DisallowedSourceError("a local-files path with a null byte in it")
        try:
            candidate = (self.local_root / relative.lstrip("/")).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            raise ImageError(f"local file {relative[:200]!r} cannot be resolved: {exc}") from exc
        if candidate != self.local_root and self.local_root not in candidate.parents:
            raise DisallowedSourceError(f"{relative!r} is outside LOCAL_FILES_DOCUMENT_ROOT")
        return candidate

    def _shown(self, path: Path) -> str:
        """A local file as messages name it: relative to LOCAL_FILES_DOCUMENT_ROOT, since the
        server's answers go back to clients, who need not learn its directories; in full when
        `reveal_paths` (a command run by the operator, whose own files they are)."""
        if self.reveal_paths:
            return str(path)
        if self.local_root is not None and self.local_root in path.parents:
            return str(path.relative_to(self.local_root))
        return path.name

    def _read_file(self, path: Path, deadline: float | None = None) -> bytes:
        """A regular file's bytes within CLIPSEG_MAX_DOWNLOAD_BYTES and the time limit.

        A FIFO, device or socket is refused before it is opened (a FIFO's open and reads block
        until someone writes to it; opening a device can act on it). The file is opened
        non-blocking and without following a symlink, and checked again on the open descriptor
        (it may have been replaced since the path was checked); reads are in 1 MiB chunks, each
        started only before the deadline (CLIPSEG_HTTP_TIMEOUT from now, or `deadline` when
        sooner)."""
        shown = self._shown(path)
        cap = self.settings.max_download_bytes
        limit = self.settings.http_timeout
        end = time.monotonic() + limit
        if deadline is not None and deadline < end:
            end, limit = deadline, max(deadline - time.monotonic(), 0.0)
        try:
            _require_regular(os.stat(path).st_mode, shown)
            flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise ImageError(f"cannot read local file {shown}: {exc.strerror or exc}") from exc
        try:
            info = os.fstat(fd)
            _require_regular(info.st_mode, shown)
            if info.st_size > cap:
                raise ImageError(
                    f"{shown} is {info.st_size} bytes, over CLIPSEG_MAX_DOWNLOAD_BYTES={cap}"
                )
            chunks, total = [], 0
            while True:
                if time.monotonic() > end:
                    raise ImageError(
                        f"reading local file {shown} took over {limit:.3g} s ({total} bytes read)"
                    )
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return b"".join(chunks)
                total += len(chunk)
                if total > cap:
                    raise ImageError(f"{shown} grew over CLIPSEG_MAX_DOWNLOAD_BYTES={cap}")
                chunks.append(chunk)
        except OSError as exc:
            raise ImageError(f"cannot read local file {shown}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    # ---- downloads
    def _download(
        self,
        url: str,
        ls: LabelStudioClient | None,
        presigned: bool,
        deadline: float | None = None,
    ) -> bytes:
        """GET `url` within the host policy, the time limit and the byte cap.

        The time limit covers the whole download (connecting, redirects, reading): it is
        CLIPSEG_HTTP_TIMEOUT from now, or `deadline` when that comes first. Each request waits
        at most the time left.

        Redirects are followed by hand (at most 3): to allowed hosts, or anywhere http(s) when
        Label Studio's presign endpoint sends them; credentials only ever go to Label Studio.
        """
        url = ls.absolute(url) if ls is not None else url
        limit = self.settings.http_timeout
        end = time.monotonic() + limit
        if deadline is not None and deadline < end:
            end, limit = deadline, max(deadline - time.monotonic(), 0.0)
        for _ in range(_MAX_REDIRECTS + 1):
            timeout = end - time.monotonic()
            if timeout <= 0:
                raise ImageError(f"download of {url}: out of time ({limit:.3g} s)")
            checked = parse_http_url(url)  # every hop, redirects included, parsed once
            url = checked.url  # and connected to as checked
            on_ls = ls is not None and ls.owns(url)
            if not on_ls and not presigned:
                if not self.host_allowed(url, ls):
                    host = f"{checked.host}:{checked.port}"
                    raise DisallowedSourceError(
                        f"refusing to download from {host!r}: not the Label Studio host and not "
                        "in CLIPSEG_ALLOWED_HOSTS"
                    )
            try:
                if on_ls:
                    response = ls.get(url, stream=True, allow_redirects=False, timeout=timeout)
                else:
                    response = self._session.get(
                        url, stream=True, allow_redirects=False, timeout=timeout
                    )
            except requests.RequestException as exc:
                raise ImageError(f"cannot download {url}: {exc}") from exc
            with response:
                if response.is_redirect:
                    location = response.headers.get("Location", "")
                    presigned = presigned and on_ls  # only Label Studio's own redirect is trusted
                    url = urljoin(url, location)
                    continue
                if response.status_code != 200:
                    raise ImageError(f"HTTP {response.status_code} for {url}")
                return self._read_capped(response, url, end, limit)
        raise ImageError(f"too many redirects for {url}")

    def _read_capped(
        self, response: requests.Response, url: str, deadline: float, limit: float
    ) -> bytes:
        """The body, within CLIPSEG_MAX_DOWNLOAD_BYTES and by `deadline` (requests' own timeout
        bounds each wait for bytes, not a server that drips them)."""
        cap = self.settings.max_download_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise ImageError(f"{url} is {declared} bytes, over CLIPSEG_MAX_DOWNLOAD_BYTES={cap}")
        buf = io.BytesIO()
        try:
            # read1 returns what has arrived (iter_content waits for whole 64 KiB chunks), so
            # the deadline is checked while a slow server drips its bytes
            while chunk := response.raw.read1(1 << 16, decode_content=True):
                buf.write(chunk)
                if buf.tell() > cap:
                    raise ImageError(f"{url} is over CLIPSEG_MAX_DOWNLOAD_BYTES={cap}")
                if time.monotonic() > deadline:
                    raise ImageError(
                        f"download of {url} took over {limit:.3g} s ({buf.tell()} bytes read; "
                        f"CLIPSEG_HTTP_TIMEOUT={self.settings.http_timeout:g} s)"
                    )
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ImageError(f"download of {url} failed: {exc}") from exc
        return buf.getvalue()


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _require_regular(mode: int, name: str) -> None:
    """DisallowedSourceError unless `mode` is a regular file's."""
    if stat.S_ISREG(mode):
        return
    kind = next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")
    raise DisallowedSourceError(f"local file {name} is {kind}, not a regular file")


def _to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB by clipseg's one conversion (16-bit grey as the browser shows it)."""
    # imported here, as the backend imports clipseg (and so torch) only where it needs it
    from clipseg.image_processing import image_to_rgb

    try:
        return np.asarray(image_to_rgb(image))
    except ValueError as exc:
        raise ImageError(f"unsupported image: {exc}") from exc


def _what_it_is(data: bytes) -> str:
    """Why bytes that PIL cannot identify are not an image, in words a user can act on."""
    head = data[:512].lstrip().lower()
    if not data:
        return "empty file, not an image"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page, not an image (a login page? check LABEL_STUDIO_API_KEY and the URL)"
    if head.startswith((b"{", b"[")):
        return f"JSON, not an image: {data[:120]!r}"
    formats = ", ".join(IMAGE_FORMATS)
    return f"not a supported image ({len(data)} bytes starting {data[:16]!r}; decoded: {formats})"


def open_header(data: bytes) -> Image.Image:
    """`PIL.Image.open` of IMAGE_FORMATS without PIL's own decompression-bomb check.

    Opening reads the header only (format, mode, size), no pixel: the caller checks the size
    against CLIPSEG_MAX_IMAGE_PIXELS before decoding. (PIL's check refuses above twice its
    MAX_IMAGE_PIXELS, about 179 Mpx, whatever CLIPSEG_MAX_IMAGE_PIXELS says, and with a message
    that names neither.) The plugins are tried in IMAGE_FORMATS order, as `Image.open` does.
    UnidentifiedImageError when none accepts the data."""
    Image.init()
    prefix = data[:16]
    fp = io.BytesIO(data)
    for fmt in IMAGE_FORMATS:
        factory, accept = Image.OPEN[fmt]
        accepted = accept(prefix) if accept is not None else True
        if not accepted or isinstance(accepted, str):  # a str: "looks like it, unsupported"
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # not this format after all (what Image.open does too)
    raise UnidentifiedImageError("cannot identify image data")


def decode_image(
    data: bytes,
    settings: Settings,
    source: str = "",
    budget: PixelBudget | None = None,
    wait: float = 0.0,
) -> LoadedImage:
    """Decode image bytes: format and pixel-count checks first, then EXIF orientation and RGB.

    `budget`: the image's pixels are reserved in it (waiting at most `wait` seconds; ImagesBusy
    when there is no room) before decoding, and held by the returned image."""
    name = source or "image"
    try:
        image = open_header(data)
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: {_what_it_is(data)}") from exc
    except (OSError, ValueError) as exc:
        raise ImageError(f"{name}: not a supported image ({exc})") from exc
    with image:
        width, height = image.size
        if width * height > settings.max_image_pixels:
            raise ImageError(
                f"{name} is {width}x{height} = {width * height} pixels, over "
                f"CLIPSEG_MAX_IMAGE_PIXELS={settings.max_image_pixels}"
            )
        reservation = None
        if budget is not None:
            try:
                reservation = budget.reserve(width * height, wait)
            except PixelBudgetExceeded as exc:
                raise ImagesBusy(f"{name}: {exc}; try again later") from exc
        try:
            image.load()
            oriented = ImageOps.exif_transpose(image)
            array = np.ascontiguousarray(_to_rgb(oriented))
        except BaseException as exc:
            if reservation is not None:
                reservation.release()
            if isinstance(exc, (OSError, ValueError, SyntaxError)):
                raise ImageError(f"{name}: corrupt image ({exc})") from exc
            raise
    return LoadedImage(array=array, source=source, reservation=reservation)


__all__ = [
    "IMAGE_FORMATS",
    "DisallowedSourceError",
    "ImageError",
    "ImageLoader",
    "ImagesBusy",
    "LoadedImage",
    "decode_image",
    "open_header",
    "parse_http_url",
]
