"""CLIPSegBackend logic over a stand-in predictor: controls, prompts, thresholds, regions,
scores, exemplars from webhooks, interactive context, bad tasks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from backend_helpers import CONFIG, check_result_item, fake_backend, png_bytes
from PIL import Image

from backend.formats import decode_brush_rle

W, H = 96, 64


@pytest.fixture
def local_root(tmp_path):
    root = tmp_path / "files"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(png_bytes(W, H))
    return root


def _task(i=1, name="a.png"):
    return {"id": i, "data": {"image": f"/data/local-files/?d=images/{name}"}}


def _red_mask():
    # png_bytes draws the red block at rows H//4 .. H//4 + H//2, cols W//4 .. W//4 + W//3
    mask = np.zeros((H, W), bool)
    mask[H // 4 : H // 4 + H // 2, W // 4 : W // 4 + W // 3] = True
    return mask


def test_predict_every_control_once_per_image(tmp_path, local_root):
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    [pred] = backend.predict([_task()], project="1.123", label_config=CONFIG)
    types = sorted((r["from_name"], r["type"]) for r in pred["result"])
    # cat: brush, polygon, rectangle; dog: nothing; KeyPointLabels: ignored
    assert types == [("box", "rectanglelabels"), ("poly", "polygonlabels"), ("tag", "brushlabels")]
    for item in pred["result"]:
        check_result_item(item, W, H)
        assert item["value"][item["type"]] == ["cat"]
        assert item["score"] == pytest.approx(0.9, abs=1e-5)
    brush = next(r for r in pred["result"] if r["type"] == "brushlabels")
    np.testing.assert_array_equal(decode_brush_rle(brush["value"]["rle"], H, W) > 0, _red_mask())
    rect = next(r for r in pred["result"] if r["type"] == "rectanglelabels")["value"]
    assert rect["x"] == pytest.approx(100 * (W // 4) / W) and rect["width"] == pytest.approx(
        100 * (W // 3) / W
    )
    assert pred["model_version"] == "clipseg-fake@0123abcd+ex0"
    assert pred["score"] == pred["confidence"] == pytest.approx(0.9, abs=1e-5)
    assert 0 <= pred["uncertainty"] <= 1
    calls = [c[0] for c in backend.predictor.calls]
    assert calls.count("set_image") == 1 and calls.count("predict_embeddings") == 1
    # one text embedding per distinct prompt, all in one call
    assert [c[1] for c in backend.predictor.calls if c[0] == "embed_text"] == [["cat", "dog"]]


def test_prompt_attributes_threshold_skip_and_unicode(tmp_path, local_root):
    config = (
        '<View><Image name="image" value="$image"/>'
        '<BrushLabels name="tag" toName="image">'
        '<Label value="Кот" prompt="a red thing" predicted_values="blue thing"/></BrushLabels>'
        '<PolygonLabels name="strict" toName="image" model_score_threshold="0.95">'
        '<Label value="cat"/></PolygonLabels>'
        '<RectangleLabels name="off" toName="image" model_skip="true"><Label value="cat"/>'
        "</RectangleLabels></View>"
    )
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    [pred] = backend.predict([_task()], project=1, label_config=config)
    # "a red thing" -> 0.9, "blue thing" -> 0.1: averaged 0.5 > 0.3; strict 0.95: nothing
    assert [(r["from_name"], r["value"]["brushlabels"]) for r in pred["result"]] == [
        ("tag", ["Кот"])
    ]
    assert pred["result"][0]["score"] == pytest.approx(0.5, abs=1e-5)
    [texts] = [c[1] for c in backend.predictor.calls if c[0] == "embed_text"]
    assert texts == ["a red thing", "blue thing", "cat"]


def test_bad_tasks_get_answers_without_result_in_order(tmp_path, local_root):
    """Label Studio stores nothing for an answer without `result`, so a failed task is asked
    for again later instead of keeping an empty prediction of this model_version."""
    (local_root / "images" / "corrupt.png").write_bytes(b"\x89PNG garbage")
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    tasks = [
        _task(1),
        _task(2, "corrupt.png"),
        {"id": 3, "data": {"other": "x"}},
        _task(4, "missing.png"),
        {"id": 5, "data": {"image": "http://example.invalid/x.png"}},
        _task(6, "../../etc/passwd"),
        _task(7),
    ]
    preds = backend.predict(tasks, project=1, label_config=CONFIG)
    assert len(preds) == 7
    assert ["result" in p for p in preds] == [True, False, False, False, False, False, True]
    assert preds[0]["result"] and preds[6]["result"]
    assert all(p["model_version"] == preds[0]["model_version"] for p in preds)
    errors = [p.get("error", "") for p in preds]
    assert "not a supported image" in errors[1] and "no data key 'image'" in errors[2]
    assert all(errors[1:6]) and not errors[0] and not errors[6]


def test_a_failed_interactive_request_still_has_a_result(tmp_path, local_root):
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    context = {"result": [_textarea("a cat")]}
    [pred] = backend.predict(
        [_task(1, "missing.png")], context=context, project=1, label_config=CONFIG
    )
    assert pred["result"] == [] and "missing.png" in pred["error"]


def test_a_context_on_no_image_of_the_config_is_not_interactive(tmp_path, local_root):
    """One rule for the answers and the failures of a request (`is_interactive`): a context
    whose items point at no `<Image>` of the config asks for ordinary predictions, so a task
    that fails gets no `result` (Label Studio asks again), not an empty one that it would store
    as this model_version's prediction."""
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    context = {"result": [_textarea("a cat", to_name="elsewhere")]}
    tasks = [_task(1), _task(2, "missing.png")]
    ok, bad = backend.predict(tasks, context=context, project=1, label_config=CONFIG)
    [plain] = backend.predict([_task(1)], project=1, label_config=CONFIG)
    assert ok["result"] and _labels_of(ok) == _labels_of(plain)  # the configured prompts
    assert "result" not in bad and "missing.png" in bad["error"]


