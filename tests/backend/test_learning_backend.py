"""The learning loop in the backend (issue 19, item 2): webhooks keep a project's annotations,
CLIPSEG_TRAIN_EVERY of them or START_TRAINING start a training in the background, a better
state is promoted and served, GET /learning tells it all. On the demo model and scenes of a
style it never trained on (benchmarks/unseen_scenes.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backend.learning.regions import BASE_FEATURES, RegionResolver
from backend.learning.scheduler import Trainer
from backend.model import CLIPSegBackend
from backend.server import create_app
from backend.settings import Settings

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from unseen_scenes import HEIGHT, LABELS, WIDTH, write_export  # noqa: E402

CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="label" toName="image">'
    + "".join(f'<Label value="{label}"/>' for label in LABELS)
    + "</BrushLabels></View>"
)
PROJECT = {"id": 3, "label_config": CONFIG}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """(images root, tasks): 6 annotated unseen-style scenes, images as local files."""
    root = tmp_path_factory.mktemp("scenes")
    export = write_export(root, range(7 * 10**9, 7 * 10**9 + 6))
    tasks = json.loads(export.read_text(encoding="utf-8"))
    for task in tasks:
        task["data"]["image"] = "/data/local-files/?d=" + Path(task["data"]["image"]).name
        for annotation in task["annotations"]:
            annotation["updated_at"] = "2026-01-01T00:00:00+00:00"
    return root, tasks


@pytest.fixture(scope="module")
def demo():
    from backend.loading import load_model

    return load_model(Settings(model="demo", device="cpu"))


def make_backend(demo, root, model_dir, **settings) -> CLIPSegBackend:
    settings = Settings(
        model="demo",
        device="cpu",
        local_files_document_root=str(root),
        model_dir=str(model_dir),
        **settings,
    )
    return CLIPSegBackend(
        settings,
        demo.predictor,
        model_name=demo.name,
        weights_hash=demo.weights_hash,
        is_demo=True,
        device="cpu",
        dtype=demo.dtype,
    )


def created(task: dict, project: dict = PROJECT, annotation: dict | None = None) -> dict:
    annotation = annotation or task["annotations"][0]
    plain = {k: v for k, v in task.items() if k != "annotations"}
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": annotation,
        "task": plain,
        "project": project,
    }


def bad_results() -> list[dict]:
    """Results that cannot be drawn: garbage RLE, points out of range, an unknown label."""
    size = {"original_width": WIDTH, "original_height": HEIGHT, "to_name": "image"}
    return [
        {
            "id": "garbage",
            "type": "brushlabels",
            "from_name": "label",
            **size,
            "value": {"format": "rle", "rle": [7, 1, 2, 3], "brushlabels": ["red circle"]},
        },
        {
            "id": "outside",
            "type": "polygonlabels",
            "from_name": "label",
            **size,
            "value": {"points": [[150, 10], [400, 20], [170, -90]], "polygonlabels": ["red star"]},
        },
        {
            "id": "unknown",
            "type": "polygonlabels",
            "from_name": "label",
            **size,
            "value": {"points": [[10, 10], [20, 10], [20, 20]], "polygonlabels": ["purple blob"]},
        },
    ]


def test_webhooks_start_a_training_that_is_promoted_and_served(demo, scenes, tmp_path):
    root, tasks = scenes
    backend = make_backend(demo, root, tmp_path / "md", train_every=5)
    app = create_app(backend, backend.settings)
    client = app.test_client()
    before = backend.model_version(3)
    bad = json.loads(json.dumps(tasks[0]))
    bad["annotations"][0]["result"] += bad_results()  # stored, then skipped and reported
    answered = []
    for task in [bad, *tasks[1:5]]:
        started = time.monotonic()
        response = client.post("/webhook", json=created(task))
        answered.append(time.monotonic() - started)
        assert response.status_code == 200, response.get_json()
    assert max(answered) < 1.0  # never waits for the exemplars nor the training
    assert app.extensions["clipseg_worker"].join(180)
    assert backend.trainer.join(3, 180)

    status = client.get("/learning/3").get_json()
    assert status["state"] == "idle" and status["annotations"] == 5
    [run] = status["runs"]
    assert run["promoted"] and run["id"] == status["serving"] == "s000001"
    figures = run["validation"]
    assert figures["new"]["pq"] > figures["serving"]["pq"] == figures["base"]["pq"]
    problems = " | ".join(run["problems"])
    assert "garbage" in problems and "outside" in problems and "purple blob" in problems
    assert status["model_version"] != before and status["model_version"].endswith("+s000001")
    body = {"tasks": [tasks[5]], "label_config": CONFIG, "project": "3.1700000000"}
    [prediction] = client.post("/predict", json=body).get_json()["results"]
    assert prediction["model_version"] == status["model_version"]
    # a new backend (a restart) serves the same state
    again = make_backend(demo, root, tmp_path / "md", train_every=5)
    assert again.model_version(3) == status["model_version"]


def test_learning_status_of_unknown_and_bad_projects(demo, scenes, tmp_path):
    root, _ = scenes
    backend = make_backend(demo, root, tmp_path / "md", basic_auth_user="u", basic_auth_pass="p")
    client = create_app(backend, backend.settings).test_client()
    assert client.get("/learning/7").status_code == 401
    auth = {"Authorization": "Basic dTpw"}
    status = client.get("/learning/7", headers=auth).get_json()
    assert status["state"] == "idle" and status["annotations"] == 0 and status["runs"] == []
    assert status["serving"] == "base" and status["pinned"] is False
    assert client.get("/learning/not%20a%20project", headers=auth).status_code == 400
    assert not (backend.learned.root / "7").exists()  # asking creates nothing


def test_deletions_leave_training_and_projects_never_mix(demo, scenes, tmp_path):
    root, tasks = scenes
    backend = make_backend(demo, root, tmp_path / "md", train_every=0)
    other = {"id": 4, "label_config": CONFIG}
    for task in tasks[:3]:
        backend.fit("ANNOTATION_CREATED", created(task))
    backend.fit("ANNOTATION_CREATED", created(tasks[3], other))
    first = tasks[0]["annotations"][0]["id"]
    backend.fit("ANNOTATIONS_DELETED", {"annotations": [{"id": first}], "project": PROJECT})
    # a late update of the deleted annotation does not bring it back
    late = dict(tasks[0]["annotations"][0], updated_at="2026-02-01T00:00:00+00:00")
    backend.fit("ANNOTATION_UPDATED", created(tasks[0], annotation=late))
    assert backend.trainer.state(3) == "idle"  # CLIPSEG_TRAIN_EVERY=0: START_TRAINING only
    assert backend.annotations.count(3) == 2 and backend.annotations.count(4) == 1

    record = backend.train(3)
    seen = {str(t["annotations"][0]["id"]) for t in tasks[1:3]}
    assert set(record["annotations"]) == seen
    assert backend.learning_status(4)["runs"] == []
    assert backend.model_version(4) == backend.model_version("4")
    assert "+s0" not in backend.model_version(4)


def test_a_request_during_a_training_queues_exactly_one_more_run(tmp_path):
    started, release = threading.Event(), threading.Event()
    runs = []

    def train(project):
        runs.append(project)
        started.set()
        assert release.wait(30)

    trainer = Trainer(tmp_path, train)
    trainer.request(1)
    assert started.wait(10)
    assert trainer.state(1) == "training"
    for _ in range(5):
        trainer.request(1)
    trainer.request(2)  # another project trains at the same time
    release.set()
    assert trainer.join(1, 30) and trainer.join(2, 30)
    assert runs.count("1") == 2 and runs.count("2") == 1
    assert trainer.state(1) == "idle"


def test_a_second_process_does_not_train_the_same_project(tmp_path):
    """Another process holding the project's lock: this one leaves the run to it (pending)."""
    import fcntl

    folder = tmp_path / "5"
    folder.mkdir()
    runs = []
    trainer = Trainer(tmp_path, runs.append)
    with open(folder / "training.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        trainer.request(5)
        assert trainer.join(5, 10)
        assert runs == [] and trainer.state(5) == "training"
    assert trainer.state(5) == "queued"
    trainer.request(5)
    assert trainer.join(5, 10) and runs == ["5"] and trainer.state(5) == "idle"


def _promote_a_state(backend: CLIPSegBackend) -> str:
    labels = list(LABELS)
    features = BASE_FEATURES + len(labels)
    resolver = RegionResolver(
        tuple(labels),
        np.zeros(features, np.float32),
        np.ones(features, np.float32),
        np.zeros((features, len(labels) + 1), np.float32),
        np.zeros(len(labels) + 1, np.float32),
    )
    state_id = backend.learned.save("3", {"label": resolver}, {"promoted": True})
    assert backend.learned.promote("3", state_id)
    return state_id


KILLED_TRAINING = textwrap.dedent(
    """
    import sys, time
    from backend.learning import states
    from backend.model import CLIPSegBackend
    from backend.settings import Settings

    where = sys.argv[3]
    save = states.StateStore.save

    def saved(self, *args, **kwargs):
        state_id = save(self, *args, **kwargs)
        if where == "saved":  # written, not promoted yet
            print("at saved", flush=True)
            time.sleep(60)
        return state_id

    states.StateStore.save = saved
    settings = Settings(model="demo", device="cpu", model_dir=sys.argv[1],
                        local_files_document_root=sys.argv[2])
    backend = CLIPSegBackend.load(settings)
    maps = backend.segmenter.label_maps

    def label_maps(*args, **kwargs):
        print("at maps", flush=True)
        return maps(*args, **kwargs)

    backend.segmenter.label_maps = label_maps
    backend.trainer.request(3)
    time.sleep(120)
    """
)


@pytest.mark.parametrize("where", ["maps", "saved"])
def test_kill_during_training_leaves_the_serving_state(demo, scenes, tmp_path, where):
    root, tasks = scenes
    backend = make_backend(demo, root, tmp_path / "md")
    serving = _promote_a_state(backend)
    for task in tasks[:4]:
        plain = {k: v for k, v in task.items() if k != "annotations"}
        backend.annotations.put(3, task["annotations"][0], plain, CONFIG)
    project_dir = backend.learned.root / "3"
    pointer = (project_dir / "serving.json").read_bytes()
    state_files = {p.name: p.read_bytes() for p in (project_dir / "states" / serving).iterdir()}
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLIPSEG_DEVICE": "cpu"}
    script = tmp_path / "train.py"
    script.write_text(KILLED_TRAINING, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "md"), str(root), where],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and line.strip() != f"at {where}":
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the training process ended early"
        assert line.strip() == f"at {where}"
        assert backend.trainer.state(3) == "training"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert (project_dir / "serving.json").read_bytes() == pointer
    assert {
        p.name: p.read_bytes() for p in (project_dir / "states" / serving).iterdir()
    } == state_files
    fresh = make_backend(demo, root, tmp_path / "md")
    assert fresh.serving_state(3).id == serving
    assert fresh.learning_status(3)["state"] in ("idle", "queued")  # the lock died with it
    assert fresh.annotations.count(3) == 4


