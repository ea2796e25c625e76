"""rank (ordering, files, --push) and push (new tasks, existing tasks) against a fake Label Studio
served by httpx.MockTransport: the SDK's real requests, checked at the HTTP level."""

from __future__ import annotations

import csv
import json
import re

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend import ls_client
from backend.batch import push
from backend.batch.rank import rank_tasks, write_ranking


class FakeLabelStudio:
    """Just enough of Label Studio's API: tasks of one project, predictions, import."""

    def __init__(self, tasks: list[dict]) -> None:
        self.tasks = tasks
        self.predictions: list[dict] = []
        self.imported: list[dict] = []
        self.updates: list[tuple[int, dict]] = []
        self.auth: set[str] = set()

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.auth.add(request.headers.get("Authorization", ""))
        path, method = request.url.path, request.method
        if path == "/api/tasks/" and method == "GET":
            page = int(request.url.params.get("page", "1"))
            items = self.tasks if page == 1 else []
            return httpx.Response(
                200,
                json={
                    "tasks": items,
                    "total": len(self.tasks),
                    "total_annotations": 0,
                    "total_predictions": 0,
                },
            )
        if m := re.fullmatch(r"/api/projects/(\d+)/import", path):
            if m[1] != "3":
                return httpx.Response(404, json={"detail": "Not found."})
            body = json.loads(request.content)
            self.imported.extend(body)
            return httpx.Response(201, json={"task_count": len(body), "project": int(m[1])})
        if path == "/api/predictions/" and method == "POST":
            body = json.loads(request.content)
            body["id"] = 100 + len(self.predictions)
            self.predictions.append(body)
            return httpx.Response(201, json=body)
        if path == "/api/predictions/" and method == "GET":
            task = int(request.url.params["task"])
            return httpx.Response(200, json=[p for p in self.predictions if p["task"] == task])
        if m := re.fullmatch(r"/api/predictions/(\d+)/", path):
            body = json.loads(request.content)
            self.updates.append((int(m[1]), body))
            return httpx.Response(200, json={"id": int(m[1]), **body, "result": [], "task": 0})
        return httpx.Response(404, json={"detail": f"not faked: {method} {path}"})


def _client(fake: FakeLabelStudio):
    transport = httpx.MockTransport(fake.handler)
    return ls_client.sdk_client(
        "http://ls.test", "legacy-token-123", httpx_client=httpx.Client(transport=transport)
    )


def _task(image: str, uncertainty: float | None, scores=(0.9,), task_id=None) -> dict:
    task = {
        "data": {"image": image},
        "predictions": [
            {
                "model_version": "m1",
                "score": 0.9,
                "result": [{"type": "brushlabels", "score": s} for s in scores],
            }
        ],
    }
    if uncertainty is not None:
        task["meta"] = {"clipseg": {"uncertainty": uncertainty}}
    if task_id is not None:
        task["id"] = task_id
    return task


def test_rank_orders_by_uncertainty_with_fallbacks(tmp_path):
    tasks = [
        _task("a.png", 0.1),
        _task("b.png", 0.7),
        _task("c.png", None, scores=(0.5, 0.7)),  # 1 - 0.6 = 0.4
        {"data": {"image": "d.png"}},  # no prediction: last
        _task("e.png", 0.7),  # tie with b: input order
    ]
    ranking = rank_tasks(tasks)
    assert [r.image for r in ranking] == ["b.png", "e.png", "c.png", "a.png", "d.png"]
    assert [r.source for r in ranking] == ["meta", "meta", "region_scores", "meta", "none"]
    assert ranking[2].uncertainty == pytest.approx(0.4)
    assert ranking[-1].uncertainty is None

    rows = list(csv.DictReader(write_ranking(tmp_path / "r.csv", ranking).open()))
    assert [r["image"] for r in rows] == ["b.png", "e.png", "c.png", "a.png", "d.png"]
    assert rows[-1]["uncertainty"] == ""
    data = json.loads(write_ranking(tmp_path / "r.json", ranking).read_text())
    assert data[0] == {
        "rank": 1,
        "task_id": None,
        "image": "b.png",
        "uncertainty": 0.7,
        "source": "meta",
        "regions": 1,
    }


def test_push_new_tasks_imports_data_predictions_and_meta():
    fake = FakeLabelStudio([])
    tasks = [_task("a.png", 0.2), _task("b.png", 0.3)]
    report = push.import_tasks(_client(fake), 3, tasks)
    assert (report.created_tasks, report.created_predictions) == (2, 2)
    assert fake.imported == tasks
    assert fake.auth == {"Token legacy-token-123"}


