"""`clipseg-label` with real models: a tiny random checkpoint (save_pretrained; the real
Predictor and CLIPSegBackend.load path), and the shipped demo checkpoint on generated scenes
(COCOeval AP against the scenes' ground truth, measured in docs/cli.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import coco_segm_ap, write_scenes
from label_studio_sdk.label_interface import LabelInterface
from pycocotools.coco import COCO

from backend import cli
from clipseg.demo.scenes import COLORS, SHAPES

DEMO_CHECKPOINT = Path(__file__).resolve().parents[2] / "clipseg" / "demo" / "checkpoint"

# docs/cli.md: AP measured with these settings on DEMO_SEEDS; the floor is a little below it.
DEMO_SEEDS = list(range(10**9, 10**9 + 12))
# Measured 0.291 with the shipped demo checkpoint (0.144 two checkpoints ago).
DEMO_AP_FLOOR = 0.25


def test_tiny_checkpoint_through_the_cli(tmp_path, tiny_checkpoint, capsys):
    write_scenes(tmp_path / "images", [1, 2])
    out = tmp_path / "out"
    code = cli.main(
        ["predict", str(tmp_path / "images"), "--labels", "red circle,star", "--out", str(out)]
        + ["--model", str(tiny_checkpoint), "--device", "cpu", "--batch-size", "2", "-q"]
        + ["--threshold", "0.5", "--overlays"]
    )
    assert code == 0, capsys.readouterr().err
    tasks = json.loads((out / "tasks.json").read_text())
    interface = LabelInterface((out / "label_config.xml").read_text())
    assert len(tasks) == 2
    for task in tasks:
        (pred,) = task["predictions"]
        assert interface.validate_prediction(pred, return_errors=True) == []
        assert pred["model_version"].startswith("clipseg-")
        assert 0.0 <= task["meta"]["clipseg"]["uncertainty"] <= 1.0
    COCO(str(out / "coco.json"))
    assert len(list((out / "overlays").glob("*.png"))) == 2


def test_missing_model_is_a_clear_usage_error(tmp_path, capsys):
    write_scenes(tmp_path / "images", [1])
    code = cli.main(
        ["predict", str(tmp_path / "images"), "--labels", "star", "--out", str(tmp_path / "o")]
        + ["--model", str(tmp_path / "no-such-model"), "-q"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "CLIPSEG_MODEL=demo" in err


@pytest.mark.skipif(
    not (DEMO_CHECKPOINT / "config.json").exists(), reason="the demo checkpoint is not shipped yet"
)
def test_demo_model_coco_ap_on_generated_scenes(tmp_path):
    scenes = write_scenes(tmp_path / "images", DEMO_SEEDS, size=160)
    labels = [f"{c} {s}" for c in COLORS for s in SHAPES]
    out = tmp_path / "out"
    code = cli.main(
        ["predict", str(tmp_path / "images"), "--labels", ",".join(labels), "--out", str(out)]
        + ["--model", "demo", "--device", "cpu", "-q"]
    )
    assert code == 0
    coco = json.loads((out / "coco.json").read_text())
    ap = coco_segm_ap(coco, {str(p.resolve()): s for p, s in scenes})
    assert ap >= DEMO_AP_FLOOR, f"demo segm AP = {ap:.3f}"
