"""End to end: a real Label Studio 1.23.2, our `clipseg-backend` (demo model) and headless Chromium.

One test, run once per token mode (a legacy token enabled at organization creation; a personal
access token only), against the session's Label Studio of that mode (the ``label_studio`` fixture
of conftest.py, shared with the `clipseg-label` test), with its own project and its own backend:

1. the token mode is what it claims (Label Studio accepts / rejects the legacy token);
2. demo scenes (``clipseg.demo.scenes``) are imported as file uploads and through a local-files
   storage, and Label Studio serves back exactly the pixels we wrote;
3. the backend is connected (POST /api/ml) and "Retrieve predictions" yields, for every task,
   brush masks and polygons that match the scenes' ground truth (IoU floors below);
   with "Interactive preannotations" on, a prompt typed in the TextArea and sent through Label
   Studio's interactive-annotating API is answered with the regions of the label it names;
4. an annotation (a brush region and a polygon region) reaches the backend by webhook: its
   exemplar store grows, its model_version changes, and predictions are retrieved again under the
   new version;
5. the JSON export converts to COCO with ``backend.formats.labelstudio_to_coco`` and pycocotools
   decodes exactly the annotated masks;
6. Chromium logs in through the login form, opens the task and lists the predicted regions; the
   screenshot goes to ./artifacts/e2e/.

See docs/e2e.md for how to run it alone and what it costs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import requests

from clipseg.demo.scenes import EVAL_SEED_START, Scene, make_scene

from .backend_process import backend_model_version, start_backend
from .label_studio import (
    PASSWORD,
    USERNAME,
    LabelStudio,
    LSClient,
    ProcessRegistry,
    StepTimer,
    WebDriver,
    dump_json,
)
from .scene_checks import (
    BRUSH_IOU_FLOOR,
    check_predictions,
    fetch_task_image,
    iou,
    iou_summary,
    label_config,
    predicted_masks,
    rasterize_polygon,
    seed_of,
    write_scene,
)

pytestmark = [
    pytest.mark.e2e,
    # pycocotools 2.0.x under numpy 2
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

UPLOAD_SEEDS = (EVAL_SEED_START + 6, EVAL_SEED_START + 8, EVAL_SEED_START + 9)
LOCAL_SEEDS = (EVAL_SEED_START + 2, EVAL_SEED_START + 4, EVAL_SEED_START + 7)
BROWSER_SEED = LOCAL_SEEDS[0]  # an unannotated local-files task with few objects


def exemplar_count(model_dir: Path, project: int) -> int:
    import json

    total = 0
    for path in model_dir.glob(f"**/{project}.json"):
        total += len(json.loads(path.read_text()).get("exemplars", []))
    return total


def test_label_studio_end_to_end(
    browser: tuple[Path, Path],
    label_studio: LabelStudio,
    processes: ProcessRegistry,
    artifacts_dir: Path,
    tmp_path: Path,
    e2e_report: list[str],
    step_timer: StepTimer,
) -> None:
    mark = step_timer.mark
    ls, mode, docroot = label_studio, label_studio.mode, label_studio.docroot
    client = ls.client

    # --- 1. the token mode is real
    jwt = client.get("/api/jwt/settings")
    assert jwt["legacy_api_tokens_enabled"] is (mode == "legacy"), jwt
    who = client.get("/api/current-user/whoami")
    assert who["email"] == USERNAME
    if mode == "pat":
        assert ls.api_key.count(".") == 2, "a PAT is a JWT"
        r = requests.get(
            ls.url + "/api/current-user/whoami",
            headers={"Authorization": f"Token {ls.api_key}"},
            timeout=30,
        )
        assert r.status_code == 401, "a PAT must not work as a legacy token"

    # --- 2. project and tasks: file uploads and a local-files storage
    scenes = {s: make_scene(s) for s in (*UPLOAD_SEEDS, *LOCAL_SEEDS)}
    labels = sorted({o.name for sc in scenes.values() for o in sc.objects})
    project = client.create_project(f"clipseg e2e ({mode})", label_config(labels))
    pid = int(project["id"])
    upload_files = [write_scene(scenes[s], tmp_path / "uploads") for s in UPLOAD_SEEDS]
    imported = client.import_files(pid, upload_files)
    assert imported.get("task_count", len(UPLOAD_SEEDS)) == len(UPLOAD_SEEDS), imported
    for s in LOCAL_SEEDS:
        write_scene(scenes[s], docroot / "scenes")
    storage = client.add_local_storage(pid, docroot / "scenes")
    client.sync_local_storage(int(storage["id"]))
    tasks = client.wait_task_count(pid, len(scenes))
    assert sorted(seed_of(t) for t in tasks) == sorted(scenes), [t["data"] for t in tasks]
    kinds = sorted("upload" if "/data/upload/" in t["data"]["image"] else "local" for t in tasks)
    assert kinds == ["local"] * len(LOCAL_SEEDS) + ["upload"] * len(UPLOAD_SEEDS), kinds
    for task in tasks:  # Label Studio serves back exactly the pixels we wrote
        got = fetch_task_image(ls, task)
        assert np.array_equal(got, scenes[seed_of(task)].image), task["data"]["image"]
    mark(f"{len(tasks)} tasks imported")

    backend_url, model_dir, backend_proc = start_backend(processes, ls, tmp_path, docroot)
    mark("backend up")

    # --- 3. connect the backend, retrieve predictions, compare with the ground truth
    ml = client.connect_ml_backend(pid, backend_url, "clipseg")
    assert ml.get("state") in ("CO", "CONNECTED", None), ml
    version_before = backend_model_version(backend_url, pid)
    client.retrieve_predictions(pid)
    ious = check_predictions(client, tasks, scenes, version_before)
    mark("predictions checked")
    e2e_report.append(f"{mode}: IoU before the annotation: {iou_summary(ious)}")

    # --- 3b. interactive pre-annotation: a prompt typed in the TextArea, through Label Studio
    prompt_task = next(t for t in tasks if "/data/upload/" in t["data"]["image"])
    typed_iou = check_typed_prompt(client, int(ml["id"]), prompt_task, scenes[seed_of(prompt_task)])
    e2e_report.append(f"{mode}: typed prompt, brush IoU {typed_iou:.3f}")
    mark("interactive prompt checked")

    # --- 4. an annotation teaches the backend: webhook, exemplars, new model_version
    target_task = next(t for t in tasks if "/data/upload/" in t["data"]["image"])
    scene = scenes[seed_of(target_task)]
    annotation_result, annotated = annotation_from_scene(scene)
    exemplars_before = exemplar_count(model_dir, pid)
    client.create_annotation(target_task["id"], annotation_result)
    expected_exemplars = exemplars_before + len(annotation_result)  # one per region
    deadline = time.monotonic() + 120
    while True:  # Label Studio posts the webhook; the backend handles it in the background
        version_after = backend_model_version(backend_url, pid)
        exemplars_after = exemplar_count(model_dir, pid)
        done = version_after != version_before and exemplars_after == expected_exemplars
        if done or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert exemplars_after == expected_exemplars, (
        f"the exemplar store holds {exemplars_after} exemplars, expected {expected_exemplars}; "
        f"backend log:\n{backend_proc.tail()}"
    )
    assert version_after != version_before, "model_version did not change after the annotation"
    client.retrieve_predictions(pid)
    ious = check_predictions(client, tasks, scenes, version_after)
    e2e_report.append(f"{mode}: IoU after the annotation: {iou_summary(ious)}")
    mark("annotation learned, predictions retrieved again")

    # --- 5. JSON export -> COCO -> pycocotools decodes the annotated masks exactly
    export = client.export_json(pid)
    dump_json(export, artifacts_dir / f"export-{mode}.json")
    check_coco(export, target_task["id"], annotation_result, annotated)
    mark("export converted to COCO")

    # --- 6. the labeling page in headless Chromium lists the predicted regions
    browser_task = next(t for t in tasks if seed_of(t) == BROWSER_SEED)
    shot = check_browser(processes, browser, ls, tmp_path, artifacts_dir, pid, browser_task)
    e2e_report.append(f"{mode}: screenshot {shot}")
    mark("browser checked")


def check_typed_prompt(client: LSClient, ml_id: int, task: dict, scene: Scene) -> float:
    """Interactive pre-annotation: with "Interactive preannotations" on, Label Studio forwards
    the text an annotator submits in the TextArea to the backend as `params.context`. The answer
    holds regions of the one label the prompt names, on the brush, polygon and rectangle
    controls, and its brush mask matches that object's ground truth. Returns the brush IoU."""
    name = max({o.name for o in scene.objects}, key=lambda n: int(scene.target(n).sum()))
    prompt = f"a photo of the {name}."  # not the label itself: it names the label
    client.set_interactive(ml_id)
    context = {
        "result": [
            {
                "type": "textarea",
                "from_name": "prompt",
                "to_name": "image",
                "value": {"text": [prompt]},
            }
        ]
    }
    answer = client.interactive_annotating(ml_id, task["id"], context)
    assert "errors" not in answer and answer.get("data"), answer
    items = answer["data"]["result"]
    assert {(r["from_name"], r["value"][r["type"]][0]) for r in items} == {
        ("brush", name),
        ("poly", name),
        ("rect", name),
    }, f"prompt {prompt!r}: {[(r['from_name'], r['value']) for r in items]}"
    h, w = scene.image.shape[:2]
    masks = predicted_masks(answer["data"], h, w)
    value = iou(masks["brush"][name], scene.target(name))
    assert value >= BRUSH_IOU_FLOOR, f"prompt {prompt!r}: brush IoU {value:.3f}"
    return value


