"""`clipseg-label predict` end to end through `main()`, over an oracle predictor that knows the
scenes (so the pipeline around the model must reproduce the ground truth): COCO and COCOeval,
Label Studio validation of the tasks, failures, resume, label configs, image URLs."""

from __future__ import annotations

import json

import pytest
from cli_helpers import SEEDS, coco_segm_ap
from label_studio_sdk.label_interface import LabelInterface
from pycocotools.coco import COCO

from backend import cli


def _labels(scenes) -> list[str]:
    names = sorted({o.name for _, s in scenes for o in s.objects})
    return names + ["purple cross"] if "purple cross" not in names else names


def _validate_tasks(tasks: list[dict], config: str) -> None:
    interface = LabelInterface(config)
    for task in tasks:
        for obj in interface.objects:
            assert task["data"].get(obj.value_name), f"task lacks data.{obj.value_name}"
        for pred in task["predictions"]:
            assert interface.validate_prediction(pred, return_errors=True) == []
            assert 0.0 <= pred["score"] <= 1.0 and pred["model_version"]


def test_predict_folder_gives_valid_tasks_and_exact_coco(tmp_path, scenes, oracle, capsys):
    out = tmp_path / "out"
    labels = _labels(scenes)
    code = cli.main(
        ["predict", str(tmp_path / "images"), "--labels", ",".join(labels), "--out", str(out)]
        + ["--overlays", "--min-area", "1", "--region-mode", "semantic"]
    )
    assert code == 0, capsys.readouterr().err
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == len(SEEDS)
    _validate_tasks(tasks, (out / "label_config.xml").read_text())
    assert {r["type"] for t in tasks for r in t["predictions"][0]["result"]} == {"brushlabels"}

    coco = json.loads((out / "coco.json").read_text())
    COCO(str(out / "coco.json"))  # loads in pycocotools
    assert [c["name"] for c in coco["categories"]] == labels
    by_file = {str(p.resolve()): s for p, s in scenes}
    # the oracle's maps are the targets: every mask must come out exactly
    assert coco_segm_ap(coco, by_file, semantic=True) == pytest.approx(1.0)
    assert len(list((out / "overlays").glob("*.png"))) == len(SEEDS)
    assert json.loads((out / "failures.json").read_text()) == []


def test_resume_skips_done_images(tmp_path, scenes, oracle):
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "images"), "--labels", "red circle,star", "--out", str(out)]
    assert cli.main(args + ["-q"]) == 0
    assert oracle[-1].predictor.images_set == len(SEEDS)
    before = (out / "tasks.json").read_text()
    assert cli.main(args + ["-q"]) == 0
    assert oracle[-1].predictor.images_set == 0  # nothing predicted again
    assert (out / "tasks.json").read_text() == before
    # another threshold: every image again
    assert cli.main(args + ["-q", "--threshold", "0.5"]) == 0
    assert oracle[-1].predictor.images_set == len(SEEDS)


def test_failures_are_listed_and_the_rest_written(tmp_path, scenes, oracle, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps(
            [
                {"id": 1, "data": {"image": str(scenes[0][0])}},
                {"id": 2, "data": {"image": "http://127.0.0.1:9/missing.png"}},  # refused port
                {"id": 3, "data": {"note": "no image"}},
            ]
        )
    )
    out = tmp_path / "out"
    code = cli.main(
        ["predict", str(export), str(broken), str(scenes[1][0]), "--labels", "red circle"]
        + ["--out", str(out), "-q"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "3 failed" in err and "broken.png" in err and "127.0.0.1:9" in err
    failures = json.loads((out / "failures.json").read_text())
    assert {f["ref"].split("/")[-1] for f in failures} == {
        "missing.png",
        "export.json#2",
        "broken.png",
    }
    task3 = next(f for f in failures if f["task_id"] == 3)
    assert "no data.image" in task3["error"]
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [str(scenes[0][0]), str(scenes[1][0].resolve())]
    assert len(json.loads((out / "coco.json").read_text())["images"]) == 2


def test_malformed_export_is_a_usage_error(tmp_path, oracle, capsys):
    export = tmp_path / "export.json"
    export.write_text('[{"id": 1, "data": {"image": "a.png"}')  # truncated
    code = cli.main(["predict", str(export), "--labels", "x", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "export.json is not valid JSON" in capsys.readouterr().err


def test_label_config_controls_and_local_files_prefix(tmp_path, scenes, oracle, monkeypatch):
    config = tmp_path / "config.xml"
    config.write_text(
        '<View><Image name="img" value="$photo"/>'
        '<PolygonLabels name="poly" toName="img"><Label value="round" prompt="circle"/>'
        '<Label value="pointy" prompt="star" predicted_values="triangle"/></PolygonLabels>'
        '<RectangleLabels name="box" toName="img" model_score_threshold="0.5">'
        '<Label value="round" prompt="circle"/></RectangleLabels>'
        '<BrushLabels name="skip" toName="img" model_skip="true"><Label value="x"/></BrushLabels>'
        "</View>"
    )
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = cli.main(
        ["predict", "images", "--label-config", str(config), "--out", str(out), "-q"]
        + ["--image-root-url", "/data/local-files/?d="]
    )
    assert code == 0
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks[0]["data"] == {"photo": f"/data/local-files/?d=images/scene-{SEEDS[0]}.png"}
    _validate_tasks(tasks, config.read_text())
    kinds = {(r["from_name"], r["type"]) for t in tasks for r in t["predictions"][0]["result"]}
    assert kinds <= {("poly", "polygonlabels"), ("box", "rectanglelabels")}
    assert ("poly", "polygonlabels") in kinds
    coco = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["round", "pointy"]
    assert coco["images"][0]["file_name"] == tasks[0]["data"]["photo"]


def test_nothing_to_predict_is_a_usage_error(tmp_path, scenes, oracle, capsys):
    config = tmp_path / "config.xml"
    config.write_text(
        '<View><Image name="img" value="$image"/>'
        '<Choices name="c" toName="img"><Choice value="a"/></Choices></View>'
    )
    code = cli.main(
        ["predict", str(tmp_path / "images"), "--label-config", str(config), "--out", "o"]
    )
    assert code == 2 and "nothing to predict" in capsys.readouterr().err


def test_outputs_and_stores_get_the_permissions_of_plain_files(tmp_path, scenes, oracle):
    """With umask 022 every JSON written is 0644 (not mkstemp's 0600): a store built here is
    readable by a backend container running as another user, outputs by a web server."""
    import os
    import stat

    from backend.batch.sources import collect_sources

    old = os.umask(0o022)
    try:
        store = tmp_path / "model-data"
        out = tmp_path / "out"
        code = cli.main(
            ["predict", str(tmp_path / "images"), "--labels", "star", "--out", str(out), "-q"]
            + ["--store", str(store)]
        )
        assert code == 0
        # an exemplar store, written by the backend's own ExemplarStore
        backend = oracle[-1]
        backend.store.replace_annotation("7", 1, [], task_id=1, updated_at="t0")
    finally:
        os.umask(old)
    written = [out / "tasks.json", out / "coco.json", out / "failures.json"]
    written += sorted((out / ".state").glob("*.json"))
    written += sorted(store.rglob("*.json"))
    assert len(written) == 3 + len(collect_sources([str(tmp_path / "images")])) + 1
    assert {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {
        str(p.relative_to(tmp_path)): "0o644" for p in written
    }