def test_predict_and_webhooks_answer_while_a_training_runs(demo, scenes, tmp_path):
    root, tasks = scenes
    backend = make_backend(demo, root, tmp_path / "md", train_every=0)
    for task in tasks[:5]:
        plain = {k: v for k, v in task.items() if k != "annotations"}
        backend.annotations.put(3, task["annotations"][0], plain, CONFIG)
    maps = backend.segmenter.label_maps
    training, finish = threading.Event(), threading.Event()

    def slow_maps(*args, **kwargs):  # each image waits outside the model lock
        training.set()
        finish.wait(30)
        return maps(*args, **kwargs)

    backend.segmenter.label_maps = slow_maps
    app = create_app(backend, backend.settings)
    client = app.test_client()
    started = time.monotonic()
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": PROJECT})
    assert training.wait(60)
    assert client.get("/learning/3").get_json()["state"] == "training"
    body = {"tasks": [tasks[5]], "label_config": CONFIG, "project": 3}
    response = client.post("/predict", json=body)
    assert response.status_code == 200 and "result" in response.get_json()["results"][0]
    before = time.monotonic()
    assert client.post("/webhook", json=created(tasks[5])).status_code == 200
    assert time.monotonic() - before < 1.0
    assert backend.trainer.state(3) == "training"
    finish.set()
    assert app.extensions["clipseg_worker"].join(120) and backend.trainer.join(3, 120)
    assert time.monotonic() - started < 150
    assert client.get("/learning/3").get_json()["runs"]


