"""Peak memory of the backend serving the full-size model on CPU in fp32.

Starts `clipseg-backend` (gunicorn: a master that loads the model, then forks the workers) as a
subprocess with CLIPSEG_MODEL pointing at a random checkpoint at the CIDAS/clipseg-rd64-refined
shape (see common.py), CLIPSEG_DEVICE=cpu and CLIPSEG_DTYPE=float32; waits for /health; sends
/setup and then --requests /predict requests for one 1920x1080 JPEG (a local-files task) with 5
labels on a BrushLabels and a PolygonLabels control; then reads, for the master and every worker,
`VmHWM` (the peak resident set) and `VmRSS` from /proc/<pid>/status and `Pss` (resident memory
with shared pages divided among their sharers) from /proc/<pid>/smaps_rollup.

After a preloading fork the workers share the model's pages with the master, so VmHWM counts them
in every process: the sum of Pss is what the server as a whole holds now, and the largest VmHWM
is the peak of one process. The target is a peak of at most 1.5 GB.

    python benchmarks/bench_memory.py --requests 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

logger = logging.getLogger("bench_memory")

TARGET_BYTES = 1.5e9
LABELS = ["cat", "dog", "car", "tree", "sky"]


def label_config(labels: list[str]) -> str:
    """A project config with a brush and a polygon control over the same labels (as in LS docs)."""
    items = "".join(f'<Label value="{label}"/>' for label in labels)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<BrushLabels name="tag" toName="image">{items}</BrushLabels>'
        f'<PolygonLabels name="poly" toName="image">{items}</PolygonLabels></View>'
    )


def write_task_image(root: Path, width: int = 1920, height: int = 1080, seed: int = 0) -> str:
    """Save a photo-like JPEG under `root`; return the task's local-files reference to it."""
    common.make_image(width, height, seed=seed).save(root / "bench.jpg", quality=90)
    return "/data/local-files/?d=bench.jpg"


def predict_body(image_ref: str, config: str, task_id: int = 1) -> dict:
    """A /predict body shaped like Label Studio 1.23's (shared/ls-protocol)."""
    return {
        "tasks": [{"id": task_id, "data": {"image": image_ref}, "meta": {}, "project": 1}],
        "project": "1.1795712334",
        "label_config": config,
        "params": {"login": None, "password": None, "context": None},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command() -> list[str]:
    """The `clipseg-backend` console script next to this interpreter, else `-m backend.server`."""
    script = Path(sys.executable).with_name("clipseg-backend")
    if script.is_file():
        return [str(script)]
    found = shutil.which("clipseg-backend")
    return [found] if found else [sys.executable, "-m", "backend.server"]


def children(pid: int) -> list[int]:
    """The process ids whose parent is `pid` (gunicorn's workers), from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def memory_of(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS (from status) and Pss (from smaps_rollup) of `pid`, in bytes."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.is_file():
        for line in rollup.read_text().splitlines():
            if line.startswith("Pss:"):
                values["Pss"] = int(line.split()[1]) * 1024
    return values


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> float:
    """Poll /health until it answers 200; the seconds it took. Fails if the server exits."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"clipseg-backend exited with status {proc.returncode} at start")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"clipseg-backend did not answer /health within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.common_arguments(parser)
    parser.add_argument("--requests", type=int, default=3, help="/predict requests to send")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (WORKERS)")
    parser.add_argument("--small", action="store_true", help="a tiny model (smoke test)")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--log", type=Path, default=None, help="keep the server's log here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    ckpt = common.build_checkpoint(small=args.small, seed=args.seed, cache_dir=args.cache_dir)
    workdir = Path(tempfile.mkdtemp(prefix="clipseg-bench-mem."))
    (workdir / "data").mkdir()
    image_ref = write_task_image(workdir / "data", seed=args.seed)
    config = label_config(LABELS)
    port = free_port()
    env = {
        **os.environ,
        "CLIPSEG_MODEL": str(ckpt),
        "CLIPSEG_DEVICE": "cpu",
        "CLIPSEG_DTYPE": "float32",
        "LOCAL_FILES_DOCUMENT_ROOT": str(workdir / "data"),
        "MODEL_DIR": str(workdir / "model-data"),
        "WORKERS": str(args.workers),
        "LOG_LEVEL": "INFO",
    }
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    log_path = args.log or workdir / "server.log"
    url = f"http://127.0.0.1:{port}"
    cmd = server_command() + ["--host", "127.0.0.1", "--port", str(port)]
    logger.info("starting %s (log: %s)", " ".join(cmd), log_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = wait_healthy(url, proc, args.start_timeout)
        after_start = {pid: memory_of(pid) for pid in [proc.pid, *children(proc.pid)]}
        setup = {"project": "1.1795712334", "schema": config, "hostname": "", "access_token": ""}
        r = requests.post(url + "/setup", json=setup, timeout=60)
        r.raise_for_status()
        latencies = []
        for i in range(args.requests):
            t0 = time.perf_counter()
            r = requests.post(url + "/predict", json=predict_body(image_ref, config, i + 1))
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            results = r.json()["results"]
            if len(results) != 1 or not results[0].get("result"):
                raise AssertionError(f"/predict answered no regions: {json.dumps(results)[:300]}")
        pids = [proc.pid, *children(proc.pid)]
        final = {pid: memory_of(pid) for pid in pids}
    except Exception:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        logger.error("the server's log ends with:\n%s", "\n".join(tail))
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    rows = []
    for pid in pids:
        role = "master" if pid == proc.pid else "worker"
        m, s = final[pid], after_start.get(pid, {})
        rows.append(
            [
                f"{role} {pid}",
                s.get("VmRSS", 0) / 2**20,
                m["VmRSS"] / 2**20,
                m["VmHWM"] / 2**20,
                m.get("Pss", 0) / 2**20,
            ]
        )
    peak = max(m["VmHWM"] for m in final.values())
    pss = sum(m.get("Pss", 0) for m in final.values())
    shape = "small" if args.small else "rd64-refined"
    print(
        f"\nclipseg-backend on CPU, fp32, random {shape} weights, {args.workers} worker(s), "
        f"{args.requests} x /predict (1920x1080 JPEG, {len(LABELS)} labels, brush + polygon)"
    )
    print(f"Machine: {common.machine_description()}")
    print(
        f"ready in {started:.1f} s; /predict latencies: "
        + ", ".join(f"{t:.2f} s" for t in latencies)
        + "\n"
    )
    print(
        common.markdown_table(
            ["process", "RSS after start MiB", "RSS MiB", "peak RSS (VmHWM) MiB", "PSS MiB"], rows
        )
    )
    verdict = "OK" if peak <= TARGET_BYTES else "ABOVE TARGET"
    print(
        f"\nlargest peak RSS: {peak / 1e9:.3f} GB = {peak / 2**30:.2f} GiB (target <= "
        f"{TARGET_BYTES / 1e9:.1f} GB): {verdict}; all processes together now (PSS): "
        f"{pss / 1e9:.2f} GB"
    )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
