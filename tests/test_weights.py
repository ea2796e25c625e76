"""Checkpoint resolution, key mapping and strict loading, and every way a checkpoint breaks."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_fixtures import TINY_CONFIG
from safetensors.torch import load_file, save_file

from clipseg import (
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegModel,
    CLIPSegTextModel,
    CLIPSegVisionModel,
)
from clipseg.weights import (
    DEMO_CHECKPOINT,
    CheckpointError,
    convert_state_dict,
    read_state_dict,
    resolve_checkpoint,
)


@pytest.fixture
def checkpoint_copy(tiny_checkpoint, tmp_path):
    """A private copy of the tiny checkpoint that a test may break."""
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, target)
    return target


def test_towers_from_segmentation_checkpoint_are_exact(tiny_checkpoint) -> None:
    """transformers 5.24 leaves them random here; we must load exactly the clip.* weights."""
    state = load_file(tiny_checkpoint / "model.safetensors")
    for cls, prefix in (
        (CLIPSegModel, "clip."),
        (CLIPSegTextModel, "clip.text_model."),
        (CLIPSegVisionModel, "clip.vision_model."),
    ):
        model = cls.from_pretrained(tiny_checkpoint)
        ours = model.state_dict()
        expected = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        expected = {k: v for k, v in expected.items() if not k.endswith("position_ids")}
        assert set(ours) == set(expected), cls.__name__
        for key, value in expected.items():
            assert torch.equal(ours[key], value), (cls.__name__, key)


def test_save_pretrained_round_trip_all_classes(tiny_checkpoint, tmp_path) -> None:
    import transformers

    for cls in (CLIPSegForImageSegmentation, CLIPSegModel, CLIPSegTextModel, CLIPSegVisionModel):
        model = cls.from_pretrained(tiny_checkpoint)
        out = tmp_path / cls.__name__
        model.save_pretrained(out)
        assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
        again = cls.from_pretrained(out)
        for (k1, v1), (k2, v2) in zip(
            model.state_dict().items(), again.state_dict().items(), strict=True
        ):
            assert k1 == k2 and torch.equal(v1, v2)
        # transformers reads what we write, strictly (no missing or unexpected keys)
        ref_cls = getattr(transformers, cls.__name__)
        _, info = ref_cls.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (cls, info)


def test_pytorch_model_bin_and_position_ids_buffers(checkpoint_copy) -> None:
    state = load_file(checkpoint_copy / "model.safetensors")
    state["clip.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    (checkpoint_copy / "model.safetensors").unlink()
    torch.save(state, checkpoint_copy / "pytorch_model.bin")
    model = CLIPSegForImageSegmentation.from_pretrained(checkpoint_copy)
    key = "decoder.film_mul.weight"
    assert torch.equal(model.state_dict()[key], state[key])


def test_convert_state_dict_is_pure_and_maps_layouts() -> None:
    state = {
        "clip.text_model.embeddings.token_embedding.weight": torch.zeros(2),
        "clip.vision_model.embeddings.position_ids": torch.zeros(2),
        "clip.logit_scale": torch.zeros(()),
        "decoder.film_mul.weight": torch.zeros(2),
    }
    before = dict(state)
    assert set(convert_state_dict(state, "text")) == {"embeddings.token_embedding.weight"}
    assert set(convert_state_dict(state, "clip")) == {
        "text_model.embeddings.token_embedding.weight",
        "logit_scale",
    }
    assert "clip.vision_model.embeddings.position_ids" not in convert_state_dict(
        state, "segmentation"
    )
    assert state == before
    # a transformers 4.x text tower (text_model.*) and a 5.x one (bare) map alike
    v4 = {"text_model.embeddings.token_embedding.weight": torch.zeros(2)}
    v5 = {"embeddings.token_embedding.weight": torch.zeros(2)}
    assert set(convert_state_dict(v4, "text")) == set(convert_state_dict(v5, "text"))
    with pytest.raises(CheckpointError, match="not a CLIPSeg state dict"):
        convert_state_dict({"bert.weight": torch.zeros(1)}, "segmentation")


def test_missing_checkpoint_directory(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        CLIPSegForImageSegmentation.from_pretrained(tmp_path / "nowhere")


def test_directory_without_weights(checkpoint_copy) -> None:
    (checkpoint_copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        CLIPSegForImageSegmentation.from_pretrained(checkpoint_copy)


def test_directory_without_config(checkpoint_copy) -> None:
    (checkpoint_copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        CLIPSegForImageSegmentation.from_pretrained(checkpoint_copy)


def test_corrupt_safetensors(checkpoint_copy) -> None:
    path = checkpoint_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])  # truncated download
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        CLIPSegForImageSegmentation.from_pretrained(checkpoint_copy)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        read_state_dict(checkpoint_copy)


def test_config_and_weights_disagree_names_the_key(checkpoint_copy) -> None:
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["reduce_dim"] = 8
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mis-shaped keys .*decoder\.film_mul\.weight"):
        CLIPSegForImageSegmentation.from_pretrained(checkpoint_copy)


def test_missing_and_unexpected_keys_are_named(checkpoint_copy) -> None:
    path = checkpoint_copy / "model.safetensors"
    state = load_file(path)
    del state["decoder.film_add.bias"]
    state["decoder.extra.weight"] = torch.zeros(3)
    save_file(state, path)
    with pytest.raises(CheckpointError) as info:
        CLIPSegForImageSegmentation.from_pretrained(checkpoint_copy)
    assert "decoder.film_add.bias" in str(info.value)
    assert "decoder.extra.weight" in str(info.value)


def test_clip_checkpoint_cannot_load_segmentation_model(tiny_checkpoint, tmp_path) -> None:
    CLIPSegModel.from_pretrained(tiny_checkpoint).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="missing keys .*decoder"):
        CLIPSegForImageSegmentation.from_pretrained(tmp_path)


def test_hub_id_without_hub_access_says_how_to_download(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="hf download CIDAS/clipseg-rd64") as info:
        resolve_checkpoint("CIDAS/clipseg-rd64-refined")
    # a relative path that is not there yet reads as a hub id: the message says both
    assert f"there is no directory {tmp_path / 'CIDAS' / 'clipseg-rd64-refined'}" in str(info.value)


def test_demo_resolves_or_says_it_is_missing() -> None:
    if (DEMO_CHECKPOINT / "config.json").is_file():
        assert resolve_checkpoint("demo") == DEMO_CHECKPOINT
    else:
        with pytest.raises(FileNotFoundError, match="demo checkpoint"):
            resolve_checkpoint("demo")


def test_dtype_and_device_arguments(tiny_checkpoint) -> None:
    model = CLIPSegForImageSegmentation.from_pretrained(
        tiny_checkpoint, device="cpu", dtype=torch.bfloat16
    )
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert not model.training
    assert isinstance(model.config, CLIPSegConfig)


def test_dtype_conversion_keeps_integer_tensors(checkpoint_copy) -> None:
    state = read_state_dict(checkpoint_copy, dtype=torch.float16)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    reference = load_file(checkpoint_copy / "model.safetensors")
    key = "decoder.film_mul.weight"
    assert torch.equal(state[key], reference[key].to(torch.float16))
    assert state[key].untyped_storage().nbytes() == state[key].nbytes  # fresh, not a file view


# Run in a fresh interpreter: from_pretrained's peak resident set above the RSS before it.
_PEAK_SCRIPT = r"""
import sys
from pathlib import Path