def test_the_annotation_store_never_goes_back_in_time(tmp_path):
    from backend.learning.store import AnnotationStore

    store = AnnotationStore(tmp_path)
    task = {"id": 1, "data": {"image": "a.png"}}

    def annotation(ann_id, updated, label="red circle", **extra):
        return {"id": ann_id, "updated_at": updated, "result": [{"label": label}], **extra}

    assert store.put(1, annotation(1, "2026-01-02T00:00:00+00:00"), task, CONFIG)
    assert not store.put(1, annotation(1, "2026-01-01T00:00:00+00:00", "old"), task)  # late
    assert not store.put(1, annotation(1, "2026-01-02T00:00:00+00:00"), task)  # the same again
    assert store.snapshot(1)["annotations"]["1"]["result"] == [{"label": "red circle"}]
    assert store.snapshot(1)["label_config"] == CONFIG
    assert store.put(1, annotation(2, "2026-01-01T00:00:00+00:00"), task)
    assert store.put(1, annotation(2, "2026-01-03T00:00:00+00:00", was_cancelled=True), task)
    assert store.ids(1) == {"1"} and store.changed_since_run(1) == 1
    store.mark_run(1, store.snapshot(1)["seq"])
    assert store.changed_since_run(1) == 0
    assert store.remove(1, [1]) == 1 and store.count(1) == 0
    assert not store.put(1, annotation(1, "2026-02-01T00:00:00+00:00"), task)  # deleted
    export = [
        {**task, "annotations": [annotation(3, "t"), annotation(4, "t")]},
        {"id": 2, "data": {}, "annotations": [annotation(1, "t")]},  # deleted: stays deleted
    ]
    assert store.sync(1, export) == (2, 0)
    assert store.ids(1) == {"3", "4"}
    assert store.sync(1, [{**task, "annotations": [annotation(4, "t")]}]) == (0, 1)
    assert store.ids(1) == {"4"} and store.count(2) == 0
    (tmp_path / "1" / "annotations.json").write_text("{broken", encoding="utf-8")
    assert store.count(1) == 0  # read as empty; moved aside before the next write
    assert store.put(1, annotation(5, "t"), task)
    assert list((tmp_path / "1").glob("annotations.json.unreadable-*"))