def test_tasks_past_the_predict_budget_are_left_for_later(tmp_path, local_root, monkeypatch):
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root), predict_budget=10.0)
    # a clock that each encoded image moves 6 s on: the budget runs out after the second task
    now = [1000.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])
    real_set_image = backend.predictor.set_image

    def set_image(image):
        now[0] += 6.0
        real_set_image(image)

    monkeypatch.setattr(backend.predictor, "set_image", set_image)
    preds = backend.predict([_task(i) for i in range(1, 6)], project=1, label_config=CONFIG)
    assert ["result" in p for p in preds] == [True, True, False, False, False]
    assert "CLIPSEG_PREDICT_BUDGET=10 s" in preds[2]["error"]
    assert sum(c[0] == "set_image" for c in backend.predictor.calls) == 2


def test_a_config_without_supported_controls_answers_every_task_without_result(
    tmp_path, local_root
):
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    config = '<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
    config += '<Choice value="x"/></Choices></View>'
    for label_config in (config, "<View><Image", ""):
        preds = backend.predict([_task(1), _task(2)], project=1, label_config=label_config)
        assert [("result" in p, bool(p["error"])) for p in preds] == [(False, True)] * 2


def _annotation(ann_id=1, updated="t1"):
    mask = np.zeros((H, W), np.uint8)
    mask[5:20, 5:30] = 255
    from backend.formats import encode_brush_rle

    return {
        "id": ann_id,
        "updated_at": updated,
        "result": [
            {
                "id": "b1",
                "from_name": "tag",
                "to_name": "image",
                "type": "brushlabels",
                "original_width": W,
                "original_height": H,
                "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": ["dog"]},
            },
            {
                "id": "p1",
                "from_name": "poly",
                "to_name": "image",
                "type": "polygonlabels",
                "original_width": W,
                "original_height": H,
                "value": {"points": [[10, 10], [40, 10], [40, 40]], "polygonlabels": ["cat"]},
            },
        ],
    }


