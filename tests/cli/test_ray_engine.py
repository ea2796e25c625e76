"""`clipseg-label predict --engine ray` on a local Ray (2 CPUs, started once for the module):
the same outputs as the local engine, a bad image recorded, a killed actor replaced and its
batch retried, and resume across engines. Skipped, saying why, when ray is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from cli_helpers import write_scenes
from PIL import Image

from backend.batch import predict as batch_predict
from backend.batch.state import STATE_DIR
from backend.cli import main
from backend.model import CLIPSegBackend
from backend.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["red circle", "blue square", "green star", "white cross"]
BATCH = 2  # 6 images: three batches, the last holding the bad image alone


def _ray_or_skip():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        pytest.skip('ray is not installed: pip install "clipseg-label-studio[ray]"')
    return ray


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module (2 CPUs, no dashboard); this module's classes are pickled
    by value, so the workers need not import the test folder."""
    ray = _ray_or_skip()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(model="demo", device="cpu")


@pytest.fixture(scope="module")
def backend(settings) -> CLIPSegBackend:
    return CLIPSegBackend.load(settings)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Four demo scenes (96 px), one unseen-style scene (640 x 480, benchmarks/unseen_scenes.py)
    and one file that is not an image."""
    folder = tmp_path_factory.mktemp("ray") / "images"
    write_scenes(folder, [21, 22, 23, 24], size=96)
    spec = importlib.util.spec_from_file_location(
        "unseen_scenes", ROOT / "benchmarks" / "unseen_scenes.py"
    )
    unseen = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("unseen_scenes", unseen)  # its dataclasses look their module up
    spec.loader.exec_module(unseen)
    Image.fromarray(unseen.make_unseen_scene(unseen.SEED_START).image).save(folder / "unseen.png")
    (folder / "zz-broken.png").write_bytes(b"not a png at all")
    return folder


def _predict(images, out, settings, backend, engine, **kwargs):
    return batch_predict.predict(
        [str(images)],
        settings=settings,
        out_dir=out,
        labels=LABELS,
        batch_size=BATCH,
        overlays=True,
        quiet=True,
        backend=backend,
        engine=engine,
        **kwargs,
    )


@pytest.fixture(scope="module")
def local_out(images, settings, backend, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    summary = _predict(images, out, settings, backend, "local")
    assert summary.done == 5 and len(summary.failures) == 1
    return out


def _tasks(out: Path) -> list[dict]:
    """tasks.json without the result ids (random per run, in either engine)."""
    tasks = json.loads((out / "tasks.json").read_text())
    for task in tasks:
        for prediction in task["predictions"]:
            for result in prediction["result"]:
                result.pop("id", None)
    return tasks


def assert_same_outputs(out: Path, expected: Path) -> None:
    assert _tasks(out) == _tasks(expected)
    for name in ("coco.json", "failures.json"):
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name
    overlays = sorted(p.name for p in (expected / "overlays").iterdir())
    assert sorted(p.name for p in (out / "overlays").iterdir()) == overlays
    for name in overlays:
        assert (out / "overlays" / name).read_bytes() == (expected / "overlays" / name).read_bytes()


@pytest.fixture(scope="module")
def ray_run(ray_cluster, images, settings, backend, tmp_path_factory):
    """The module's one fresh Ray engine run of the images, with an inference actor that kills
    itself on its first batch (once): (its summary, its output folder, the crash marker).

    One run for three tests because each Ray Data run starts its actors anew (torch import and
    model load, several seconds on a 2-core machine)."""
    from backend.batch.ray_engine import RayOptions

    tmp = tmp_path_factory.mktemp("ray")
    marker = tmp / "crashed"
    options = RayOptions(max_retries=2, actor_class=_crash_once_class(marker))
    out = tmp / "out"
    summary = _predict(images, out, settings, backend, "ray", ray_options=options)
    return summary, out, marker


def test_ray_engine_writes_what_the_local_engine_writes(ray_run, local_out):
    summary, out, _ = ray_run
    assert summary.done == 5 and summary.skipped == 0
    assert_same_outputs(out, local_out)  # the same masks (RLE), scores and overlays
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 5 and coco["annotations"]


def test_a_bad_image_is_a_failure_record_and_the_rest_is_done(ray_run):
    summary, out, _ = ray_run
    [failure] = summary.failures
    assert failure.ref.endswith("zz-broken.png") and "not a supported image" in failure.error
    assert json.loads((out / "failures.json").read_text()) == [failure.__dict__]
    assert len(json.loads((out / "tasks.json").read_text())) == 5


def _crash_once_class(marker: Path):
    from backend.batch.ray_engine import RayAnnotator

    class CrashingAnnotator(RayAnnotator):
        """Kills its own process on its first batch, once (a marker file says it did): Ray must
        restart the actor and retry that batch. Pickled by value, with its marker."""

        crash_marker = str(marker)

        def predict(self, loaded):
            if not os.path.exists(self.crash_marker):
                Path(self.crash_marker).write_text(str(os.getpid()))
                os._exit(1)
            return super().predict(loaded)

    return CrashingAnnotator


def test_a_killed_actor_is_replaced_and_its_batch_retried(ray_run, local_out):
    summary, out, marker = ray_run
    assert marker.exists()  # an actor did die on its first batch
    assert summary.done == 5 and len(summary.failures) == 1  # nothing lost, nothing doubled
    assert_same_outputs(out, local_out)


def test_ray_resumes_a_run_as_the_local_engine_does(
    ray_cluster, images, settings, backend, local_out, tmp_path
):
    """An interrupted local run (two records missing) resumed by either engine: the same
    files (the redone images form other batches than in an uninterrupted run, which moves the
    last bits of their floats, so the reference is the local engine's resume)."""
    interrupted = tmp_path / "interrupted"
    shutil.copytree(local_out, interrupted)
    for record in sorted((interrupted / STATE_DIR).glob("*.json"))[:2]:
        record.unlink()
    for name in ("tasks.json", "coco.json", "failures.json"):
        (interrupted / name).unlink()
    resumed = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        shutil.copytree(interrupted, out)
        summary = _predict(images, out, settings, backend, engine)
        assert summary.skipped == 3 and summary.done == 2 and len(summary.failures) == 1
        resumed[engine] = out
    assert_same_outputs(resumed["ray"], resumed["local"])


def test_engine_ray_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys, images):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    code = main(
        ["predict", str(images), "--labels", "red circle", "--model", "demo"]
        + ["--out", str(tmp_path / "out"), "--engine", "ray", "-q"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert 'pip install "clipseg-label-studio[ray]"' in err and "--engine local" in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_ray_options_are_checked_before_any_work(tmp_path, capsys, images):
    _ray_or_skip()
    code = main(
        ["predict", str(images), "--labels", "red circle", "--model", "demo"]
        + ["--out", str(tmp_path / "out"), "--engine", "ray", "--num-workers", "0", "-q"]
    )
    assert code == 2 and "--num-workers must be >= 1" in capsys.readouterr().err
