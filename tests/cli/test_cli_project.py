"""`clipseg-label predict --project P [--push]` over a stand-in Label Studio client (the SDK's
`tasks.list` pager and `projects.import_predictions`) and the oracle predictor: tasks fetched,
those holding this model_version's prediction skipped, predictions imported in batches, and a
run stopped between saving and pushing resumed without a duplicate."""

from __future__ import annotations

import json

from cli_helpers import SEEDS

from backend import cli
from backend.batch.push import PushError


class FakeLabelStudio:
    """`client.tasks.list(project=, fields=, page_size=)` yields the project's tasks (counting the
    pages it would fetch); `client.projects.import_predictions(id=, request=)` stores each
    prediction on its task, or raises once `fail_after` imports have gone through."""

    def __init__(self, tasks: list[dict], fail_after: int | None = None) -> None:
        self.project_tasks = tasks
        self.imports: list[list[dict]] = []
        self.fail_after = fail_after
        self.pages = 0
        self.tasks = self
        self.projects = self

    def list(self, *, project, fields=None, page_size=100):
        assert fields == "all"
        for i, task in enumerate(self.project_tasks):
            if i % page_size == 0:
                self.pages += 1
            yield json.loads(json.dumps(task))

    def import_predictions(self, *, id, request):
        if self.fail_after is not None and len(self.imports) >= self.fail_after:
            raise PushError("import predictions: Label Studio answered HTTP 500")
        self.imports.append(list(request))
        by_id = {t["id"]: t for t in self.project_tasks}
        for pred in request:
            by_id[pred["task"]].setdefault("predictions", []).append(pred)


def _tasks(scenes, other_version: bool = True) -> list[dict]:
    tasks = [{"id": 10 + i, "data": {"image": str(p.resolve())}} for i, (p, _) in enumerate(scenes)]
    if other_version:
        tasks[0]["predictions"] = [{"model_version": "someone-else@1", "result": []}]
    return tasks


def _run(monkeypatch, tmp_path, client, *extra):
    monkeypatch.setattr("backend.cli.predict.connect", lambda args: client)
    monkeypatch.setattr("backend.batch.project.PUSH_EVERY", 2)
    args = ["predict", "--project", "7", "--url", "http://ls.invalid", "--api-key", "k"]
    args += ["--labels", "red circle,star", "--out", str(tmp_path / "out"), "-q", *extra]
    return cli.main(args)


def _pushed_per_task(client) -> dict[int, int]:
    counts: dict[int, int] = {}
    for chunk in client.imports:
        for pred in chunk:
            counts[pred["task"]] = counts.get(pred["task"], 0) + 1
    return counts


def test_project_tasks_are_predicted_and_pushed_in_batches(tmp_path, scenes, oracle, monkeypatch):
    client = FakeLabelStudio(_tasks(scenes))
    assert _run(monkeypatch, tmp_path, client, "--push") == 0
    assert [len(chunk) for chunk in client.imports] == [2, 2]  # PUSH_EVERY = 2, 4 tasks
    assert _pushed_per_task(client) == {10 + i: 1 for i in range(len(SEEDS))}
    version = client.imports[0][0]["model_version"]
    assert version.startswith("clipseg-oracle@")
    assert any(pred["result"] for chunk in client.imports for pred in chunk)
    tasks = json.loads((tmp_path / "out" / "tasks.json").read_text())
    assert [t["meta"]["clipseg"]["task_id"] for t in tasks] == [10, 11, 12, 13]

    # run again: every task holds this model_version's prediction now; nothing is redone or sent
    assert _run(monkeypatch, tmp_path, client, "--push") == 0
    assert len(client.imports) == 2 and oracle[-1].predictor.images_set == 0


def test_without_push_nothing_is_sent(tmp_path, scenes, oracle, monkeypatch):
    client = FakeLabelStudio(_tasks(scenes))
    assert _run(monkeypatch, tmp_path, client) == 0
    assert client.imports == [] and client.pages == 1
    assert len(json.loads((tmp_path / "out" / "tasks.json").read_text())) == len(SEEDS)


def test_a_push_stopped_part_way_resumes_without_duplicates(
    tmp_path, scenes, oracle, monkeypatch, capsys
):
    failing = FakeLabelStudio(_tasks(scenes), fail_after=1)  # the second import fails
    assert _run(monkeypatch, tmp_path, failing, "--push") == 1
    assert "HTTP 500" in capsys.readouterr().err
    assert sum(_pushed_per_task(failing).values()) == 2

    # the records of the other tasks were saved: the rerun sends them without predicting again
    client = FakeLabelStudio(failing.project_tasks)
    assert _run(monkeypatch, tmp_path, client, "--push") == 0
    assert oracle[-1].predictor.images_set == 0
    merged = _pushed_per_task(failing)
    for task, count in _pushed_per_task(client).items():
        merged[task] = merged.get(task, 0) + count
    assert merged == {10 + i: 1 for i in range(len(SEEDS))}


def test_project_and_inputs_are_exclusive(tmp_path, capsys):
    code = cli.main(["predict", "x.png", "--project", "3", "--labels", "a", "--out", str(tmp_path)])
    assert code == 2 and "not both" in capsys.readouterr().err
    code = cli.main(["predict", "x.png", "--push", "--labels", "a", "--out", str(tmp_path)])
    assert code == 2 and "--push needs --project" in capsys.readouterr().err