def test_a_run_reads_the_newest_tasks_within_its_time_limit(demo, scenes, tmp_path):
    root, tasks = scenes
    backend = make_backend(demo, root, tmp_path / "md", train_max_images=3, train_time_limit=1)
    for task in tasks[:5]:
        plain = {k: v for k, v in task.items() if k != "annotations"}
        backend.annotations.put(3, task["annotations"][0], plain, CONFIG)
    maps = backend.segmenter.label_maps

    def slow_maps(*args, **kwargs):
        time.sleep(0.6)
        return maps(*args, **kwargs)

    backend.segmenter.label_maps = slow_maps
    record = backend.train(3)
    newest = {str(t["annotations"][0]["id"]) for t in tasks[2:5]}
    assert record["annotations"] and set(record["annotations"]) < newest  # not all 3 in 1 s
    assert any("CLIPSEG_TRAIN_TIME_LIMIT=1 s" in p for p in record["problems"])
    assert backend.learning_status(3)["last_run"]["problems"] == record["problems"]


def test_start_training_syncs_with_the_export_then_trains(demo, scenes, tmp_path, fake_ls):
    root, tasks = scenes
    fake_ls.export = tasks[:4]
    backend = make_backend(
        demo,
        root,
        tmp_path / "md",
        train_every=0,
        label_studio_url=fake_ls.url,
        label_studio_api_key="legacy-key",
    )
    gone = {"id": 999, "updated_at": "2026-01-01T00:00:00+00:00", "result": []}
    backend.annotations.put(3, gone, {"id": 99, "data": {}}, CONFIG)  # deleted meanwhile
    backend.fit("START_TRAINING", {"action": "START_TRAINING", "project": PROJECT})
    assert backend.trainer.join(3, 120)
    expected = {str(t["annotations"][0]["id"]) for t in tasks[:4]}
    assert backend.annotations.ids(3) == expected
    [run] = backend.learning_status(3)["runs"]
    assert set(run["annotations"]) == expected and run["problems"] == []


