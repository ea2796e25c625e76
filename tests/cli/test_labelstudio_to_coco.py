"""Label Studio export -> COCO: exact brush masks (holes and areas kept), polygons and rectangles
rasterised at the original size, source selection, file names, and errors naming the task and
result (raised, or skipped and collected)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.batch.export_coco import ConversionProblem, image_file_name, labelstudio_to_coco
from backend.formats.coco import rle_to_mask
from backend.formats.labelstudio import brush_result, polygon_results, rectangle_result

H, W = 60, 80
COMMON = {"to_name": "image", "original_width": W, "original_height": H}


def ring() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    d2 = (xx - 40) ** 2 + (yy - 30) ** 2
    return (d2 <= 20**2) & (d2 > 9**2)


def task(task_id, results, cancelled=False, predictions=None, image="/data/upload/3/ab12-cat.png"):
    return {
        "id": task_id,
        "data": {"image": image},
        "annotations": [{"id": 100 + task_id, "result": results, "was_cancelled": cancelled}],
        "predictions": predictions or [],
    }


def test_brush_ring_keeps_its_hole_and_exact_area() -> None:
    m = ring()
    coco = labelstudio_to_coco([task(1, [brush_result(m, "cat", from_name="brush", **COMMON)])])
    (ann,) = coco["annotations"]
    assert np.array_equal(rle_to_mask(ann["segmentation"]), m)
    assert ann["area"] == int(m.sum()) and not rle_to_mask(ann["segmentation"])[30, 40]
    assert ann["iscrowd"] == 0 and ann["category_id"] == 1
    ys, xs = np.nonzero(m)
    assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert coco["images"] == [{"id": 1, "file_name": "ab12-cat.png", "width": W, "height": H}]
    assert coco["categories"][0]["name"] == "cat"


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 25), st.integers(1, 25), st.integers(0, 2**32 - 1), st.floats(0.05, 1))
def test_property_brush_export_to_coco_is_exact(height, width, seed, p) -> None:
    m = np.random.default_rng(seed).random((height, width)) < p
    m[0, 0] = True
    r = brush_result(
        m, "cat", from_name="b", to_name="i", original_width=width, original_height=height
    )
    (ann,) = labelstudio_to_coco([task(7, [r])])["annotations"]
    assert np.array_equal(rle_to_mask(ann["segmentation"]), m)
    assert ann["area"] == int(m.sum())


def test_polygons_and_rectangles_rasterise_at_the_original_size() -> None:
    block = np.zeros((H, W), bool)
    block[10:30, 20:50] = True
    results = [
        *polygon_results(block, "dog", from_name="poly", **COMMON),
        rectangle_result(block, "cat", from_name="rect", **COMMON),
    ]
    coco = labelstudio_to_coco([task(1, results)], labels=["cat", "dog"])
    by_cat = {a["category_id"]: a for a in coco["annotations"]}
    for cat in (1, 2):  # cat = rectangle, dog = polygon: both are exactly the block
        assert np.array_equal(rle_to_mask(by_cat[cat]["segmentation"]), block)
        assert by_cat[cat]["area"] == 600 and by_cat[cat]["bbox"] == [20, 10, 30, 20]


def test_rotated_rectangle_turns_about_its_top_left_corner() -> None:
    value = {
        "x": 50,
        "y": 50,
        "width": 25,
        "height": 10,
        "rotation": 90,
        "rectanglelabels": ["cat"],
    }
    r = {"id": "r1", "type": "rectanglelabels", "value": value, **COMMON, "from_name": "rect"}
    (ann,) = labelstudio_to_coco([task(1, [r])])["annotations"]
    # 20 px wide, 6 px high at (40, 30), turned clockwise: 6 wide to the left, 20 down
    assert ann["bbox"] == [34, 30, 6, 20] and ann["area"] == 120


def test_sources_cancelled_and_scores() -> None:
    m = ring()
    r = brush_result(m, "cat", from_name="brush", **COMMON)
    pr = brush_result(m, "cat", from_name="brush", score=0.75, **COMMON)
    tasks = [
        task(1, [r]),
        task(2, [r], cancelled=True),  # cancelled: no image at all
        task(3, [], predictions=[{"result": [pr], "score": 0.5}]),  # empty annotation: no objects
        {"id": 4, "data": {"image": "x.png"}, "annotations": []},  # unlabelled
    ]
    problems: list[ConversionProblem] = []
    gt = labelstudio_to_coco(tasks, problems=problems)
    assert [i["id"] for i in gt["images"]] == [1]
    assert [p.task_id for p in problems] == [3]  # empty annotation: the image size is unknown
    assert all("score" not in a for a in gt["annotations"])
    pred = labelstudio_to_coco(tasks, source="predictions")
    assert [i["id"] for i in pred["images"]] == [3]
    assert pred["annotations"][0]["score"] == 0.75
    no_region_score = dict(pr)
    del no_region_score["score"]
    tasks[2]["predictions"][0]["result"] = [no_region_score]
    assert labelstudio_to_coco(tasks, source="predictions")["annotations"][0]["score"] == 0.5


def test_non_region_results_are_ignored() -> None:
    choice = {
        "id": "c",
        "type": "choices",
        "from_name": "q",
        "to_name": "image",
        "value": {"choices": ["ok"]},
    }
    r = brush_result(ring(), "cat", from_name="brush", **COMMON)
    assert len(labelstudio_to_coco([task(1, [choice, r])])["annotations"]) == 1


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/data/upload/3/ab12-cat.png", "ab12-cat.png"),
        ("https://host/images/dog%201.jpg?token=x", "dog 1.jpg"),
        ("/data/local-files/?d=photos/set1/bird.png", "bird.png"),
        ("s3://bucket/a/b/c.jpeg", "c.jpeg"),
    ],
)
def test_image_file_name(url: str, name: str) -> None:
    assert image_file_name(url) == name


def bad_results() -> dict[str, tuple[dict, str]]:
    good = brush_result(ring(), "cat", from_name="brush", result_id="good1", **COMMON)
    malformed = {
        **good,
        "id": "bad-rle",
        "value": {**good["value"], "rle": good["value"]["rle"][:20]},
    }
    unknown = {**good, "id": "kp", "type": "keypointlabels"}
    no_size = {k: v for k, v in good.items() if k != "original_width"}
    no_size["id"] = "nosize"
    wrong_size = {**good, "id": "wrong", "original_width": W + 1}
    poly = polygon_results(ring(), "cat", from_name="poly", **COMMON)[0]
    short_poly = {**poly, "id": "short", "value": {**poly["value"], "points": [[1, 1], [2, 2]]}}
    return {
        "malformed": (malformed, "task 9, result bad-rle: .*truncated"),
        "unknown": (unknown, "task 9, result kp: unsupported result type 'keypointlabels'"),
        "no size": (no_size, "task 9, result nosize: result has no original_width"),
        "wrong size": (wrong_size, "task 9, result wrong: .*do not match"),
        "short polygon": (short_poly, "task 9, result short: .*3 or more"),
    }


@pytest.mark.parametrize("name", list(bad_results()))
def test_bad_results_raise_or_are_skipped(name: str) -> None:
    bad, message = bad_results()[name]
    good_task = task(1, [brush_result(ring(), "cat", from_name="brush", **COMMON)])
    tasks = [good_task, task(9, [bad])]
    with pytest.raises(ValueError, match=message):
        labelstudio_to_coco(tasks)
    problems: list[ConversionProblem] = []
    coco = labelstudio_to_coco(tasks, errors="skip", problems=problems)
    assert [i["id"] for i in coco["images"]] == [1] and len(coco["annotations"]) == 1
    assert len(problems) == 1 and problems[0].task_id == 9 and problems[0].result_id == bad["id"]


def test_unknown_label_and_bad_arguments() -> None:
    t = task(1, [brush_result(ring(), "zebra", from_name="brush", **COMMON)])
    with pytest.raises(ValueError, match="task 1.*'zebra' is not in labels"):
        labelstudio_to_coco([t], labels=["cat"])
    with pytest.raises(ValueError, match="source"):
        labelstudio_to_coco([t], source="drafts")
    with pytest.raises(ValueError, match="errors"):
        labelstudio_to_coco([t], errors="ignore")