def annotation_from_scene(scene: Scene) -> tuple[list[dict], dict[str, np.ndarray]]:
    """An annotation built from the ground truth with backend.formats' builders: a brush region
    of one label and a polygon region (the largest blob) of another (or the same, for a scene of
    one object). Returns (result, {"brush": mask, "polygon": mask as COCO rasterises it})."""
    from backend.formats import brush_result, polygon_results

    h, w = scene.image.shape[:2]
    names = sorted({o.name for o in scene.objects})
    brush_label, poly_label = names[0], names[-1]
    size = {"from_name": "brush", "to_name": "image", "original_width": w, "original_height": h}
    brush_mask = scene.target(brush_label)
    brush = brush_result(brush_mask, brush_label, **size)
    polygon = polygon_results(scene.target(poly_label), poly_label, **{**size, "from_name": "poly"})
    assert polygon, f"no polygon for {poly_label!r}"
    result = [brush, polygon[0]]  # the largest blob first
    polygon_mask = rasterize_polygon(polygon[0]["value"]["points"], h, w)
    return result, {"brush": brush_mask, "polygon": polygon_mask}


def check_coco(
    export: list[dict], task_id: int, result: list[dict], annotated: dict[str, np.ndarray]
) -> None:
    """The COCO conversion of the export holds exactly the annotated masks (pycocotools)."""
    from pycocotools import mask as mask_utils

    from backend.formats import labelstudio_to_coco

    coco = labelstudio_to_coco(export)
    images = {img["id"]: img for img in coco["images"]}
    assert list(images) == [task_id], f"one annotated task ({task_id}), got {list(images)}"
    h, w = annotated["brush"].shape
    assert (images[task_id]["height"], images[task_id]["width"]) == (h, w)
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    got: dict[str, list[np.ndarray]] = {}
    for ann in coco["annotations"]:
        assert ann["image_id"] == task_id
        seg = ann["segmentation"]
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
        mask = mask_utils.decode(rle).astype(bool)
        assert ann["area"] == int(mask.sum())
        got.setdefault(categories[ann["category_id"]], []).append(mask)
    labels = {
        "brush": result[0]["value"]["brushlabels"][0],
        "polygon": result[1]["value"]["polygonlabels"][0],
    }
    for kind, label in labels.items():
        assert any(np.array_equal(m, annotated[kind]) for m in got.get(label, [])), (
            f"no COCO mask of {label!r} equals the annotated {kind} mask"
        )
    assert sum(len(v) for v in got.values()) == 2, {k: len(v) for k, v in got.items()}