def test_webhooks_grow_replace_and_remove_exemplars(tmp_path, local_root):
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    project = {"id": 1, "label_config": CONFIG}
    before = backend.model_version("1.99")
    [pred] = backend.predict([_task()], project="1.99", label_config=CONFIG)
    assert not any(r["value"].get("brushlabels") == ["dog"] for r in pred["result"])

    backend.fit(
        "ANNOTATION_CREATED", {"annotation": _annotation(), "task": _task(), "project": project}
    )
    assert backend.store.counts(1) == {"dog": 1, "cat": 1}
    after = backend.model_version("1.99")
    assert after != before and after.startswith("clipseg-fake@0123abcd+ex2-")
    # dog now has an exemplar: 0.5 * 0.1 + 0.5 * 0.9 = 0.5 > 0.3 on the red block
    [pred] = backend.predict([_task()], project="1.99", label_config=CONFIG)
    assert pred["model_version"] == after
    assert any(r["value"].get("brushlabels") == ["dog"] for r in pred["result"])

    backend.fit(
        "ANNOTATION_UPDATED",
        {"annotation": _annotation(updated="t2"), "task": _task(), "project": project},
    )
    assert backend.store.counts(1) == {"dog": 1, "cat": 1}  # replaced, not duplicated
    # the same regions again: the same content, so the same model_version (issue 16 item 7:
    # a changed version makes Label Studio ask for every task's predictions again)
    assert backend.model_version(1) == after
    backend.fit("ANNOTATIONS_DELETED", {"annotations": [{"id": 1}], "project": project})
    assert backend.store.counts(1) == {} and backend.model_version(1).endswith("+ex0")


def test_a_malformed_region_of_an_annotation_spoils_only_itself(tmp_path, local_root, caplog):
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    annotation = _annotation()
    rect = {"x": 10, "y": 10, "width": 20, "height": 20, "rectanglelabels": "red circle"}
    annotation["result"] += [
        "junk",
        {"id": "r1", "type": "rectanglelabels", "to_name": "image", "value": rect},
        {"id": "r2", "type": "rectanglelabels", "to_name": "image", "value": [1]},
        {"id": "t1", "type": "textarea", "to_name": "image", "value": {"text": ["a note"]}},
    ]
    project = {"id": 1, "label_config": CONFIG}
    backend.fit(
        "ANNOTATION_CREATED", {"annotation": annotation, "task": _task(), "project": project}
    )
    # the label string is not split into one-character labels; the good regions are kept
    assert backend.store.counts(1) == {"dog": 1, "cat": 1}
    assert "r1" in caplog.text and "r2" in caplog.text


def test_start_training_syncs_with_the_project_export(tmp_path, fake_ls):
    fake_ls.files["/data/upload/1/a.png"] = png_bytes(W, H)
    task = {"id": 1, "data": {"image": "/data/upload/1/a.png"}}
    fake_ls.export = [{**task, "annotations": [_annotation(1), _annotation(2)]}]
    backend = fake_backend(
        tmp_path, label_studio_url=fake_ls.url, label_studio_api_key="legacy-key"
    )
    backend.store.replace_annotation(1, 99, [])  # an annotation deleted meanwhile
    project = {"id": 1, "label_config": CONFIG}
    backend.fit("START_TRAINING", {"action": "START_TRAINING", "project": project})
    assert backend.store.counts(1) == {"dog": 2, "cat": 2}
    assert backend.store.annotation_ids(1) == {"1", "2"}
    embeds = sum(c[0] == "embed_exemplar" for c in backend.predictor.calls)
    backend.fit("START_TRAINING", {"action": "START_TRAINING", "project": project})
    assert sum(c[0] == "embed_exemplar" for c in backend.predictor.calls) == embeds  # unchanged


