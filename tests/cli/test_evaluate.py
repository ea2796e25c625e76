"""`clipseg-label evaluate` (`backend.batch.evaluate`): what an annotator must fix, counted.

Hand-made masks with known answers (perfect, an extra region, a missed object, IoU 0.4), the
three result types of one shape agreeing, COCO truth (encoded by pycocotools, the oracle) equal
to Label Studio truth, bad files and bad results, task matching, and the demo model end to end.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from cli_helpers import write_scenes
from pycocotools import mask as mask_utils

from backend import cli
from backend.batch import evaluate
from backend.formats.labelstudio import brush_result
from clipseg.evaluate import OverlapCounts

H, W = 60, 100  # not square: x and y must not be swapped anywhere


def box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def brush(mask: np.ndarray, label: str, rid: str | None = None) -> dict:
    return brush_result(
        mask, label, from_name="tag", to_name="image", original_width=W, original_height=H,
        result_id=rid,
    )  # fmt: skip


def rectangle(x0: int, y0: int, x1: int, y1: int, label: str, rid: str = "r") -> dict:
    value = {"x": 100 * x0 / W, "y": 100 * y0 / H, "width": 100 * (x1 - x0) / W,
             "height": 100 * (y1 - y0) / H, "rotation": 0, "rectanglelabels": [label]}  # fmt: skip
    return _frame("rectanglelabels", value, rid)


def polygon(x0: int, y0: int, x1: int, y1: int, label: str, rid: str = "p") -> dict:
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    points = [[100 * x / W, 100 * y / H] for x, y in corners]
    return _frame("polygonlabels", {"points": points, "polygonlabels": [label]}, rid)


def _frame(kind: str, value: dict, rid: str) -> dict:
    return {"id": rid, "from_name": "tag", "to_name": "image", "type": kind,
            "original_width": W, "original_height": H, "value": value}  # fmt: skip


def task(task_id, truth, predictions=None, image=None, **extra) -> dict:
    out = {
        "id": task_id,
        "data": {"image": image or f"/data/local-files/?d=img/{task_id}.png"},
        "annotations": [{"id": 100 + task_id, "result": truth, "was_cancelled": False}],
        **extra,
    }
    if predictions is not None:
        out["predictions"] = [{"model_version": "m1", "result": predictions}]
    return out


def run_cli(tmp_path, tasks, *args: str, truth_file: str = "export.json"):
    path = tmp_path / truth_file
    path.write_text(json.dumps(tasks))
    out = tmp_path / "figures.json"
    code = cli.main(["evaluate", str(path), "--json", str(out), "-q", *args])
    return code, (json.loads(out.read_text()) if out.exists() else None)


A, B = box(10, 10, 40, 40), box(60, 20, 90, 50)  # two objects


def test_perfect_predictions_score_pq_1_and_no_false_regions(tmp_path):
    truth = [brush(A, "cat"), brush(B, "dog")]
    code, fig = run_cli(tmp_path, [task(1, truth, truth), task(2, truth[:1], truth[:1])])
    assert code == 0
    assert fig["tasks"] == 2 and fig["matched_by"] == {"id": 2}
    overall = fig["overall"]
    assert overall["pq"] == overall["sq"] == overall["rq"] == 1.0
    assert (overall["tp"], overall["fp"], overall["fn"]) == (3, 0, 0)
    assert overall["false_per_task"] == 0 and overall["semantic_iou"] == 1.0
    assert fig["labels"]["dog"]["tp"] == 1


def test_an_extra_region_is_a_false_region(tmp_path):
    truth = [brush(A, "cat")]
    extra = [brush(A, "cat"), brush(B, "cat")]
    code, fig = run_cli(tmp_path, [task(1, truth, extra), task(2, truth, truth)])
    assert code == 0
    o = fig["overall"]
    assert (o["tp"], o["fp"], o["fn"]) == (2, 1, 0)
    assert o["false_per_task"] == 0.5 and o["missed_per_task"] == 0
    assert o["rq"] == pytest.approx(2 / 2.5) and o["pq"] == pytest.approx(2 / 2.5)
    rows = {r["task_id"]: r for r in fig["per_task"]}
    assert rows[1]["fp"] == 1 and rows[1]["false_labels"] == "cat x1" and rows[2]["fp"] == 0


def test_a_missed_object_and_a_region_of_the_wrong_label(tmp_path):
    truth = [brush(A, "cat"), brush(B, "dog")]
    pred = [brush(A, "cat"), brush(B, "cat")]  # the dog found as a cat: false + missed
    code, fig = run_cli(tmp_path, [task(1, truth, pred[:1]), task(2, truth, pred)])
    assert code == 0
    assert (fig["overall"]["tp"], fig["overall"]["fp"], fig["overall"]["fn"]) == (2, 1, 2)
    assert fig["labels"]["dog"]["fn"] == 2 and fig["labels"]["dog"]["pq"] == 0
    assert fig["labels"]["dog"]["missed_per_task"] == 1.0
    assert fig["labels"]["cat"]["fp"] == 1


@pytest.mark.parametrize(("x1", "matched"), [(18, False), (22, True)])  # IoU 0.4 and 0.6
def test_iou_at_most_one_half_is_a_false_and_a_missed_region(tmp_path, x1, matched):
    truth = [rectangle(10, 10, 30, 30, "cat")]  # 20 x 20
    pred = [rectangle(10, 10, x1, 30, "cat")]  # 8 x 20 (IoU 0.4) or 12 x 20 (0.6)
    code, fig = run_cli(tmp_path, [task(1, truth, pred)])
    assert code == 0
    o = fig["overall"]
    iou = (x1 - 10) / 20
    assert (o["tp"], o["fp"], o["fn"]) == ((1, 0, 0) if matched else (0, 1, 1))
    assert o["sq"] == pytest.approx(iou if matched else 0.0)
    assert fig["labels"]["cat"]["semantic_iou"] == pytest.approx(iou)  # pixels, not matches


def test_brush_polygon_and_rectangle_of_one_shape_agree(tmp_path):
    truth_mask = box(12, 8, 44, 40)
    figures = []
    for make_truth in (lambda: brush(truth_mask, "cat"), lambda: polygon(12, 8, 44, 40, "cat")):
        for pred in (brush(box(10, 10, 40, 40), "cat"), polygon(10, 10, 40, 40, "cat"),
                     rectangle(10, 10, 40, 40, "cat")):  # fmt: skip
            code, fig = run_cli(tmp_path, [task(1, [make_truth()], [pred])])
            assert code == 0
            figures.append(fig["overall"])
    expected = (box(12, 8, 44, 40) & A).sum() / (box(12, 8, 44, 40) | A).sum()
    assert all(f == figures[0] for f in figures), figures
    assert figures[0]["tp"] == 1 and figures[0]["sq"] == pytest.approx(expected, abs=1e-4)


def test_semantic_iou_is_accumulated_over_tasks_not_averaged():
    ev = evaluate.Evaluation()
    ev.add([("cat", box(0, 0, 10, 10))], [("cat", box(0, 0, 10, 10))])  # 100 / 100
    ev.add([("cat", box(0, 0, 10, 10))], [("cat", box(0, 0, 40, 40))])  # 100 / 1600
    (counts, overlap) = ev.by_label()["cat"]
    assert overlap == OverlapCounts(200, 1700)
    assert ev.summary()["labels"]["cat"]["semantic_iou"] == pytest.approx(200 / 1700, abs=1e-4)
    assert counts.tp == 1 and counts.fp == 1 and counts.fn == 1


def _coco_truth(tasks_masks: dict[int, list[tuple[str, np.ndarray]]], polygon_of=None) -> dict:
    """COCO ground truth of the masks, encoded by pycocotools (the oracle)."""
    names = sorted({lab for items in tasks_masks.values() for lab, _ in items})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    images, anns = [], []
    for tid, items in tasks_masks.items():
        images.append({"id": 10 * tid, "file_name": f"{tid}.png", "width": W, "height": H})
        for lab, mask in items:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            seg = {"size": rle["size"], "counts": rle["counts"].decode()}
            if polygon_of is not None and lab == polygon_of:  # a polygon: its pixel-edge outline
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                seg = [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]
            anns.append({"id": len(anns) + 1, "image_id": 10 * tid, "iscrowd": 0,
                         "category_id": names.index(lab) + 1, "segmentation": seg})  # fmt: skip
    return {"images": images, "annotations": anns, "categories": cats}


def test_coco_truth_equals_labelstudio_truth(tmp_path):
    rng = np.random.default_rng(0)
    blob = np.zeros((H, W), bool)
    blob[5:30, 50:95] = rng.random((25, 45)) > 0.2  # ragged: holes, not a polygon
    masks = {1: [("cat", A), ("dog", B)], 2: [("cat", blob), ("dog", box(5, 35, 30, 58))]}
    preds = {1: [brush(box(12, 10, 40, 40), "cat"), brush(B, "cat")],
             2: [brush(blob, "cat"), brush(box(5, 33, 30, 58), "dog")]}  # fmt: skip
    export = [task(t, [brush(m, lab) for lab, m in items]) for t, items in masks.items()]
    pred_tasks = [
        {"data": {"image": f"/tmp/elsewhere/{t}.png"}, "predictions": [{"result": preds[t]}]}
        for t in masks
    ]
    (tmp_path / "pred.json").write_text(json.dumps(pred_tasks))
    pred_arg = ["--predictions", str(tmp_path / "pred.json")]
    code, from_ls = run_cli(tmp_path, export, *pred_arg)
    assert code == 0 and from_ls["matched_by"] == {"file name": 2}
    for polygon_of in (None, "dog"):
        coco = _coco_truth(masks, polygon_of)
        code, from_coco = run_cli(tmp_path, coco, *pred_arg, truth_file="coco.json")
        assert code == 0 and from_coco["matched_by"] == {"file name": 2}
        assert from_coco["overall"] == from_ls["overall"]
        assert from_coco["labels"] == from_ls["labels"]
    # the oracle: pycocotools' IoU of each matched pair, summed
    expected = 0.0
    for t, items in masks.items():
        gt = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for _, m in items]
        for p in preds[t]:
            (label,) = p["value"]["brushlabels"]
            dt = evaluate.draw(evaluate.TaskRegions(t, None, (p,)), H, W, file="-")[0][0][1]
            dt_rle = mask_utils.encode(np.asfortranarray(dt.astype(np.uint8)))
            ious = mask_utils.iou([dt_rle], gt, [0] * len(gt))[0]
            best = max(
                (iou for iou, (lab, _) in zip(ious, items, strict=True) if lab == label), default=0
            )
            expected += best if best > 0.5 else 0.0
    o = from_ls["overall"]
    assert (o["tp"], o["fp"], o["fn"]) == (3, 1, 1)
    assert o["sq"] * o["tp"] == pytest.approx(expected, abs=1e-3)


def test_latest_accepted_annotation_counts_and_tasks_without_a_match_are_listed(tmp_path, capsys):
    t1 = task(1, [brush(A, "cat")], [brush(B, "cat")])
    t1["annotations"] = [
        {"id": 1, "result": [brush(B, "cat")], "updated_at": "2026-01-02T00:00:00Z"},
        {"id": 2, "result": [brush(A, "cat")], "updated_at": "2026-01-01T00:00:00Z"},
        {"id": 3, "result": [], "was_cancelled": True, "updated_at": "2026-02-01T00:00:00Z"},
    ]  # the accepted one is id 1 (B), which the prediction matches
    t2 = task(2, [brush(A, "cat")])  # annotated, no prediction
    t3 = {"id": 3, "data": {"image": "x.png"}, "predictions": [{"result": []}]}  # not annotated
    code, fig = run_cli(tmp_path, [t1, t2, t3])
    assert code == 1  # an annotated task could not be evaluated
    assert fig["tasks"] == 1 and fig["overall"]["pq"] == 1.0
    assert fig["truth_without_predictions"] == ["task 2"]
    assert fig["predictions_without_truth"] == ["task 3"]
    assert fig["truth_not_annotated"] == ["task 3"]
    err = capsys.readouterr().err
    assert "1 annotated tasks have no prediction" in err and "task 2" in err


def test_bad_results_are_reported_and_skipped(tmp_path, capsys):
    garbage = brush(A, "cat", rid="garbage")
    garbage["value"]["rle"] = [255, 255, 255, 1, 2]
    far = polygon(10, 10, 40, 40, "cat", rid="far")
    far["value"]["points"][0] = [1e9, 5.0]
    unknown = brush(B, "cow", rid="cow")
    truth = [brush(A, "cat"), brush(B, "dog")]
    pred = [brush(A, "cat"), garbage, far, unknown, brush(B, "dog")]
    code, fig = run_cli(tmp_path, [task(1, truth, pred)], "--labels", "cat,dog")
    assert code == 1
    assert (fig["overall"]["tp"], fig["overall"]["fp"], fig["overall"]["fn"]) == (2, 0, 0)
    problems = {p["result"]: p["message"] for p in fig["problems"]}
    assert set(problems) == {"garbage", "far", "cow"}
    assert "rle" in problems["garbage"].lower() and "outside the image" in problems["far"]
    assert "unknown label 'cow'" in problems["cow"]
    assert fig["per_task"][0]["skipped_results"] == 3
    err = capsys.readouterr().err
    assert "3 results left out" in err and "result far" in err


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("not json at all", "is not valid JSON"),
        ('{"info": {}, "licenses": []}', "neither a Label Studio JSON export"),
        ("[1, 2, 3]", "none of its 3 items is a task"),
        ('"a string"', "neither a Label Studio JSON export"),
    ],
)
def test_a_file_that_is_neither_an_export_nor_coco_is_a_clear_error(
    tmp_path, capsys, content, words
):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert cli.main(["evaluate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and words in err and err.startswith("clipseg-label evaluate: error:")
    good = tmp_path / "good.json"
    good.write_text(json.dumps([task(1, [brush(A, "cat")], [])]))
    assert cli.main(["evaluate", str(good), "--predictions", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_nothing_matched_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "pred.json"
    path.write_text(json.dumps([{"data": {"image": "other.png"}, "predictions": [{"result": []}]}]))
    code, _ = run_cli(tmp_path, [task(1, [brush(A, "cat")])], "--predictions", str(path))
    assert code == 2 and "no task of" in capsys.readouterr().err


def test_csv_has_one_row_per_task(tmp_path):
    export = tmp_path / "export.json"
    truth = [brush(A, "cat")]
    export.write_text(json.dumps([task(1, truth, truth), task(2, truth, [])]))
    out = tmp_path / "tasks.csv"
    assert cli.main(["evaluate", str(export), "--csv", str(out), "-q"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["task_id"], r["tp"], r["fp"], r["fn"], r["pq"]) for r in rows] == [
        ("1", "1", "0", "0", "1.0"),
        ("2", "0", "0", "1", "0.0"),
    ]


def test_the_table_names_every_label_and_the_overall_row(tmp_path, capsys):
    export = tmp_path / "export.json"
    export.write_text(json.dumps([task(1, [brush(A, "cat")], [brush(A, "cat"), brush(B, "dog")])]))
    assert cli.main(["evaluate", str(export)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["cat"][1:4] == ["1.000", "1.000", "1.000"]
    assert lines["dog"][1:8] == ["0.000", "0.000", "0.000", "0", "1", "0", "1.00"]
    assert lines["overall"][4:7] == ["1", "1", "0"]


def test_demo_model_end_to_end(tmp_path):
    """`--model demo` runs predict's code path on the truth's tasks; its figures are those of
    `evaluate --predictions` on predict's own tasks.json for the same tasks."""

    scenes = write_scenes(tmp_path / "images", [10**9, 10**9 + 1], size=128)
    tasks = []
    for n, (path, scene) in enumerate(scenes, start=1):
        results = [
            brush_result(o.mask, o.name, from_name="tag", to_name="image", original_width=128,
                         original_height=128)
            for o in scene.objects if o.mask.any()
        ]  # fmt: skip
        tasks.append({"id": n, "data": {"image": str(path)}, "annotations": [{"result": results}]})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    out = tmp_path / "pred"
    figures = tmp_path / "figures.json"
    args = ["evaluate", str(export), "--model", "demo", "--device", "cpu", "--out", str(out)]
    assert cli.main([*args, "--json", str(figures), "-q"]) == 0
    fig = json.loads(figures.read_text())
    assert fig["tasks"] == 2 and fig["matched_by"] == {"id": 2}
    assert fig["model_versions"][0].startswith("clipseg-demo")
    assert fig["overall"]["tp"] > 0 and 0 < fig["overall"]["pq"] <= 1
    labels = {o.name for _, s in scenes for o in s.objects}
    assert set(fig["labels"]) >= labels  # prompts: every label of the truth
    again = tmp_path / "again.json"
    assert cli.main(["evaluate", str(export), "--predictions", str(out / "tasks.json"),
                     "--json", str(again), "-q"]) == 0  # fmt: skip
    assert json.loads(again.read_text())["overall"] == fig["overall"]


