"""kill -9 during a webhook flood, against the real gunicorn server: every webhook answered
"queued" is applied after the restart (issue 16, 5).

The flood: FLOOD webhooks (ANNOTATION_CREATED, one annotation id each, REGIONS regions to
embed, so that they arrive faster than they are applied) from SENDERS threads. After KILL_WORKER
acknowledgements one gunicorn worker is killed with SIGKILL (gunicorn starts another); after
KILL_ALL the master and every worker are (a machine losing power, the OOM killer); the server is
started again on the same port while the senders go on. At the end every acknowledged id must
be in the exemplar store and in the learning loop's annotation store (what the next training
learns from; trainings run during the flood, every CLIPSEG_TRAIN_EVERY=10 annotations).
`python tests/backend/test_durability.py` runs it alone and prints
the figures docs/backend.md quotes.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from backend_helpers import build_tiny_checkpoint, png_bytes
from process_helpers import BackendProcess

FLOOD = 300
SENDERS = 6
REGIONS = 4
KILL_WORKER = 80
KILL_ALL = 170
CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
    '<Label value="cat"/></RectangleLabels></View>'
)


def _webhook(ann_id: int) -> bytes:
    regions = [
        {
            "id": f"r{i}",
            "from_name": "box",
            "to_name": "image",
            "type": "rectanglelabels",
            "original_width": 320,
            "original_height": 240,
            "value": {"x": 5 * i, "y": 10, "width": 30, "height": 40, "rectanglelabels": ["cat"]},
        }
        for i in range(REGIONS)
    ]
    body = {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": ann_id, "updated_at": "2026-01-01T00:00:00Z", "result": regions},
        "task": {"id": ann_id, "data": {"image": "/data/local-files/?d=a.png"}},
        "project": {"id": 1, "label_config": CONFIG},
    }
    return json.dumps(body).encode()


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def server_runs(server: BackendProcess) -> int:
    """How many training runs of project 1 the store records (GET /learning/1)."""
    return len(server.get("/learning/1")["runs"])


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie holds no socket


def _ids_in(files: list[Path], key: str) -> set[int]:
    """The int ids under ``key`` of the JSON ``files`` (one being replaced is read next time)."""
    ids: set[int] = set()
    for path in files:
        try:
            ids |= {int(a) for a in json.loads(path.read_text())[key]}
        except (OSError, ValueError):
            pass  # being replaced right now: read again later
    return ids


def _stored_ids(model_dir: Path) -> set[int]:
    """Annotation ids in the exemplar store of project 1."""
    return _ids_in(list((model_dir / "exemplars").glob("*/1.json")), "annotations")


def _training_ids(model_dir: Path) -> set[int]:
    """Annotation ids in the learning loop's store of project 1 (backend.learning.store)."""
    return _ids_in(list((model_dir / "learning").glob("*/1/annotations.json")), "annotations")