def test_interactive_context_region_is_a_live_exemplar(tmp_path, local_root):
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    context = {
        "result": [
            {
                "from_name": "kp",
                "to_name": "image",
                "type": "keypointlabels",
                "original_width": W,
                "original_height": H,
                "value": {"x": 50, "y": 50, "keypointlabels": ["dog"]},
            },
            _textarea("a cat", to_name="another image"),  # not on this image: ignored
        ]
    }
    [pred] = backend.predict([_task()], context=context, project=1, label_config=CONFIG)
    # only the context's label is answered, and the exemplar makes "dog" found
    assert pred["result"] and {r["value"]["brushlabels"][0] for r in pred["result"]} == {"dog"}
    [box] = [c[1] for c in backend.predictor.calls if c[0] == "embed_exemplar"]
    x0, y0, x1, y1 = box
    assert x0 < W / 2 < x1 and y0 < H / 2 < y1 and (x1 - x0) <= 20
    assert backend.store.counts(1) == {}  # used for the answer, not stored


def _textarea(text, to_name="image"):
    return {
        "type": "textarea",
        "from_name": "prompt",
        "to_name": to_name,
        "value": {"text": [text]},
    }


def _labels_of(pred):
    return {(r["from_name"], r["value"][r["type"]][0]) for r in pred["result"]}


def test_typed_prompt_replaces_the_prompts_of_the_label_it_names(tmp_path, local_root):
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    # the configured prompt "dog" finds nothing (0.1); the typed "a red Dog" finds the red block
    [pred] = backend.predict(
        [_task()], context={"result": [_textarea("a red Dog")]}, project=1, label_config=CONFIG
    )
    assert _labels_of(pred) == {("tag", "dog")}  # "cat" is not asked for
    assert pred["result"][0]["score"] == pytest.approx(0.9, abs=1e-5)
    assert [c[1] for c in backend.predictor.calls if c[0] == "embed_text"] == [["a red Dog"]]
    # the same task without context: the configured prompts
    [plain] = backend.predict([_task()], project=1, label_config=CONFIG)
    assert {lab for _, lab in _labels_of(plain)} == {"cat"}


def test_typed_prompt_and_smart_region_together(tmp_path, local_root):
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    keypoint = {
        "type": "keypointlabels",
        "to_name": "image",
        "value": {"x": 50, "y": 50, "keypointlabels": ["dog"]},
    }
    context = {"result": [keypoint, _textarea("the cat on the left")]}
    [pred] = backend.predict([_task()], context=context, project=1, label_config=CONFIG)
    assert {lab for _, lab in _labels_of(pred)} == {"cat", "dog"}
    texts = [t for c in backend.predictor.calls if c[0] == "embed_text" for t in c[1]]
    assert "the cat on the left" in texts and "cat" not in texts and "dog" in texts


def test_typed_prompt_naming_no_label_answers_the_nearest_label(tmp_path, local_root):
    import torch

    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    fake = backend.predictor.embed_text
    # e[0] drives the fake's probability; e[2], e[3] place the texts: the typed prompt points
    # at "dog" although its e[0] is that of "cat"
    place = {"cat": (1.0, 0.0), "dog": (0.0, 1.0), "a furry animal": (0.1, 1.0)}

    def embed_text(texts):
        out = fake(texts)
        for i, t in enumerate(texts):
            out[i, 2:4] = torch.tensor(place[t])
        out[:, 0] = torch.where(
            torch.tensor([t == "a furry animal" for t in texts]), 0.9, out[:, 0]
        )
        return out

    backend.predictor.embed_text = embed_text
    context = {"result": [_textarea("a furry animal")]}
    [pred] = backend.predict([_task()], context=context, project=1, label_config=CONFIG)
    assert _labels_of(pred) == {("tag", "dog")}