def test_coco_predictions_at_another_size_and_bad_coco_annotations(tmp_path, capsys):
    """COCO pixels are those of its image: a COCO file at twice the size is drawn there and
    scaled to the truth's grid; an unknown category and a garbage segmentation are skipped."""
    big = np.kron(A, np.ones((2, 2), bool))  # A at (2H, 2W)
    rle = mask_utils.encode(np.asfortranarray(big.astype(np.uint8)))
    coco = {
        "images": [{"id": 7, "file_name": "1.png", "width": 2 * W, "height": 2 * H}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1,
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}},
            {"id": 2, "image_id": 7, "category_id": 9, "segmentation": []},
            {"id": 3, "image_id": 7, "category_id": 1, "segmentation": {"size": [1, 1],
                                                                         "counts": "zz"}},
        ],
    }  # fmt: skip
    (tmp_path / "pred.json").write_text(json.dumps(coco))
    code, fig = run_cli(
        tmp_path, [task(1, [brush(A, "cat")])], "--predictions", str(tmp_path / "pred.json")
    )
    assert code == 1
    assert fig["matched_by"] == {"file name": 1} and fig["overall"]["pq"] == 1.0
    messages = sorted(p["message"] for p in fig["problems"])
    assert len(messages) == 2
    assert "RLE size" in messages[0] and "unknown category_id 9" in messages[1]


def test_model_version_picks_the_predictions(tmp_path):
    t = task(1, [brush(A, "cat")])
    t["predictions"] = [
        {"model_version": "old", "result": [brush(A, "cat")], "created_at": "2026-01-01"},
        {"model_version": "new", "result": [brush(B, "cat")], "created_at": "2026-01-02"},
    ]
    _, newest = run_cli(tmp_path, [t])
    _, old = run_cli(tmp_path, [t], "--model-version", "old")
    assert newest["model_versions"] == ["new"] and newest["overall"]["fp"] == 1
    assert old["model_versions"] == ["old"] and old["overall"]["pq"] == 1.0


def test_label_config_names_the_known_labels(tmp_path):
    config = tmp_path / "config.xml"
    config.write_text(
        '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
        '<Label value="cat"/></BrushLabels></View>'
    )
    pred = [brush(A, "cat"), brush(B, "dog", rid="dog")]
    code, fig = run_cli(tmp_path, [task(1, [brush(A, "cat")], pred)], "--label-config", str(config))
    assert code == 1 and [p["result"] for p in fig["problems"]] == ["dog"]
    assert fig["overall"]["pq"] == 1.0