def check_browser(
    reg: ProcessRegistry,
    browser: tuple[Path, Path],
    ls: LabelStudio,
    workdir: Path,
    artifacts_dir: Path,
    pid: int,
    task: dict,
) -> Path:
    driver = WebDriver(reg, workdir, *browser)
    shot = artifacts_dir / f"labeling-{ls.mode}.png"
    try:
        driver.login(ls.url, USERNAME, PASSWORD)
        driver.get(f"{ls.url}/projects/{pid}/data?task={task['id']}")
        # one label set per prediction (after a second retrieval a task holds two model
        # versions; the UI shows one of them, preselected as a draft)
        expected = predicted_label_sets(ls.client, task["id"])
        assert expected and all(expected), f"task {task['id']} has no predicted regions"
        # the regions panel ("outliner") of the labeling UI: one item per region, its label as
        # the title (the label buttons under the image list every label, predicted or not)
        titles_js = (
            "return Array.from(document.querySelectorAll('.lsf-outliner-item__title'))"
            ".map(e => e.innerText.trim());"
        )
        listed: set[str] = set()

        def all_listed() -> bool:
            listed.clear()
            listed.update(driver.execute(titles_js))
            return listed in expected

        try:
            driver.wait_until(all_listed, "the regions panel lists the predicted labels", 120)
        except TimeoutError as exc:
            raise AssertionError(
                f"the regions panel lists {sorted(listed)}, not one of the predictions' label "
                f"sets {[sorted(e) for e in expected]}"
            ) from exc
        finally:
            driver.screenshot(shot)
            print(f"[e2e] screenshot: {shot}", flush=True)
    finally:
        driver.quit()
    return shot


def predicted_label_sets(client: LSClient, task_id: int) -> list[set[str]]:
    """The set of region labels of each of the task's predictions."""
    out = []
    for pred in client.predictions(task_id):
        labels: set[str] = set()
        for r in pred["result"]:
            for key in ("brushlabels", "polygonlabels", "rectanglelabels"):
                labels.update(r["value"].get(key, []))
        out.append(labels)
    return out
