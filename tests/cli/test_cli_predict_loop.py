"""The batch loop with a stand-in annotator: outputs, resume, failures, overlays."""

from __future__ import annotations

import json

import numpy as np
from cli_helpers import ThresholdAnnotator
from PIL import Image
from pycocotools.coco import COCO

from backend.batch.predict import run_predict
from backend.batch.sources import SourceReader, collect_sources, task_image_value
from backend.batch.state import STATE_DIR
from backend.settings import Settings


def _run(sources, annotator, out, fingerprint="fp1", overlays=False, batch_size=2):
    return run_predict(
        sources,
        annotator,
        SourceReader(Settings(), sources),
        out,
        run_fingerprint=fingerprint,
        image_value=lambda s: task_image_value(s, None, ""),
        score_mode="confidence",
        batch_size=batch_size,
        overlays=overlays,
    )


def test_outputs_hold_every_image_and_exact_masks(scene_dir, tmp_path, fake_annotator):
    folder, scenes = scene_dir
    sources = collect_sources([str(folder)])
    out = tmp_path / "out"
    summary = _run(sources, fake_annotator, out)
    assert summary.ok and summary.done == 3 and summary.skipped == 0

    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [str(p.resolve()) for p, _ in scenes]
    for task in tasks:
        (pred,) = task["predictions"]
        assert pred["model_version"] == "fake-1" and pred["score"] == 0.75
        assert isinstance(task["meta"]["clipseg"]["uncertainty"], float)
        # the same answer as the server's: both figures beside the chosen score
        assert pred["confidence"] == task["meta"]["clipseg"]["confidence"] == 0.75
        assert pred["uncertainty"] == task["meta"]["clipseg"]["uncertainty"]

    coco = COCO(str(out / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["light", "dark"]
    for image_id, (_path, scene) in enumerate(scenes, start=1):
        info = coco.loadImgs(image_id)[0]
        assert (info["width"], info["height"]) == (64, 64)
        grey = scene.image.mean(axis=2)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            name = coco.loadCats(ann["category_id"])[0]["name"]
            want = grey > 180 if name == "light" else grey < 60
            assert (coco.annToMask(ann).astype(bool) == want).all()
            assert ann["area"] == want.sum() and ann["score"] == 0.75
    assert json.loads((out / "failures.json").read_text()) == []


def test_resume_skips_done_images_and_rebuilds_the_same_outputs(scene_dir, tmp_path):
    folder, _ = scene_dir
    sources = collect_sources([str(folder)])
    out = tmp_path / "out"
    first = ThresholdAnnotator()
    _run(sources, first, out)
    tasks_before = (out / "tasks.json").read_text()
    coco_before = (out / "coco.json").read_text()
    # an interrupted run: one record lost
    next(iter(sorted((out / STATE_DIR).glob("*.json")))).unlink()
    (out / "tasks.json").unlink()
    second = ThresholdAnnotator()
    summary = _run(sources, second, out)
    assert (summary.done, summary.skipped, second.seen) == (1, 2, 1)
    assert (out / "tasks.json").read_text() == tasks_before
    assert (out / "coco.json").read_text() == coco_before
    # other settings: everything is redone
    third = ThresholdAnnotator()
    assert _run(sources, third, out, fingerprint="fp2").done == 3 and third.seen == 3


def test_an_unreadable_image_is_listed_and_the_rest_written(scene_dir, tmp_path, fake_annotator):
    folder, scenes = scene_dir
    (folder / "zz-broken.png").write_bytes(b"not an image")
    sources = collect_sources([str(folder)])
    out = tmp_path / "out"
    summary = _run(sources, fake_annotator, out, batch_size=4)
    assert not summary.ok and summary.done == 3
    failures = json.loads((out / "failures.json").read_text())
    assert len(failures) == 1 and failures[0]["ref"].endswith("zz-broken.png")
    assert "not a supported image" in failures[0]["error"]
    assert len(json.loads((out / "tasks.json").read_text())) == 3
    # a rerun retries only the failed image
    (folder / "zz-broken.png").unlink()
    Image.fromarray(scenes[0][1].image).save(folder / "zz-broken.png")
    again = _run(collect_sources([str(folder)]), fake_annotator, out)
    assert again.ok and (again.done, again.skipped) == (1, 3)


def test_export_tasks_keep_their_data_and_id(scene_dir, tmp_path, fake_annotator):
    folder, scenes = scene_dir
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps(
            [
                {"id": 11, "data": {"image": str(scenes[0][0]), "caption": "x"}},
                {"id": 12, "data": {"caption": "no image"}},
            ]
        )
    )
    sources = collect_sources([str(export)])
    out = tmp_path / "out"
    summary = _run(sources, fake_annotator, out)
    assert [f.task_id for f in summary.failures] == [12]
    (task,) = json.loads((out / "tasks.json").read_text())
    assert task["data"] == {"image": str(scenes[0][0]), "caption": "x"}
    assert task["meta"]["clipseg"]["task_id"] == 11 and "id" not in task


def test_overlays_show_masks_and_legend(scene_dir, tmp_path, fake_annotator):
    folder, scenes = scene_dir
    sources = collect_sources([str(folder)])
    out = tmp_path / "out"
    _run(sources, fake_annotator, out)  # no overlays first: a later run draws the missing ones
    _run(sources, fake_annotator, out, overlays=True)
    pngs = sorted((out / "overlays").glob("*.png"))
    assert len(pngs) == 3
    tasks = json.loads((out / "tasks.json").read_text())
    for task, (_, scene) in zip(tasks, scenes, strict=True):
        picture = np.asarray(Image.open(out / task["meta"]["clipseg"]["overlay"]))
        assert picture.shape[0] > 64  # the legend is below the image
        grey = scene.image.mean(axis=2)
        untouched = ~((grey > 180) | (grey < 60))
        # away from masks and outlines the image is unchanged
        inner = untouched.copy()
        inner[1:-1, 1:-1] &= untouched[:-2, 1:-1] & untouched[2:, 1:-1]
        inner[1:-1, 1:-1] &= untouched[1:-1, :-2] & untouched[1:-1, 2:]
        assert (picture[:64, :64][inner] == scene.image[inner]).all()


def test_a_model_error_on_one_image_fails_only_that_image(scene_dir, tmp_path):
    folder, scenes = scene_dir

    class Picky(ThresholdAnnotator):
        def annotate(self, images):
            if any((image == scenes[1][1].image).all() for image in images):
                raise ValueError("cannot take this one")
            return super().annotate(images)

    sources = collect_sources([str(folder)])
    summary = _run(sources, Picky(), tmp_path / "out", batch_size=3)
    assert summary.done == 2
    (failure,) = summary.failures
    assert failure.ref == sources[1].ref
    assert failure.error == "prediction failed: ValueError: cannot take this one"