def test_push_existing_matches_by_image_and_lists_the_rest():
    fake = FakeLabelStudio(
        [{"id": 5, "data": {"image": "a.png"}}, {"id": 6, "data": {"image": "x.png"}}]
    )
    report = push.attach_predictions(_client(fake), 3, [_task("a.png", 0.2), _task("b.png", 0.3)])
    assert report.created_predictions == 1 and report.unmatched == ["b.png"]
    (created,) = fake.predictions
    assert created["task"] == 5 and created["model_version"] == "m1" and created["score"] == 0.9
    assert created["result"] == [{"type": "brushlabels", "score": 0.9}]


def test_rank_push_sets_prediction_scores():
    fake = FakeLabelStudio([{"id": 5, "data": {"image": "a.png"}}])
    fake.predictions = [
        {"id": 1, "task": 5, "model_version": "old", "result": []},
        {"id": 2, "task": 5, "model_version": "m1", "result": []},
        {"id": 3, "task": 9, "model_version": "m1", "result": []},
    ]
    client = _client(fake)
    report = push.push_scores(client, 3, [(None, "a.png", 0.25), (9, "z.png", 0.5)], "m1")
    assert report.updated_predictions == 2 and report.unmatched == []
    assert [(i, b["score"]) for i, b in fake.updates] == [(2, 0.25), (3, 0.5)]
    # without a model version: the newest prediction of the task
    fake.updates.clear()
    push.push_scores(client, 3, [(5, "a.png", 0.75)])
    assert [(i, b["score"]) for i, b in fake.updates] == [(2, 0.75)]


def test_push_errors_name_the_request():
    fake = FakeLabelStudio([])
    with pytest.raises(push.PushError, match="HTTP 404.*project id"):
        push.import_tasks(_client(fake), 99, [_task("a.png", 0.2)])
    with pytest.raises(ValueError, match="LABEL_STUDIO_URL"):
        ls_client.sdk_client("", "k")
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY"):
        ls_client.sdk_client("http://x", "")


