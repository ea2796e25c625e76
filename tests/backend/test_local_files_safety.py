"""Local files that are not regular files, null bytes and server paths (issue 16, items 4 and 8):
a FIFO under LOCAL_FILES_DOCUMENT_ROOT is refused at once instead of blocking a prediction slot,
and messages that go back to clients name files relative to the root."""

from __future__ import annotations

import os
import time

import pytest
from backend_helpers import png_bytes

from backend.images import DisallowedSourceError, ImageError, ImageLoader
from backend.settings import Settings


@pytest.fixture
def loader(tmp_path):
    root = tmp_path / "secret-server-dir" / "files"
    root.mkdir(parents=True)
    (root / "ok.png").write_bytes(png_bytes(32, 24))
    return ImageLoader(Settings(local_files_document_root=str(root))), root


def _task(name):
    return {"id": 1, "data": {"image": f"/data/local-files/?d={name}"}}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_at_once(loader):
    images, root = loader
    os.mkfifo(root / "pipe.png")
    started = time.monotonic()
    with pytest.raises(DisallowedSourceError, match="not a regular file"):
        images.load(_task("pipe.png"), "image", None)
    assert time.monotonic() - started < 2


def test_a_device_is_refused(loader):
    images, root = loader
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    (root / "zero.png").symlink_to("/dev/zero")  # resolves outside the root: refused either way
    with pytest.raises(DisallowedSourceError):
        images.load(_task("zero.png"), "image", None)


def test_a_null_byte_is_a_clear_refusal(loader):
    images, _ = loader
    with pytest.raises(DisallowedSourceError, match="null byte"):
        images.load(_task("ok.png%00.txt"), "image", None)


def test_messages_do_not_show_server_paths(loader):
    images, root = loader
    with pytest.raises(ImageError) as info:
        images.load(_task("missing.png"), "image", None)
    assert "missing.png" in str(info.value) and "secret-server-dir" not in str(info.value)
    assert images.load(_task("ok.png"), "image", None).width == 32