@pytest.mark.parametrize(
    "value",
    [
        {"x": 50, "y": 50, "keypointlabels": ["dog"], "is_positive": False},  # a negative click
        {"x": 150, "y": 50, "keypointlabels": ["dog"]},  # outside the image
        {"x": 50, "y": 50, "keypointlabels": "dog"},  # labels not a list
    ],
)
def test_an_unusable_click_answers_nothing_rather_than_every_label(tmp_path, local_root, value):
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    context = {"result": [{"type": "keypointlabels", "to_name": "image", "value": value}]}
    [pred] = backend.predict([_task()], context=context, project=1, label_config=CONFIG)
    assert pred["result"] == []
    assert not any(c[0] == "predict_embeddings" for c in backend.predictor.calls)


def test_a_comment_textarea_is_not_a_prompt(tmp_path, local_root):
    config = CONFIG.replace("</View>", '<TextArea name="note" toName="image"/></View>')
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    note = {**_textarea("a red cat, blurry"), "from_name": "note"}
    [pred] = backend.predict([_task()], context={"result": [note]}, project=1, label_config=config)
    assert pred["result"] == []  # Auto-Annotation sent the note: nothing to answer
    marked = config.replace('name="note"', 'name="note" model_prompt="true"')
    [pred] = backend.predict([_task()], context={"result": [note]}, project=1, label_config=marked)
    assert {lab for _, lab in _labels_of(pred)} == {"cat"}


def test_a_click_on_one_image_leaves_the_task_s_other_images_alone(tmp_path, local_root):
    config = (
        '<View><Image name="a" value="$a"/><Image name="b" value="$b"/>'
        '<BrushLabels name="ta" toName="a"><Label value="cat"/></BrushLabels>'
        '<BrushLabels name="tb" toName="b"><Label value="cat"/></BrushLabels></View>'
    )
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    url = "/data/local-files/?d=images/a.png"
    task = {"id": 1, "data": {"a": url, "b": url}}
    context = {"result": [_textarea("the cat", to_name="b")]}
    [pred] = backend.predict([task], context=context, project=1, label_config=config)
    assert {r["to_name"] for r in pred["result"]} == {"b"}
    assert sum(c[0] == "set_image" for c in backend.predictor.calls) == 1


def test_typed_prompt_in_a_project_without_labels_answers_nothing(tmp_path, local_root):
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    config = '<View><Image name="image" value="$image"/><TextArea name="p" toName="image"/></View>'
    context = {"result": [_textarea("a cat")]}
    [pred] = backend.predict([_task()], context=context, project=1, label_config=config)
    # an interactive answer is shown, not stored: the editor gets an empty result and the error
    assert pred["result"] == [] and "no BrushLabels" in pred["error"]


def test_predict_images_equals_one_image_at_a_time(tmp_path, local_root):
    """The CLI's batch path: prompts embedded once, images encoded together, same results."""
    backend = fake_backend(tmp_path, local_files_document_root=str(local_root))
    controls = backend.controls(CONFIG)
    red = np.asarray(Image.open(io.BytesIO(png_bytes(W, H))).convert("RGB"))
    blank = np.full_like(red, 255)
    stored = {"dog": np.full((1, backend.predictor.dim), 0.9, np.float32)}
    single = [backend.predict_image(image, controls, stored) for image in (red, blank, red)]
    backend.predictor.calls.clear()
    batched = backend.predict_images([red, blank, red], controls, stored)
    calls = [c[0] for c in backend.predictor.calls]
    assert calls.count("set_images") == 1 and calls.count("embed_text") == 1
    assert calls.count("set_image") == 0 and calls.count("predict_embeddings") == 1
    assert len(batched) == 3

    def without_ids(results):  # region ids are random per prediction
        return [{k: v for k, v in r.items() if k != "id"} for r in results]

    for a, b in zip(single, batched, strict=True):
        assert without_ids(a.results) == without_ids(b.results) and a.labels == b.labels
        assert a.uncertainty == b.uncertainty and a.confidence == b.confidence
    assert batched[0].results and not batched[1].results  # the red block is found, blank is not
    assert backend.predict_images([], controls) == []
