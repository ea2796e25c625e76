"""The exemplar store: replace per annotation, bound per label, atomic files, version."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.exemplars import ExemplarStore, LabelEmbedding, project_key


def _ex(label: str, value: float, dim: int = 4) -> LabelEmbedding:
    return LabelEmbedding(
        label=label, embedding=np.full(dim, value, np.float32), region="r", type="brushlabels"
    )


def test_project_key():
    assert project_key("1.1795712334") == project_key(1) == project_key({"id": 1}) == "1"
    for bad in (None, "../x", "a/b", ""):
        with pytest.raises(ValueError):
            project_key(bad)


def test_replace_bound_remove_and_version(tmp_path):
    store = ExemplarStore(tmp_path, max_per_label=3)
    assert store.version(1) == "ex0" and store.embeddings(1) == {}
    store.replace_annotation(1, 10, [_ex("cat", 1), _ex("dog", 2)], task_id=5, updated_at="t1")
    v1 = store.version(1)
    assert v1.startswith("ex2-") and store.counts(1) == {"cat": 1, "dog": 1}
    # same annotation again: replaced, not duplicated; the version still changes
    store.replace_annotation(1, 10, [_ex("cat", 3), _ex("cat", 4)], task_id=5, updated_at="t2")
    assert store.counts(1) == {"cat": 2}
    assert store.version(1) != v1
    np.testing.assert_array_equal(store.embeddings(1)["cat"][:, 0], [3, 4])
    assert store.known_annotation(1, 10, "t2") and not store.known_annotation(1, 10, "t1")
    # bounded per label, newest kept
    store.replace_annotation(1, 11, [_ex("cat", 5), _ex("cat", 6)])
    np.testing.assert_array_equal(store.embeddings(1)["cat"][:, 0], [4, 5, 6])
    # other projects are separate
    assert store.version(2) == "ex0"
    # survives a restart (a new store object over the same directory)
    again = ExemplarStore(tmp_path, max_per_label=3)
    assert again.version(1) == store.version(1)
    assert again.remove_annotations(1, [11]) == 2
    np.testing.assert_array_equal(again.embeddings(1)["cat"][:, 0], [4])
    assert store.counts(1) == {"cat": 1}  # the other object sees the change on disk
    assert again.annotation_ids(1) == {"10"}


def test_the_version_follows_the_content_not_the_deliveries(tmp_path):
    """The same webhook delivered twice stores the same exemplars again: same model_version."""
    store = ExemplarStore(tmp_path, max_per_label=3)
    store.replace_annotation(1, 10, [_ex("cat", 1), _ex("dog", 2)], task_id=5, updated_at="t1")
    first = store.version(1)
    store.replace_annotation(1, 10, [_ex("cat", 1), _ex("dog", 2)], task_id=5, updated_at="t1")
    assert store.version(1) == first
    store.replace_annotation(1, 10, [_ex("cat", 1), _ex("dog", 3)], task_id=5, updated_at="t2")
    assert store.version(1) != first


def test_files_are_written_atomically(tmp_path, monkeypatch):
    store = ExemplarStore(tmp_path, max_per_label=3)
    store.replace_annotation(1, 1, [_ex("cat", 1)])
    before = (tmp_path / "1.json").read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("backend.exemplars.os.replace", boom)
    with pytest.raises(OSError):
        store.replace_annotation(1, 2, [_ex("dog", 1)])
    assert (tmp_path / "1.json").read_text() == before
    assert json.loads(before)["format"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.json", "1.lock"]


def test_unicode_labels(tmp_path):
    store = ExemplarStore(tmp_path, max_per_label=2)
    store.replace_annotation("3.123", "a", [_ex("Собака 🐕", 1)])
    assert ExemplarStore(tmp_path, 2).counts(3) == {"Собака 🐕": 1}


def test_a_late_webhook_does_not_bring_back_a_deleted_annotation(tmp_path):
    store = ExemplarStore(tmp_path, max_per_label=3)
    store.replace_annotation(1, 7, [_ex("cat", 1)])
    store.remove_annotations(1, [7, 8], deleted=True)  # 8: deleted before it was ever stored
    assert store.replace_annotation(1, 8, [_ex("cat", 2)]) is False
    assert store.replace_annotation(1, 7, [_ex("cat", 3)]) is False
    assert store.counts(1) == {} and store.annotation_ids(1) == set()
    # a cancelled annotation is removed without being marked deleted: it may come back
    store.replace_annotation(1, 9, [_ex("dog", 1)])
    store.remove_annotations(1, [9])
    assert store.replace_annotation(1, 9, [_ex("dog", 2)]) is True
    assert store.counts(1) == {"dog": 1}


def test_an_older_version_of_an_annotation_does_not_replace_a_newer_one(tmp_path):
    store = ExemplarStore(tmp_path, max_per_label=3)
    newer, older = "2026-11-27T10:00:05.123456Z", "2026-11-27T10:00:01.000000Z"
    assert store.replace_annotation(1, 5, [_ex("cat", 2)], updated_at=newer) is True
    assert store.replace_annotation(1, 5, [_ex("cat", 1)], updated_at=older) is False
    np.testing.assert_array_equal(store.embeddings(1)["cat"][:, 0], [2])
    assert store.replace_annotation(1, 5, [_ex("dog", 3)], updated_at=newer) is True  # same time
    assert store.counts(1) == {"dog": 1}


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '{"format": 1}',
        '{"format": 1, "seq": 0, "annotations": {}, "exemplars": [{"label": "x"}]}',
        '{"format": 1, "seq": 1, "annotations": {}, "exemplars": '
        '[{"label": "x", "annotation": "1", "seq": 1, "embedding": "%%%"}]}',
        "[" * 5000,
        "not json",
    ],
)
def test_a_file_that_is_not_a_store_reads_as_empty_and_is_kept_aside(tmp_path, caplog, content):
    store = ExemplarStore(tmp_path, max_per_label=3)
    (tmp_path / "7.json").write_text(content)
    assert store.version(7) == "ex0" and store.embeddings(7) == {} and store.counts(7) == {}
    assert "exemplar store" in caplog.text
    store.replace_annotation(7, 1, [_ex("cat", 1)])
    assert store.counts(7) == {"cat": 1}
    [aside] = [p for p in tmp_path.iterdir() if ".unreadable-" in p.name]
    assert aside.read_text() == content  # nothing lost


def test_a_store_that_cannot_be_read_is_neither_moved_nor_overwritten(
    tmp_path, monkeypatch, caplog
):
    store = ExemplarStore(tmp_path, max_per_label=3)
    store.replace_annotation(1, 7, [_ex("cat", 1)])
    content = (tmp_path / "1.json").read_text()
    real_read = type(tmp_path).read_text

    def denied(path, *args, **kwargs):
        if path.name == "1.json":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "read_text", denied)
    fresh = ExemplarStore(tmp_path, max_per_label=3)  # no cached copy
    assert fresh.counts(1) == {} and "cannot be read" in caplog.text  # predictions go on
    with pytest.raises(PermissionError):  # the webhook fails, loudly
        fresh.replace_annotation(1, 8, [_ex("dog", 1)])
    monkeypatch.undo()
    assert (tmp_path / "1.json").read_text() == content
    assert not [p for p in tmp_path.iterdir() if ".unreadable-" in p.name]
