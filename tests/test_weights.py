"""Checkpoint resolution, key mapping and strict loading, and every way a checkpoint breaks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
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
    with pytest.raises(FileNotFoundError, match="huggingface-cli download CIDAS/clipseg-rd64"):
        resolve_checkpoint("CIDAS/clipseg-rd64-refined")


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
