"""Tiled prediction through the backend and the CLI, with the demo model: CLIPSEG_TILE_SIZE,
CLIPSEG_TILE_OVERLAP, the label config's `model_tile_size` and `clipseg-label predict
--tile-size`; bad settings refused where they enter, interactive prompts working with tiles on."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from backend import cli
from backend.formats import decode_brush_rle
from backend.model import CLIPSegBackend, ModelLoadError
from backend.settings import Settings, SettingsError
from clipseg.demo.large_scenes import make_large_scene

SCENE = dict(seed=5, width=1280, height=960, num_objects=8)


def _config(labels, tile_attr: str = "") -> str:
    items = "".join(f'<Label value="{label}"/>' for label in labels)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<BrushLabels name="tag" toName="image" {tile_attr}>{items}</BrushLabels>'
        '<KeyPointLabels name="kp" toName="image" smart="true">'
        f"{items}</KeyPointLabels></View>"
    )


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    scene = make_large_scene(**SCENE)
    Image.fromarray(scene.image).save(root / "large.png")
    border = np.full((256, 512, 3), 128, np.uint8)
    border[98:158, 226:286] = (220, 30, 30)  # a red square across x = 256, the tiles' border
    Image.fromarray(border).save(root / "border.png")
    return root, scene


@pytest.fixture(scope="module")
def backend(scene_files, tmp_path_factory):
    root, _ = scene_files
    settings = Settings(
        model="demo",
        device="cpu",
        local_files_document_root=str(root),
        model_dir=str(tmp_path_factory.mktemp("model-data")),
        min_region_area=20,
    )
    return CLIPSegBackend.load(settings)


def _task(name):
    return {"id": 1, "data": {"image": f"/data/local-files/?d={name}"}}


def _masks(pred, width, height):
    """label -> the brush masks of a prediction."""
    out: dict[str, list[np.ndarray]] = {}
    for item in pred["result"]:
        if item["type"] == "brushlabels":
            mask = decode_brush_rle(item["value"]["rle"], height, width) > 0
            out.setdefault(item["value"]["brushlabels"][0], []).append(mask)
    return out


def _found(scene, masks) -> int:
    """Objects matched one-to-one by a region of their own label at IoU > 0.5."""
    found = 0
    for label, regions in masks.items():
        truths = [o.mask for o in scene.objects if o.name == label]
        for region in regions:
            for i, truth in enumerate(truths):
                if truth is not None and (region & truth).sum() > 0.5 * (region | truth).sum():
                    found += 1
                    truths[i] = None
                    break
    return found


def test_model_tile_size_finds_small_objects_the_whole_image_misses(backend, scene_files):
    _, scene = scene_files
    labels = sorted({o.name for o in scene.objects})
    untiled = backend.predict([_task("large.png")], project=1, label_config=_config(labels))[0]
    tiled = backend.predict(
        [_task("large.png")], project=1, label_config=_config(labels, 'model_tile_size="256"')
    )[0]
    assert "result" in tiled, tiled.get("error")
    total = len(scene.objects)
    assert _found(scene, _masks(untiled, 1280, 960)) <= 0.1 * total
    assert _found(scene, _masks(tiled, 1280, 960)) >= 0.75 * total


def test_the_setting_applies_where_the_config_says_nothing_and_0_turns_it_off(backend, scene_files):
    _, scene = scene_files
    labels = sorted({o.name for o in scene.objects})
    tiled_backend = CLIPSegBackend(
        replace(backend.settings, tile_size=256),
        backend.predictor,
        backend.model_name,
        backend.weights_hash,
        backend.is_demo,
        backend.device,
        backend.dtype,
    )
    by_setting = tiled_backend.predict([_task("large.png")], label_config=_config(labels))[0]
    by_config = backend.predict(
        [_task("large.png")], label_config=_config(labels, 'model_tile_size="256"')
    )[0]
    assert _masks(by_setting, 1280, 960).keys() == _masks(by_config, 1280, 960).keys()
    off = tiled_backend.predict(
        [_task("large.png")], label_config=_config(labels, 'model_tile_size="0"')
    )[0]
    assert _found(scene, _masks(off, 1280, 960)) <= 0.1 * len(scene.objects)


def test_an_object_across_a_tile_border_is_one_region(backend):
    [pred] = backend.predict(
        [_task("border.png")],
        label_config=_config(["red square"], 'model_tile_size="256"'),
    )
    masks = _masks(pred, 512, 256)["red square"]
    assert len(masks) == 1
    truth = np.zeros((256, 512), bool)
    truth[98:158, 226:286] = True
    assert (masks[0] & truth).sum() > 0.5 * (masks[0] | truth).sum()


def test_a_click_on_a_small_object_works_with_tiles_on(backend, scene_files):
    _, scene = scene_files
    labels = sorted({o.name for o in scene.objects})
    target = scene.objects[0]
    ys, xs = np.nonzero(target.mask)
    context = {
        "result": [
            {
                "from_name": "kp",
                "to_name": "image",
                "type": "keypointlabels",
                "original_width": 1280,
                "original_height": 960,
                "value": {
                    "x": 100 * xs.mean() / 1280,
                    "y": 100 * ys.mean() / 960,
                    "keypointlabels": [target.name],
                },
            }
        ]
    }
    [pred] = backend.predict(
        [_task("large.png")],
        context=context,
        label_config=_config(labels, 'model_tile_size="256"'),
    )
    masks = _masks(pred, 1280, 960)
    assert set(masks) == {target.name}  # only the clicked label is answered
    assert any((m & target.mask).sum() > 0.5 * target.mask.sum() for m in masks[target.name])


@pytest.mark.parametrize(("value", "reason"), [("abc", "whole number"), ("4", "patch size")])
def test_a_bad_model_tile_size_fails_every_task_with_the_reason(backend, value, reason):
    [pred] = backend.predict(
        [_task("border.png")], label_config=_config(["red square"], f'model_tile_size="{value}"')
    )
    assert "result" not in pred or pred["result"] == []
    assert "model_tile_size" in pred["error"] and reason in pred["error"]


def test_bad_settings_are_refused_at_start():
    with pytest.raises(SettingsError, match="CLIPSEG_TILE_OVERLAP"):
        Settings.from_env({"CLIPSEG_TILE_OVERLAP": "0.9"})
    with pytest.raises(SettingsError, match="CLIPSEG_TILE_SIZE"):
        Settings.from_env({"CLIPSEG_TILE_SIZE": "-5"})
    assert Settings.from_env({"CLIPSEG_TILE_SIZE": "512"}).tile_size == 512
    with pytest.raises(ModelLoadError, match=r"CLIPSEG_TILE_SIZE=4 .*patch size \(8 px\)"):
        CLIPSegBackend.load(Settings(model="demo", device="cpu", tile_size=4))


def test_cli_predict_tile_size(tmp_path, scene_files, capsys):
    root, scene = scene_files
    labels = sorted({o.name for o in scene.objects})
    out = tmp_path / "out"
    args = ["predict", str(root / "large.png"), "--labels", ",".join(labels), "--model", "demo"]
    args += ["--device", "cpu", "--min-area", "20", "--store", str(tmp_path / "store")]
    code = cli.main([*args, "--out", str(out), "--tile-size", "256", "--tile-overlap", "0.25"])
    assert code == 0, capsys.readouterr().err
    [task] = json.loads((out / "tasks.json").read_text())
    masks = _masks(task["predictions"][0], 1280, 960)
    assert _found(scene, masks) >= 0.75 * len(scene.objects)

    code = cli.main([*args, "--out", str(tmp_path / "bad"), "--tile-size", "4"])
    assert code != 0 and "--tile-size 4" in capsys.readouterr().err
    code = cli.main([*args, "--out", str(tmp_path / "bad"), "--tile-overlap", "0.95"])
    assert code != 0 and "--tile-overlap" in capsys.readouterr().err