def run_flood(tmp: Path) -> dict[str, float]:
    """The flood with both kills; returns the figures. Raises AssertionError on a loss."""
    checkpoint = build_tiny_checkpoint(tmp / "ckpt")
    (tmp / "files").mkdir(exist_ok=True)
    (tmp / "files" / "a.png").write_bytes(png_bytes(320, 240))
    model_dir = tmp / "data"
    env = {
        "CLIPSEG_MODEL": str(checkpoint),
        "MODEL_DIR": str(model_dir),
        "LOCAL_FILES_DOCUMENT_ROOT": str(tmp / "files"),
        "WORKERS": "2",
        "THREADS": "4",
        "CLIPSEG_MAX_EXEMPLARS_PER_LABEL": "1000",
    }
    server = BackendProcess(env, tmp / "server.log").start()
    port = server.port
    url = f"http://127.0.0.1:{port}/webhook"
    acked: set[int] = set()
    refused: list[str] = []
    latencies: list[float] = []
    next_id = iter(range(1, FLOOD + 1))
    lock = threading.Lock()

    def send() -> None:
        """Send ids until none is left; while the server is down, the same id again."""
        while True:
            with lock:
                ann_id = next(next_id, None)
            if ann_id is None:
                return
            request = urllib.request.Request(
                url, _webhook(ann_id), {"Content-Type": "application/json"}
            )
            give_up = time.monotonic() + 60
            while time.monotonic() < give_up:
                try:
                    sent = time.monotonic()
                    with urllib.request.urlopen(request, timeout=10) as r:
                        if r.status == 200 and json.load(r)["status"] == "queued":
                            with lock:
                                acked.add(ann_id)
                                latencies.append(time.monotonic() - sent)
                    break
                except urllib.error.HTTPError as exc:  # 503: not accepted, not retried
                    with lock:
                        refused.append(f"HTTP {exc.code}")
                    break
                except (OSError, http.client.HTTPException) as exc:  # down, or killed mid-answer
                    with lock:
                        refused.append(type(exc).__name__)
                    time.sleep(0.05)

    def wait_acked(count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(acked) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    started = time.monotonic()
    senders = [threading.Thread(target=send) for _ in range(SENDERS)]
    for t in senders:
        t.start()
    try:
        wait_acked(KILL_WORKER)
        worker = server.worker_pids()[0]
        _kill([worker])  # gunicorn's master starts another
        applied_at_first_kill = len(_stored_ids(model_dir))
        wait_acked(KILL_ALL)
        everyone = [server.proc.pid, *server.worker_pids()]
        _kill(everyone)
        acked_at_second_kill = len(acked)
        applied_at_second_kill = len(_stored_ids(model_dir))
        server.proc.wait(10)
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in everyone) and time.monotonic() < deadline:
            time.sleep(0.05)
        server.stop()
        server = BackendProcess(env, tmp / "server.log", port=port).start()
        for t in senders:
            t.join(120)
        send_seconds = time.monotonic() - started
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (
            acked <= _stored_ids(model_dir) and acked <= _training_ids(model_dir)
        ):
            time.sleep(0.25)
        drain_seconds = time.monotonic() - started - send_seconds
        stored = _stored_ids(model_dir)
        for_training = _training_ids(model_dir)
        runs = server_runs(server)
    finally:
        server.stop()
    lost = sorted(acked - stored)
    assert not lost, f"{len(lost)} acknowledged webhooks lost: {lost[:20]}"
    assert stored <= set(range(1, FLOOD + 1))
    lost = sorted(acked - for_training)
    assert not lost, f"{len(lost)} acknowledged annotations lost to training: {lost[:20]}"
    return {
        "sent": FLOOD,
        "acknowledged": len(acked),
        "failed attempts (server down or killed mid-answer; 503)": len(refused),
        "acknowledged at the kill of master and workers": acked_at_second_kill,
        "applied at the kill of one worker": applied_at_first_kill,
        "applied at the kill of master and workers": applied_at_second_kill,
        "applied after the restart": len(stored & acked),
        "lost": len(lost),
        "in the training store after the restart": len(for_training & acked),
        "training runs recorded": runs,
        "answer time of an acknowledged webhook, median ms": round(
            1000 * statistics.median(latencies), 1
        ),
        "answer time of an acknowledged webhook, max ms": round(1000 * max(latencies), 1),
        "seconds sending (both kills and the restart included)": round(send_seconds, 1),
        "seconds more until every acknowledged one was applied": round(drain_seconds, 1),
    }


def test_no_acknowledged_webhook_is_lost_to_kill_9(tmp_path):
    figures = run_flood(tmp_path)
    assert figures["acknowledged"] >= KILL_ALL
    # the kills came while webhooks were still waiting: the journal had something to replay
    assert figures["applied at the kill of master and workers"] < KILL_ALL


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, value in run_flood(Path(tmp)).items():
            print(f"{name}: {value}")
    sys.exit(0)