def test_training_settings():
    from backend.settings import SettingsError

    assert (Settings().train_every, Settings().train_time_limit, Settings().train_max_images) == (
        10,
        300.0,
        200,
    )
    env = {
        "CLIPSEG_TRAIN_EVERY": "0",
        "CLIPSEG_TRAIN_TIME_LIMIT": "60",
        "CLIPSEG_TRAIN_MAX_IMAGES": "50",
    }
    settings = Settings.from_env(env)
    assert (settings.train_every, settings.train_time_limit, settings.train_max_images) == (
        0,
        60.0,
        50,
    )
    for name, value in (("CLIPSEG_TRAIN_EVERY", "-1"), ("CLIPSEG_TRAIN_MAX_IMAGES", "1")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


def test_clipseg_label_learn_waits_for_no_backend_run(demo, scenes, tmp_path, capsys):
    """The offline run and the backend's never train one project of one store together."""
    import fcntl

    from backend.cli import main
    from backend.cli.common import EXIT_USAGE

    root, _ = scenes
    backend = make_backend(demo, root, tmp_path / "md")
    folder = backend.learned.root / "3"
    folder.mkdir(parents=True)
    args = ["learn", "--export", str(root / "export.json"), "--labels", ",".join(LABELS)]
    args += ["--model", "demo", "--device", "cpu", "--store", str(tmp_path / "md")]
    with open(folder / "training.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # the backend is training project 3
        assert main([*args, "--project", "3"]) == EXIT_USAGE
    assert "being trained by the backend" in capsys.readouterr().err
    assert backend.learned.runs("3") == []


def test_the_loop_in_the_real_server_survives_kill_9_of_a_training(scenes, tmp_path):
    """`clipseg-backend` with 2 gunicorn workers: webhooks train (one run at a time, whichever
    worker got them); a kill -9 of the whole server during a training, then a restart, keeps
    the promoted state and every annotation."""
    from process_helpers import BackendProcess

    root, tasks = scenes
    env = {
        "CLIPSEG_MODEL": "demo",
        "MODEL_DIR": str(tmp_path / "md"),
        "LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "WORKERS": "2",
        "CLIPSEG_TRAIN_EVERY": "5",
    }

    def wait_idle(server, runs, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = server.get("/learning/3")
            if status["state"] == "idle" and len(status["runs"]) >= runs:
                return status
            time.sleep(0.5)
        raise AssertionError(f"no idle state with {runs} run(s): {status}")

    server = BackendProcess(env, tmp_path / "server.log").start()
    try:
        for task in tasks[:5]:
            assert server.post("/webhook", created(task))[0] == 200
        status = wait_idle(server, 1)
        assert status["annotations"] == 5 and status["serving"] == "s000001"
        version = status["model_version"]
        assert server.post("/webhook", {"action": "START_TRAINING", "project": PROJECT})[0] == 200
        deadline = time.monotonic() + 60
        while server.get("/learning/3")["state"] != "training":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for pid in [*server.worker_pids(), server.proc.pid]:
            os.kill(pid, signal.SIGKILL)
        server.proc.wait(10)
    finally:
        server.stop()
    again = BackendProcess(env, tmp_path / "server2.log").start()
    try:
        status = again.get("/learning/3")
        assert status["serving"] == "s000001" and status["model_version"] == version
        assert status["annotations"] == 5
    finally:
        again.stop()
