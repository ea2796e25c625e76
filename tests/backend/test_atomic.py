"""`backend.atomic.write_json_atomic`: whole files only, and the permissions of a plain open()
(tempfile.mkstemp's 0600 must not reach the result: a store built on the host is read by the
backend's container as another user)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from backend.atomic import current_umask, write_json_atomic

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


@pytest.fixture
def umask():
    """Set a umask for the test (``umask(0o022)``); the process's own is restored after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027], ids=oct)
def test_a_new_file_gets_the_mode_of_a_plain_open(mask, umask, tmp_path):
    umask(mask)
    write_json_atomic(tmp_path / "sub" / "data.json", {"a": [1, 2]})
    with open(tmp_path / "plain.json", "w") as handle:
        handle.write("{}")
    assert _mode(tmp_path / "sub" / "data.json") == 0o666 & ~mask
    assert _mode(tmp_path / "sub" / "data.json") == _mode(tmp_path / "plain.json")
    assert json.loads((tmp_path / "sub" / "data.json").read_text()) == {"a": [1, 2]}


def test_an_existing_file_keeps_its_mode(umask, tmp_path):
    umask(0o022)
    path = tmp_path / "store.json"
    write_json_atomic(path, {"v": 1})
    path.chmod(0o640)
    write_json_atomic(path, {"v": 2})
    assert _mode(path) == 0o640 and json.loads(path.read_text()) == {"v": 2}


def test_current_umask_reads_without_changing_it(umask):
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027  # still in force


def test_current_umask_without_proc(umask, monkeypatch):
    """Where /proc/self/status is missing (macOS), the umask is set and restored under a lock."""
    from backend import atomic

    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(atomic, "open", no_proc, raising=False)
    umask(0o007)
    assert current_umask() == 0o007
    assert os.umask(0o007) == 0o007  # restored


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "tasks.json"
    write_json_atomic(path, [1])
    with pytest.raises(TypeError):
        write_json_atomic(path, [object()])
    assert json.loads(path.read_text()) == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks.json"]
