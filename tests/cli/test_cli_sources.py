"""Where batch images come from: folders, globs, lists, exports, URLs; and data.image values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.batch.sources import (
    ImageSource,
    SourceError,
    SourceReader,
    collect_sources,
    task_image_value,
)
from backend.images import ImageError
from backend.settings import Settings


def test_folder_glob_and_list_give_the_same_images(scene_dir, tmp_path):
    folder, scenes = scene_dir
    want = [str(p.resolve()) for p, _ in scenes]
    assert [s.ref for s in collect_sources([str(folder)])] == want
    assert [s.ref for s in collect_sources([str(folder / "*.png")])] == want
    listing = tmp_path / "list.txt"
    listing.write_text("# images\n" + "\n".join(f"images/{p.name}" for p, _ in scenes) + "\n\n")
    assert [s.ref for s in collect_sources([str(listing)])] == want


def test_duplicates_are_dropped_and_urls_kept(scene_dir):
    folder, scenes = scene_dir
    url = "https://example.com/a.png"
    refs = [s.ref for s in collect_sources([str(folder), str(scenes[0][0]), url, url])]
    assert refs == [str(p.resolve()) for p, _ in scenes] + [url]


def test_export_tasks_keep_their_task_and_flag_missing_images(tmp_path):
    export = tmp_path / "export.json"
    tasks = [
        {"id": 7, "data": {"image": "/data/upload/1/a.png"}},
        {"id": 8, "data": {"text": "no image here"}},
        {"id": 9, "data": {"img": "/data/local-files/?d=b.jpg"}},
    ]
    export.write_text(json.dumps(tasks))
    sources = collect_sources([str(export)])
    assert [s.task["id"] for s in sources] == [7, 8, 9]
    assert sources[0].ref == "/data/upload/1/a.png" and sources[0].problem is None
    assert sources[1].problem is not None and "task 8" in sources[1].problem
    assert sources[2].ref == "/data/local-files/?d=b.jpg"
    with pytest.raises(ImageError, match="task 8"):
        SourceReader(Settings()).read(sources[1])


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not valid JSON"), ('{"tasks": 1}', "expected a list of tasks")],
)
def test_malformed_export_is_a_source_error(tmp_path, content, message):
    export = tmp_path / "export.json"
    export.write_text(content)
    with pytest.raises(SourceError, match=message):
        collect_sources([str(export)])


def test_missing_inputs_name_the_problem(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        collect_sources([str(tmp_path / "nope.png")])
    with pytest.raises(SourceError, match="matches no image"):
        collect_sources([str(tmp_path / "*.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        collect_sources([str(tmp_path / "empty")])


def test_task_image_value_prefix_and_root(tmp_path):
    path = tmp_path / "sub" / "x.png"
    src = ImageSource(ref=str(path))
    assert task_image_value(src, None, "") == str(path)
    assert task_image_value(src, str(tmp_path), "/data/local-files/?d=") == (
        "/data/local-files/?d=sub/x.png"
    )
    with pytest.raises(SourceError, match="not under --image-root"):
        task_image_value(src, str(tmp_path / "other"), "/data/local-files/?d=")
    url = ImageSource(ref="https://example.com/a.png")
    assert task_image_value(url, str(tmp_path), "/data/local-files/?d=") == url.ref


def test_task_image_value_percent_encodes_behind_url_prefixes(tmp_path):
    """Behind a URL prefix the relative path is encoded as Label Studio's local-files storage
    writes data.image (quote, '/' kept): a space or '#' would otherwise break the URL, and
    `push --to existing` would not find the tasks a storage sync created. Cloud keys and plain
    relative paths stay as they are; readers (parse_qs) decode the value back to the path."""
    from urllib.parse import parse_qs, urlparse

    src = ImageSource(ref=str(tmp_path / "my photos" / "a#1 & b.png"))
    local = task_image_value(src, str(tmp_path), "/data/local-files/?d=")
    assert local == "/data/local-files/?d=my%20photos/a%231%20%26%20b.png"
    assert parse_qs(urlparse(local).query)["d"] == ["my photos/a#1 & b.png"]
    assert task_image_value(src, str(tmp_path), "https://cdn.example.com/img/") == (
        "https://cdn.example.com/img/my%20photos/a%231%20%26%20b.png"
    )
    assert (
        task_image_value(src, str(tmp_path), "s3://bucket/") == "s3://bucket/my photos/a#1 & b.png"
    )
    assert task_image_value(src, str(tmp_path), "") == "my photos/a#1 & b.png"


def test_reader_decodes_files_and_reports_unreadable_ones(scene_dir, tmp_path):
    folder, scenes = scene_dir
    reader = SourceReader(Settings())
    image = reader.read(ImageSource(ref=str(scenes[0][0])))
    assert image.array.shape == (64, 64, 3)
    assert (image.array == scenes[0][1].image).all()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="broken.png"):
        reader.read(ImageSource(ref=str(broken)))
    with pytest.raises(ImageError, match="relative to Label Studio"):
        reader.read(ImageSource(ref="/data/upload/1/a.png"))


def test_reader_reads_local_files_urls_under_the_root(scene_dir):
    folder, scenes = scene_dir
    settings = Settings(local_files_document_root=str(folder.parent))
    src = ImageSource(ref=f"/data/local-files/?d=images/{scenes[1][0].name}")
    assert (SourceReader(settings).read(src).array == scenes[1][1].image).all()
    assert Path(scenes[1][0]).exists()


def test_a_folder_with_images_only_in_subfolders_says_add_recursive(scene_dir, tmp_path):
    folder, scenes = scene_dir
    nested = tmp_path / "nested"
    for i, (path, _) in enumerate(scenes):
        (nested / f"part-{i % 2}").mkdir(parents=True, exist_ok=True)
        (nested / f"part-{i % 2}" / path.name).write_bytes(path.read_bytes())
    with pytest.raises(
        SourceError, match=r"in folder .*nested \(3 in subfolders: add --recursive\)"
    ):
        collect_sources([str(nested)])
    assert len(collect_sources([str(nested)], recursive=True)) == 3
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(SourceError) as info:
        collect_sources([str(tmp_path / "empty")])
    assert "subfolders" not in str(info.value)


def test_image_suffixes_are_those_of_the_formats_the_backend_decodes():
    from PIL import Image

    from backend.batch.sources import IMAGE_SUFFIXES
    from backend.images import IMAGE_FORMATS

    registered = Image.registered_extensions()
    formats = {registered.get(suffix) for suffix in IMAGE_SUFFIXES}
    assert formats == set(IMAGE_FORMATS)  # none outside the list, every format reachable


@pytest.mark.parametrize("suffix", [".tga", ".pgm", ".jfif"])
def test_every_decodable_suffix_is_collected_and_read(suffix, scene_dir, tmp_path):
    from PIL import Image

    folder, scenes = scene_dir
    other = tmp_path / "other"
    other.mkdir()
    target = other / f"scene{suffix}"
    Image.open(scenes[0][0]).save(target)
    (source,) = collect_sources([str(other)])
    assert source.ref == str(target.resolve())
    image = SourceReader(Settings()).read(source)
    assert image.array.shape == (64, 64, 3)