import torch

import clipseg.weights
from clipseg import CLIPSegForImageSegmentation

clipseg.weights._REMAP_BYTES = 2**20  # reopen the file every MiB (64 MiB in use)


def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024


directory = Path(sys.argv[1])
with torch.device("meta"):  # warm-up: the first model on the meta device imports a lot
    CLIPSegForImageSegmentation(CLIPSegForImageSegmentation._read_config(directory))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
before = status("VmRSS")
model = CLIPSegForImageSegmentation.from_pretrained(directory)
print(status("VmHWM") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_from_pretrained_peak_is_about_one_copy_of_the_weights(tmp_path) -> None:
    """The mapped file and the parameters must not be resident together (issue 8: that made the
    full-size model's load peak at twice its weights). ~35 MB of weights in 1-2 MB tensors."""
    config = copy.deepcopy(TINY_CONFIG)
    config["vision_config"].update(hidden_size=384, intermediate_size=1536)
    torch.manual_seed(0)
    CLIPSegForImageSegmentation(CLIPSegConfig.from_dict(config)).save_pretrained(tmp_path)
    weights = (tmp_path / "model.safetensors").stat().st_size
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    if run.returncode != 0 and "clear_refs" in run.stderr:
        pytest.skip(f"cannot reset the peak RSS here: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr
    peak = int(run.stdout.split()[-1])
    # one copy plus a MiB of mapped pages and allocator slack; two copies before the fix
    assert peak < 1.4 * weights, f"peak {peak / 2**20:.1f} MiB for {weights / 2**20:.1f} MiB"
