"""End to end: the learning loop against a real Label Studio 1.23.2 (issue 19, item 4).

The world is benchmarks/unseen_scenes.py's (a renderer the demo model never trained on: 640 x
480, outlines, shadows, paper backgrounds), with the labels of benchmarks/bench_learning.py: all
12 "<color> <shape>" labels in ONE BrushLabels control, three of them renamed to words the demo
model does not know ("zorb" is a blue star, ...). The base model finds the objects but brings a
false region for every label of the object's color; only learning the project's labels fixes it.

1. A project with that config; TRAIN_TASKS + HELD_OUT_TASKS scenes imported as file uploads.
2. `clipseg-backend` (demo model, CLIPSEG_TRAIN_EVERY=0: only START_TRAINING trains) connected
   as the project's ML backend; "Retrieve predictions" on the held-out tasks; the predictions
   Label Studio stores are scored against the true masks with the project's own evaluation
   (`backend.batch.evaluate`, what `clipseg-label evaluate` runs): PQ, false regions per task.
3. The true masks of the train tasks are submitted as annotations through Label Studio's API
   (brush results built with `backend.formats.brush_result`), then training is started the way
   Label Studio's "Start training" does: ``POST /api/ml/{id}/train``, which sends START_TRAINING
   to the backend's /webhook. The backend syncs the project's annotations through Label
   Studio's export and trains in the background; the test polls ``GET /learning/<project>``
   until the run is over and its state was promoted.
4. The model_version Label Studio stores for the ML backend changes to the one naming the
   promoted state; predictions are retrieved again for the held-out tasks (which hold no
   annotation: only those are scored), every one of the new model_version, and scored again.
   PQ must rise and false regions per task fall, by margins measured below.

Both sets of figures go into the "clipseg e2e" report. The test runs in the ``pat`` token mode
only: what depends on the token (the backend reading images and the export through Label
Studio's API with a personal access token it exchanges, or a legacy token) is the same client
the backend test already exercises in both modes; a second run would cost CI ~1 min and check
nothing new. See docs/e2e.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from .backend_process import backend_model_version, learning_status, start_backend
from .label_studio import LabelStudio, LSClient, ManagedProcess, ProcessRegistry, StepTimer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_learning import POOL_START, RENAMED, project_labels, scene_truth  # noqa: E402
from unseen_scenes import HEIGHT, SEED_START, WIDTH  # noqa: E402

pytestmark = [pytest.mark.e2e]

MODE = "pat"  # see the module docstring
TRAIN_TASKS = 12
HELD_OUT_TASKS = 6
TRAIN_SEEDS = tuple(POOL_START + i for i in range(TRAIN_TASKS))  # bench_learning's pool
HELD_OUT_SEEDS = tuple(SEED_START + i for i in range(HELD_OUT_TASKS))  # its held-out tasks
CONTROL = "label"  # the BrushLabels control of backend.batch.predict.label_config_for
TRAIN_TIMEOUT = 300.0

# Margins of the improvement on the held-out tasks: the targets (PQ at least 0.2 higher,
# false regions per task at most half the base model's). Measured with the demo checkpoint,
# 12 annotated and 6 held-out tasks: PQ 0.198 -> 0.58-0.75, false regions per task 12.17 ->
# 0.17-0.83 (5 runs; the spread comes from the trainer's validation split, a hash of the task
# ids, which depend on the tests run before in the same Label Studio). Offline, the same tasks
# under 24 id offsets gave PQ 0.57-0.76, false regions at most 1.0 per task. More tasks are not
# safer today: with 16 (20), 3 (1) of 24 splits let 1-3 validation tasks pick the resolver on
# the model's own masks, and held-out PQ fell to 0.11-0.19 (docs/e2e.md).
MIN_PQ_GAIN = 0.2
MAX_FALSE_RATIO = 0.5  # false regions per task after / before


def scene_file(seed: int, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"unseen_{seed}.png"
    Image.fromarray(scene_truth(seed)[0]).save(path)
    return path


def seed_of(task: dict) -> int:
    name = Path(task["data"]["image"]).name  # /data/upload/<project>/<hash>-unseen_<seed>.png
    return int(name.rsplit("unseen_", 1)[1].removesuffix(".png"))


def truth_result(seed: int) -> list[dict]:
    """The scene's true masks as brush results of the project's control."""
    from backend.formats import brush_result

    size = {"original_width": WIDTH, "original_height": HEIGHT}
    return [
        brush_result(mask, label, from_name=CONTROL, to_name="image", **size)
        for label, mask in scene_truth(seed)[1]
    ]


def evaluate_held_out(
    client: LSClient, tasks: list[dict], model_version: str, workdir: Path, name: str
) -> dict:
    """Score the predictions of ``model_version`` that Label Studio holds for ``tasks`` against
    the true masks with `backend.batch.evaluate` (what `clipseg-label evaluate TRUTH
    --predictions FILE --model-version V` runs): the truth is a Label Studio export of the tasks
    with the true masks as annotations, the predictions one of their stored predictions. Every
    task must hold exactly one prediction of the version. Returns the overall figures."""
    from backend.batch.evaluate import evaluate_files

    predicted, truth = [], []
    for task in tasks:
        preds = client.predictions(task["id"])
        ours = [p for p in preds if p["model_version"] == model_version]
        assert len(ours) == 1, (
            f"task {task['id']}: {len(ours)} predictions of {model_version}, "
            f"versions {[p['model_version'] for p in preds]}"
        )
        predicted.append({"id": task["id"], "data": task["data"], "predictions": preds})
        annotation = {"id": task["id"], "result": truth_result(seed_of(task))}
        truth.append({"id": task["id"], "data": task["data"], "annotations": [annotation]})
    pred_path, truth_path = workdir / f"{name}-predictions.json", workdir / f"{name}-truth.json"
    pred_path.write_text(json.dumps(predicted))
    truth_path.write_text(json.dumps(truth))
    report = evaluate_files(
        pred_path, truth_path, labels=project_labels(), model_version=model_version
    )
    assert not report.problems, [str(p) for p in report.problems]
    assert sorted(t.task_id for t in report.evaluation.tasks) == sorted(t["id"] for t in tasks)
    assert report.model_versions == [model_version]
    return report.evaluation.summary()["overall"]


def figures_line(f: dict) -> str:
    return (
        f"PQ {f['pq']:.3f} (SQ {f['sq']:.3f}, RQ {f['rq']:.3f}), false regions/task "
        f"{f['false_per_task']:.2f}, missed/task {f['missed_per_task']:.2f}"
    )


def wait_for_promotion(url: str, pid: int, runs_before: int, proc: ManagedProcess) -> dict:
    """Poll GET /learning/<pid> until a new run is recorded and the trainer is idle again."""
    deadline = time.monotonic() + TRAIN_TIMEOUT
    status = learning_status(url, pid)
    while time.monotonic() < deadline:
        status = learning_status(url, pid)
        if len(status["runs"]) > runs_before and status["state"] == "idle":
            return status
        assert proc.alive(), f"the backend exited; its log:\n{proc.tail()}"
        time.sleep(1)
    raise AssertionError(
        f"no training run over after {TRAIN_TIMEOUT:.0f} s: {status}; backend log:\n{proc.tail()}"
    )


@pytest.mark.token_mode(MODE, reason="the token only matters to the client of the backend test")
def test_learning_loop_end_to_end(
    label_studio: LabelStudio,
    processes: ProcessRegistry,
    tmp_path: Path,
    e2e_report: list[str],
    step_timer: StepTimer,
) -> None:
    from backend.batch.predict import label_config_for

    mark = step_timer.mark
    ls, client = label_studio, label_studio.client

    # --- 1. the project and its tasks
    labels = project_labels()
    assert len(labels) == 12 and set(RENAMED.values()) <= set(labels)
    pid = int(client.create_project("clipseg learning e2e", label_config_for(labels))["id"])
    files = [scene_file(s, tmp_path / "scenes") for s in (*TRAIN_SEEDS, *HELD_OUT_SEEDS)]
    imported = client.import_files(pid, files)
    assert imported.get("task_count") == len(files), imported
    tasks = client.wait_task_count(pid, len(files))
    by_seed = {seed_of(t): t for t in tasks}
    assert sorted(by_seed) == sorted((*TRAIN_SEEDS, *HELD_OUT_SEEDS))
    train = [by_seed[s] for s in TRAIN_SEEDS]
    held_out = [by_seed[s] for s in HELD_OUT_SEEDS]
    held_ids = [t["id"] for t in held_out]
    mark(f"{len(tasks)} tasks imported")

    # --- 2. the backend, connected; predictions before any annotation
    url, _model_dir, proc = start_backend(
        processes, ls, tmp_path, ls.docroot, env={"CLIPSEG_TRAIN_EVERY": "0"}, name="learning"
    )
    ml = client.connect_ml_backend(pid, url, "clipseg learning")
    ml_id = int(ml["id"])
    version_before = backend_model_version(url, pid)
    client.retrieve_predictions(pid, held_ids)
    assert client.get(f"/api/ml/{ml_id}")["model_version"] == version_before
    before = evaluate_held_out(client, held_out, version_before, tmp_path, "before")
    mark("predictions before training evaluated")

    # --- 3. annotations through Label Studio, then "Start training" through Label Studio
    status = learning_status(url, pid)
    assert status["runs"] == [] and status["serving"] == "base", status
    for task in train:
        client.create_annotation(task["id"], truth_result(seed_of(task)))
    mark(f"{len(train)} annotations submitted")
    runs_before = len(status["runs"])
    client.train(ml_id)
    status = wait_for_promotion(url, pid, runs_before, proc)
    (run,) = status["runs"]
    assert run["promoted"], f"the trained state was rejected: {run}; log:\n{proc.tail()}"
    assert status["serving"] == run["id"], status
    assert status["annotations"] == len(train), status
    assert status["last_run"]["examples"] == len(train), status["last_run"]
    assert status["last_run"]["problems"] == [], status["last_run"]
    version_after = status["model_version"]
    assert version_after != version_before
    assert version_after.endswith("+" + run["id"]), (version_after, run["id"])
    assert backend_model_version(url, pid) == version_after
    mark(f"trained and promoted in {run['seconds']:.1f} s")

    # --- 4. predictions again, of the new model_version, on the tasks not annotated
    assert all(not t["annotations"] for t in client.tasks(pid) if t["id"] in held_ids)
    client.retrieve_predictions(pid, held_ids)
    # Label Studio asked /setup before predicting and stores the version the backend answered
    assert client.get(f"/api/ml/{ml_id}")["model_version"] == version_after
    after = evaluate_held_out(client, held_out, version_after, tmp_path, "after")
    mark("predictions after training evaluated")

    setup = f"{len(train)} annotated, {len(held_out)} held-out tasks"
    e2e_report.append(f"{ls.mode}: learning loop ({setup}) before: {figures_line(before)}")
    e2e_report.append(f"{ls.mode}: learning loop ({setup}) after:  {figures_line(after)}")
    e2e_report.append(
        f"{ls.mode}: learning loop validation PQ base {run['validation']['base']['pq']:.3f} -> "
        f"new {run['validation']['new']['pq']:.3f} on {run['validation_tasks']} tasks; "
        f"{version_before} -> {version_after}"
    )
    assert after["pq"] >= before["pq"] + MIN_PQ_GAIN, (before, after)
    assert after["false_per_task"] <= MAX_FALSE_RATIO * before["false_per_task"], (before, after)