def test_rank_and_push_commands(tmp_path, monkeypatch, capsys):
    from backend import cli

    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([_task("a.png", 0.1), _task("b.png", 0.6)]))
    out = tmp_path / "rank.csv"
    assert cli.main(["rank", str(tasks), "--out", str(out), "--top", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and "b.png" in printed[0] and "0.6000" in printed[0]
    assert [r["image"] for r in csv.DictReader(out.open())] == ["b.png", "a.png"]

    assert cli.main(["rank", str(tasks), "--out", str(out), "--push"]) == 2
    assert "--push needs --project" in capsys.readouterr().err
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    code = cli.main(["push", str(tasks), "--project", "3", "--url", "http://ls.test"])
    assert code == 2 and "LABEL_STUDIO_API_KEY" in capsys.readouterr().err


# ------------------------------------------------------------------ Label Studio out of reach


@pytest.fixture
def no_retry_wait(monkeypatch):
    """The SDK retries a refused connection after 1 s, 2 s: no waiting in tests."""
    from label_studio_sdk.core import http_client

    monkeypatch.setattr(http_client, "_retry_timeout_from_retries", lambda retries: 0.0)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once closed


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transport_errors_become_push_errors_naming_the_url(error, no_retry_wait):
    def handler(request):
        error.request = request
        raise error

    client = ls_client.sdk_client(
        "http://ls.test:8080",
        "k",
        httpx_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(push.PushError) as info:
        push.import_tasks(client, 3, [_task("a.png", 0.2)])
    text = str(info.value)
    assert "cannot reach Label Studio at http://ls.test:8080" in text and str(error) in text
    assert "LABEL_STUDIO_URL" in text and not info.value.report.changed


def test_a_connection_lost_while_paging_tasks_is_a_push_error(no_retry_wait):
    """The SDK fetches later pages of tasks.list while they are iterated."""
    fake = FakeLabelStudio([{"id": 5, "data": {"image": "a.png"}}])

    def handler(request):
        if request.url.path == "/api/tasks/" and request.url.params.get("page", "1") != "1":
            raise httpx.ConnectError("[Errno 104] Connection reset by peer", request=request)
        return fake.handler(request)

    client = ls_client.sdk_client(
        "http://ls.test", "k", httpx_client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    with pytest.raises(push.PushError, match="list the tasks of project 3: cannot reach"):
        push.attach_predictions(client, 3, [_task("a.png", 0.2)])


@pytest.mark.parametrize("command", ["push", "rank"])
def test_unreachable_label_studio_is_one_line_and_exit_2(command, tmp_path, capsys, no_retry_wait):
    from backend import cli

    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([_task("a.png", 0.1, task_id=4)]))
    url = f"http://127.0.0.1:{_closed_port()}"
    args = [str(tasks), "--project", "3", "--url", url, "--api-key", "x"]
    if command == "rank":
        args += ["--out", str(tmp_path / "r.csv"), "--push", "--top", "0"]
    assert cli.main([command, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot reach Label Studio at {url}" in err and "--url / LABEL_STUDIO_URL" in err
    if command == "rank":
        assert (tmp_path / "r.csv").is_file()  # the ranking is written before the push


def _cli_client(monkeypatch, handler):
    """Make the CLI's Label Studio client talk to ``handler``."""
    real = ls_client.sdk_client

    def sdk_client(url, api_key, **kwargs):
        return real(url, api_key, httpx_client=httpx.Client(transport=httpx.MockTransport(handler)))

    monkeypatch.setattr(ls_client, "sdk_client", sdk_client)


def test_a_refused_first_request_keeps_its_message_and_is_a_usage_error(
    tmp_path, monkeypatch, capsys
):
    from backend import cli

    _cli_client(monkeypatch, lambda request: httpx.Response(401, json={"detail": "bad token"}))
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([_task("a.png", 0.1)]))
    code = cli.main(
        ["push", str(tasks), "--project", "3", "--url", "http://ls.test"] + ["--api-key", "x"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "HTTP 401 (check the API key" in err and "bad token" in err


def test_a_push_stopped_part_way_says_what_was_written_and_exits_1(
    tmp_path, monkeypatch, capsys, no_retry_wait
):
    from backend import cli

    fake = FakeLabelStudio([])

    def handler(request):
        if fake.imported:  # the second chunk
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return fake.handler(request)

    _cli_client(monkeypatch, handler)
    monkeypatch.setattr(push, "_IMPORT_CHUNK", 1)
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([_task("a.png", 0.1), _task("b.png", 0.2)]))
    code = cli.main(
        ["push", str(tasks), "--project", "3", "--url", "http://ls.test"] + ["--api-key", "x"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot reach Label Studio at http://ls.test" in err
    assert "1 tasks created, 1 predictions created" in err
    assert [t["data"]["image"] for t in fake.imported] == ["a.png"]


# ------------------------------------------------------------------ coverage order


def _labelled(image: str, uncertainty: float, labels: tuple[str, ...]) -> dict:
    task = _task(image, uncertainty)
    task["predictions"][0]["result"] = [
        {"type": "brushlabels", "value": {"brushlabels": [label]}, "score": 0.9} for label in labels
    ]
    return task


def test_coverage_order_spreads_the_labels_before_uncertainty():
    tasks = [
        _labelled("cat1.png", 0.9, ("cat",)),
        _labelled("cat2.png", 0.8, ("cat",)),
        _labelled("dog.png", 0.1, ("dog",)),
        _labelled("both.png", 0.2, ("cat", "bird")),
        _labelled("none.png", 0.5, ()),
    ]
    ranked = [r.image for r in rank_tasks(tasks)]
    # both.png brings two new labels; then dog (new) before another cat; the empty one last
    assert ranked == ["both.png", "dog.png", "cat1.png", "cat2.png", "none.png"]
    by_uncertainty = [r.image for r in rank_tasks(tasks, order="uncertainty")]
    assert by_uncertainty == ["cat1.png", "cat2.png", "none.png", "both.png", "dog.png"]
    with pytest.raises(ValueError, match="unknown ranking order 'best'"):
        rank_tasks(tasks, order="best")


def _greedy(uncertainty, labels):
    """The coverage order by its definition, scored afresh at every step (n^2)."""
    left, seen, out = list(range(len(labels))), {}, []
    while left:
        best = max(
            left,
            key=lambda i: (
                sum(1 / (1 + seen.get(lab, 0)) for lab in labels[i]),
                uncertainty[i],
                -i,
            ),
        )
        out.append(best)
        left.remove(best)
        for lab in labels[best]:
            seen[lab] = seen.get(lab, 0) + 1
    return out


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.25, 0.5, 1.0]),
            st.frozensets(st.sampled_from("abcde"), max_size=3),
        ),
        max_size=25,
    )
)
@settings(max_examples=200, deadline=None)
def test_the_lazy_coverage_order_is_the_greedy_one(rows):
    from backend.batch.rank import coverage_order

    uncertainty = [u for u, _ in rows]
    labels = [lab for _, lab in rows]
    assert coverage_order(uncertainty, labels) == _greedy(uncertainty, labels)
