"""`clipseg-label export-coco`: a Label Studio export of the scenes' exact masks comes back as
the same masks in COCO (COCOeval AP 1.0 against the scenes), malformed tasks are reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import coco_segm_ap
from pycocotools.coco import COCO

from backend import cli
from backend.formats.brush import encode_brush_rle
from clipseg.demo.scenes import make_scene


def _brush(obj, size: int, score: float | None = None) -> dict:
    item = {
        "id": f"r{id(obj) % 10**6}",
        "from_name": "tag",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": size,
        "original_height": size,
        "value": {
            "format": "rle",
            "rle": encode_brush_rle(obj.mask.astype(np.uint8) * 255),
            "brushlabels": [obj.name],
        },
    }
    if score is not None:
        item["score"] = score
    return item


@pytest.fixture
def export(tmp_path):
    scenes = {f"/data/upload/1/s{seed}.png": make_scene(seed, size=48) for seed in (3, 4, 5)}
    tasks = []
    for i, (url, scene) in enumerate(scenes.items(), start=1):
        results = [_brush(o, 48) for o in scene.objects]
        tasks.append(
            {
                "id": i,
                "data": {"image": url},
                "annotations": [{"id": 10 + i, "result": results, "was_cancelled": False}],
                "predictions": [{"result": [_brush(o, 48, 0.5) for o in scene.objects]}],
            }
        )
    return tasks, scenes


def test_annotations_to_exact_coco(tmp_path, export, capsys):
    tasks, scenes = export
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    out = tmp_path / "coco.json"
    assert cli.main(["export-coco", str(path), "--out", str(out)]) == 0
    coco = COCO(str(out))
    data = json.loads(out.read_text())
    assert len(data["images"]) == 3 and all(a["iscrowd"] == 0 for a in data["annotations"])
    for image in data["images"]:
        scene = scenes[f"/data/upload/1/{image['file_name']}"]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert len(anns) == len(scene.objects)
        for ann, obj in zip(anns, scene.objects, strict=True):
            assert (coco.annToMask(ann).astype(bool) == obj.mask).all()
    # the same masks scored as detections: a perfect AP against the scenes
    for ann in data["annotations"]:
        ann["score"] = 1.0
    by_file = {
        image["file_name"]: scenes[f"/data/upload/1/{image['file_name']}"]
        for image in data["images"]
    }
    assert coco_segm_ap(data, by_file) == pytest.approx(1.0)


def test_predictions_carry_scores(tmp_path, export):
    tasks, _ = export
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    out = tmp_path / "preds.json"
    assert cli.main(["export-coco", str(path), "--out", str(out), "--from", "predictions"]) == 0
    assert {a["score"] for a in json.loads(out.read_text())["annotations"]} == {0.5}


def test_malformed_tasks_are_reported_and_the_rest_written(tmp_path, export, capsys):
    tasks, _ = export
    tasks[1]["annotations"][0]["result"][0]["value"]["rle"] = [1, 2, 3]  # corrupt brush RLE
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    out = tmp_path / "coco.json"
    assert cli.main(["export-coco", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 tasks left out" in err and "task 2" in err
    assert [i["id"] for i in json.loads(out.read_text())["images"]] == [1, 3]
    assert cli.main(["export-coco", str(path), "--out", str(out), "--strict"]) == 2
    assert "task 2" in capsys.readouterr().err


def test_an_export_that_is_not_json_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "export.json"
    path.write_text("id,image\n1,a.png\n")
    assert cli.main(["export-coco", str(path), "--out", str(tmp_path / "c.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
