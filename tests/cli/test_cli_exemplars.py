"""`clipseg-label exemplars build/show`: an exemplar store made offline from an export, in the
backend's layout (a backend with the same model reads it), then used by predict."""

from __future__ import annotations

import json

import numpy as np
from cli_helpers import oracle_backend

from backend import cli
from backend.formats.brush import encode_brush_rle
from backend.settings import Settings


def _export(scenes) -> list[dict]:
    tasks = []
    for i, (path, scene) in enumerate(scenes, start=1):
        size = scene.image.shape[0]
        results = []
        for j, obj in enumerate(scene.objects):
            results.append(
                {
                    "id": f"t{i}r{j}",
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
            )
        tasks.append(
            {
                "id": i,
                "data": {"image": f"/data/local-files/?d=images/{path.name}"},
                "annotations": [{"id": 100 + i, "result": results, "updated_at": "t0"}],
            }
        )
    return tasks


def test_build_then_show_then_predict_with_them(tmp_path, scenes, oracle, capsys):
    export = tmp_path / "export.json"
    tasks = _export(scenes)
    tasks.append(
        {
            "id": 99,
            "data": {"image": "/data/local-files/?d=images/gone.png"},
            "annotations": [{"id": 199, "result": tasks[0]["annotations"][0]["result"]}],
        }
    )
    export.write_text(json.dumps(tasks))
    store = tmp_path / "model-data"
    code = cli.main(
        ["exemplars", "build", "--export", str(export), "--images-root", str(tmp_path)]
        + ["--store", str(store), "--project", "7", "--model", "demo", "-q"]
    )
    assert code == 1  # the task whose image is gone
    err = capsys.readouterr().err
    assert "gone.png" in err
    want: dict[str, int] = {}
    for _, scene in scenes:
        for obj in scene.objects:
            want[obj.name] = want.get(obj.name, 0) + 1

    # the backend's own store object, for the same model, reads them
    reader = oracle_backend([s for _, s in scenes], Settings(model_dir=str(store)))
    assert reader.store.counts("7") == want
    assert reader.model_version("7").endswith(reader.store.version("7"))

    assert cli.main(["exemplars", "show", "--store", str(store), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["project"] == "7" and entry["labels"] == dict(sorted(want.items()))
    assert entry["annotations"] == len(scenes)
    assert cli.main(["exemplars", "show", "--store", str(store)]) == 0
    assert "project 7" in capsys.readouterr().out

    out = tmp_path / "out"
    code = cli.main(
        ["predict", str(tmp_path / "images"), "--labels", "star", "--out", str(out), "-q"]
        + ["--store", str(store), "--exemplars-project", "7"]
    )
    assert code == 0
    tasks_out = json.loads((out / "tasks.json").read_text())
    assert tasks_out[0]["predictions"][0]["model_version"] == reader.model_version("7")


def test_show_without_a_store_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["exemplars", "show", "--store", str(tmp_path)]) == 2
    assert "no exemplar stores" in capsys.readouterr().err


def test_build_failures_are_all_listed_with_the_exports_references(
    tmp_path, scenes, oracle, capsys
):
    """No file holds them, so stderr lists every one, as the export names its image."""
    result = _export(scenes)[0]["annotations"][0]["result"]
    missing = [
        {
            "id": 200 + i,
            "data": {"image": f"/data/upload/1/missing-{i}.png"},
            "annotations": [{"id": 300 + i, "result": result}],
        }
        for i in range(25)
    ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(_export(scenes) + missing))
    store = tmp_path / "model-data"
    code = cli.main(
        ["exemplars", "build", "--export", str(export), "--images-root", str(tmp_path)]
        + ["--store", str(store), "--project", "7", "-q"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "25 failed:" in err and "listed in" not in err and "more" not in err
    for i in range(25):
        assert f"\n  /data/upload/1/missing-{i}.png: " in err
    assert "/data/local-files/?d=upload" not in err
    assert str(tmp_path / "upload" / "1" / "missing-0.png") in err  # where it was looked for
