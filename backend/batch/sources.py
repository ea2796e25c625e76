"""Where the images of a batch come from, and how each is read.

An input is one of:

- a folder: every image file in it (recursively with ``recursive=True``), sorted;
- a glob (``"scenes/*.png"``, ``"data/**/*.jpg"``);
- a text file (``.txt``/``.lst``/``.list``): one path or URL per line, ``#`` comments;
- a Label Studio JSON export (``.json``): a list of tasks whose ``data`` holds the image; the task
  (its data, id, annotations) is kept so that results can go back to it;
- an ``http(s)://`` URL, or a Label Studio relative URL (``/data/upload/...``,
  ``/data/local-files/?d=...``);
- one image file.

Inputs that cannot be read at all (a missing file, an export that is not JSON) raise
`SourceError` (a usage error). A task of an export without an image reference becomes an
`ImageSource` with ``problem`` set: it is reported as a failure while the others are processed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from backend.errors import SourceError
from backend.images import ImageError, ImageLoader, LoadedImage, decode_image
from backend.ls_client import LabelStudioClient, configured_client
from backend.settings import Settings

#: File suffixes of the formats the backend decodes (`backend.images.IMAGE_FORMATS`: JPEG, PNG,
#: WebP, BMP, GIF, TIFF, PPM and its PBM/PGM/PNM siblings, TGA).
IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".webp",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tga",
)
LIST_SUFFIXES = (".txt", ".lst", ".list")
DEFAULT_IMAGE_KEY = "image"


@dataclass(frozen=True)
class ImageSource:
    """One image to process.

    ``ref`` is what to read: a local path (absolute) or a URL. ``task`` is the Label Studio task it
    came from (None for plain files). ``problem`` is set when the reference itself is unusable.
    """

    ref: str
    task: dict[str, Any] | None = field(default=None, compare=False)
    origin: str = ""  # the input it came from, for messages
    problem: str | None = None

    @property
    def is_url(self) -> bool:
        return is_url(self.ref)

    @property
    def key(self) -> str:
        """A stable id for the state file: the reference, plus the task id for export tasks."""
        task_id = (self.task or {}).get("id")
        text = self.ref if task_id is None else f"{self.ref}\x1ftask={task_id}"
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def is_url(ref: str) -> bool:
    """http(s) URLs and Label Studio's own relative URLs (``/data/...``)."""
    parsed = urlparse(ref)
    return parsed.scheme in ("http", "https") or ref.startswith(("/data/", "/storage-data/"))


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _no_images_message(folder: Path, item: str, recursive: bool) -> str:
    """Why a folder gave no image, with the fix when its images are in subfolders."""
    text = f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {item}"
    if not recursive:
        nested = len(_images_in(folder, recursive=True))
        if nested:
            text += f" ({nested} in subfolders: add --recursive)"
    return text


def _task_ref(task: Any, image_key: str | None) -> tuple[str | None, str | None]:
    """(reference, problem) of one export task."""
    if not isinstance(task, dict):
        return None, f"not a task object: {str(task)[:80]!r}"
    data = task.get("data")
    if not isinstance(data, dict):
        return None, f"task {task.get('id')} has no 'data' object"
    keys = [image_key] if image_key else [DEFAULT_IMAGE_KEY, *sorted(data)]
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            if key == image_key or key == DEFAULT_IMAGE_KEY or _looks_like_image(value):
                return value.strip(), None
    want = f"data.{image_key}" if image_key else "data.image (or another image URL in data)"
    return None, f"task {task.get('id')} has no {want}; pass --image-key if it uses another key"


def task_image_ref(task: Any, image_key: str | None = None) -> str | None:
    """The image reference of an export task: ``data[image_key]``, else ``data.image`` or
    another image URL in its data; None when it has none."""
    return _task_ref(task, image_key)[0]


def _looks_like_image(value: str) -> bool:
    path = urlparse(value).path.lower()
    return path.endswith(IMAGE_SUFFIXES) or "/data/local-files" in value or "/data/upload" in value


def read_export(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The task list of a Label Studio JSON export; raises `SourceError` naming the problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"cannot read {p}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SourceError(
            f"{p} is not valid JSON ({exc}); export the project from Label Studio as JSON"
        ) from exc
    if isinstance(data, dict) and "data" in data:
        data = [data]  # a single task
    if not isinstance(data, list):
        raise SourceError(
            f"{p} is not a Label Studio JSON export: expected a list of tasks, got "
            f"{type(data).__name__}"
        )
    return data


def _export_sources(path: Path, image_key: str | None) -> list[ImageSource]:
    out = []
    for i, task in enumerate(read_export(path)):
        ref, problem = _task_ref(task, image_key)
        if problem is not None:
            task = task if isinstance(task, dict) else {"id": None}
            out.append(ImageSource(ref=f"{path}#{i}", task=task, origin=str(path), problem=problem))
        else:
            out.append(ImageSource(ref=str(ref), task=task, origin=str(path)))
    return out


