"""`clipseg-label predict` with the local engine against the Ray engine, on N demo images.

Writes N demo scenes (`clipseg.demo.scenes`, ``--size`` px, PNG) and, for each engine and each
N of ``--sizes``, runs `backend.batch.predict.predict` (the demo model, ``--labels`` labels,
batch ``--batch-size``) in a fresh Python process, so that each figure is of one run alone:

- wall time of the whole call (model loading included; for Ray also starting the local Ray
  and its actors), images/s over it;
- the driver's peak RSS (``ru_maxrss`` of that process: the Ray workers are other processes),
  which must stay flat as N grows (the records stream to the state folder, the driver keeps no
  mask).

The Ray engine runs on a local Ray of ``--ray-cpus`` CPUs with ``--num-workers`` actors of
``--cpus-per-worker`` CPUs each; the local engine uses ``--threads`` torch threads. Target (issue
21): on a 2-core machine, Ray's wall time for 200 images within 1.3x of the local engine's.

    python benchmarks/bench_ray.py --sizes 100 200 1000

prints a markdown table preceded by a line naming the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(args: argparse.Namespace) -> None:
    """One run in this process; prints a JSON line with the figures."""
    import torch

    from backend.batch import predict as batch_predict
    from backend.settings import Settings

    torch.set_num_threads(args.threads)
    images = sorted(Path(args.images).glob("*.png"))[: args.n]
    listing = Path(args.out).with_suffix(".txt")
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    options = None
    if args.engine == "ray":
        import ray

        from backend.batch.ray_engine import RayOptions

        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level="WARNING")
        options = RayOptions(num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker)
    labels = args.labels.split(",")
    start = time.perf_counter()
    summary = batch_predict.predict(
        [str(listing)],
        settings=Settings(model="demo", device="cpu"),
        out_dir=args.out,
        labels=labels,
        batch_size=args.batch_size,
        quiet=True,
        engine=args.engine,
        ray_options=options,
    )
    wall = time.perf_counter() - start
    if args.engine == "ray":
        import ray

        ray.shutdown()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"wall": wall, "done": summary.done, "rss_mb": rss_mb}))


def _write_images(folder: Path, n: int, size: int) -> None:
    from PIL import Image

    from clipseg.demo.scenes import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"scene-{i:05d}.png"
        if not path.exists():
            Image.fromarray(make_scene(10**8 + i, size=size).image).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 1000])
    parser.add_argument("--engines", nargs="+", default=["local", "ray"])
    parser.add_argument("--size", type=int, default=64, help="scene size in pixels")
    parser.add_argument("--labels", default="red circle,blue square")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, local engine")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--work-dir", default=None, help="default: a temporary folder")
    # internal: one run
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-ray-"))
    images = work / "images"
    _write_images(images, max(args.sizes), args.size)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    rows = []
    for n in args.sizes:
        walls = {}
        for engine in args.engines:
            out = work / f"out-{engine}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, __file__, "--child", "--engine", engine, "--n", str(n)]
            cmd += ["--images", str(images), "--out", str(out), "--labels", args.labels]
            cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            cmd += ["--ray-cpus", str(args.ray_cpus), "--num-workers", str(args.num_workers)]
            cmd += ["--cpus-per-worker", str(args.cpus_per_worker)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{engine} at N={n} failed:\n{done.stderr[-3000:]}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            walls[engine] = figures["wall"]
            rows.append((n, engine, figures))
            print(f"N={n} {engine}: {figures}", file=sys.stderr)
        if {"local", "ray"} <= set(walls):
            rows.append((n, "ray / local", {"ratio": walls["ray"] / walls["local"]}))

    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {args.size} px scenes, "
        f"{len(args.labels.split(','))} labels, batch {args.batch_size}, Ray {args.ray_cpus} "
        f"CPUs / {args.num_workers} worker(s) x {args.cpus_per_worker} CPU"
    )
    print("| N | engine | wall s | images/s | driver peak RSS MB |")
    print("| --- | --- | --- | --- | --- |")
    for n, engine, f in rows:
        if "ratio" in f:
            print(f"| {n} | ray / local | {f['ratio']:.2f}x | | |")
        else:
            rate = f["done"] / f["wall"]
            print(f"| {n} | {engine} | {f['wall']:.1f} | {rate:.1f} | {f['rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