def _list_sources(path: Path) -> list[ImageSource]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ref = line if is_url(line) else str((path.parent / line).resolve())
        out.append(ImageSource(ref=ref, origin=str(path)))
    return out


def collect_sources(
    inputs: Sequence[str], *, recursive: bool = False, image_key: str | None = None
) -> list[ImageSource]:
    """Every image named by ``inputs`` (see the module doc), in input order, duplicates dropped.

    Raises `SourceError` for an input that names nothing readable (so that a typo is not a
    silently empty run).
    """
    out: list[ImageSource] = []
    seen: set[str] = set()
    for item in inputs:
        found: list[ImageSource]
        path = Path(item)
        if is_url(item):
            found = [ImageSource(ref=item, origin=item)]
        elif path.is_dir():
            found = [
                ImageSource(ref=str(p.resolve()), origin=item) for p in _images_in(path, recursive)
            ]
            if not found:
                raise SourceError(_no_images_message(path, item, recursive))
        elif path.is_file() and path.suffix.lower() == ".json":
            found = _export_sources(path, image_key)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            found = _list_sources(path)
        elif path.is_file():
            found = [ImageSource(ref=str(path.resolve()), origin=item)]
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            found = [
                ImageSource(ref=str(Path(m).resolve()), origin=item)
                for m in matches
                if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES
            ]
            if not found:
                raise SourceError(f"the pattern {item!r} matches no image file")
        else:
            raise SourceError(
                f"{item}: no such file, folder or URL (give image files, folders, globs, "
                ".txt lists, Label Studio .json exports or http(s) URLs)"
            )
        for src in found:
            if src.key not in seen:
                seen.add(src.key)
                out.append(src)
    return out


class SourceReader:
    """Reads an `ImageSource` into a decoded image (EXIF-oriented RGB, pixel cap checked).

    Local files are read directly. Label Studio relative URLs need ``settings.label_studio_url``
    (and its API key), or, for ``/data/local-files/?d=``, ``settings.local_files_document_root``.
    Absolute http(s) URLs are downloaded with the backend's limits; their hosts count as allowed
    because the user named them.
    """

    def __init__(self, settings: Settings, sources: Iterable[ImageSource] = ()) -> None:
        hosts = {urlparse(s.ref).netloc.lower() for s in sources if s.ref.startswith("http")}
        hosts.discard("")
        self.settings = replace(
            settings, allowed_hosts=tuple(sorted(set(settings.allowed_hosts) | hosts))
        )
        self.loader = ImageLoader(self.settings)
        self.loader.reveal_paths = True  # the operator's own run: say where files were looked for
        self.ls: LabelStudioClient | None = configured_client(self.settings)

    def read(self, source: ImageSource) -> LoadedImage:
        """The decoded image; raises `ImageError` with a message naming the source."""
        if source.problem is not None:
            raise ImageError(source.problem)
        if source.is_url:
            task_id = (source.task or {}).get("id")
            data = self.loader.read_bytes(source.ref, task_id, self.ls)
        else:
            try:
                data = Path(source.ref).read_bytes()
            except OSError as exc:
                raise ImageError(f"cannot read {source.ref}: {exc.strerror or exc}") from exc
        return decode_image(data, self.settings, source.ref)


def task_image_value(source: ImageSource, image_root: str | None, image_root_url: str) -> str:
    """What ``data.image`` of the output task holds for ``source``.

    Export tasks and URLs keep their reference. A local path becomes ``image_root_url`` +
    the path relative to ``image_root`` (default: the absolute path; with an ``image_root_url``
    and no ``image_root``, relative to the current folder), e.g. ``/data/local-files/?d=`` +
    ``scenes/0001.png`` for Label Studio's local file serving.

    Behind a URL prefix (a relative one such as ``/data/local-files/?d=``, or http(s)) the path
    is percent-encoded with ``/`` kept, as Label Studio's local-files storage writes it
    (``quote(relative_path)``): ``my photos/a#1.png`` -> ``my%20photos/a%231.png``, so the value
    is a working URL and equals the ``data.image`` of the task a storage sync creates for the
    same file. Behind a cloud prefix (``s3://``, ``gs://``, ...) the key is kept as is, as Label
    Studio's cloud storages write it.
    """
    if (source.task is not None and source.problem is None) or source.is_url:
        return source.ref
    path = Path(source.ref)
    if image_root is None and not image_root_url:
        return str(path)
    root = Path(image_root or os.getcwd()).resolve()
    try:
        rel = path.resolve().relative_to(root).as_posix()
    except ValueError as exc:
        raise SourceError(
            f"{path} is not under --image-root {root}; set --image-root to a folder that holds "
            "every image (Label Studio's LOCAL_FILES_DOCUMENT_ROOT)"
        ) from exc
    if image_root_url and urlparse(image_root_url).scheme in ("", "http", "https"):
        rel = quote(rel)
    return f"{image_root_url}{rel}"
