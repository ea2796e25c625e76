"""The transformers API around the models: output objects as dicts, from_pretrained's keyword
arguments (dtype, torch_dtype, device_map, config overrides), save_pretrained's (sharding,
safe_serialization) and the config's output switches as forward defaults. transformers is the
oracle wherever it defines the behaviour; deliberate differences are asserted as such."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import sys
import types

import pytest
import torch
from model_fixtures import TINY_CONFIG

from clipseg import CLIPSegForImageSegmentation, CLIPSegTextModel

transformers = pytest.importorskip("transformers", reason="transformers is the parity reference")

EOS = TINY_CONFIG["text_config"]["eos_token_id"]
IDS = torch.tensor([[EOS - 1, 5, 7, EOS], [EOS - 1, 9, EOS, EOS]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def _pixels(batch: int = 2, side: int = 96) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pair(tiny_reference):
    ref, directory = tiny_reference
    return ref, CLIPSegForImageSegmentation.from_pretrained(directory), directory


def _structure(value):
    if isinstance(value, tuple):
        return tuple(_structure(v) for v in value)
    return tuple(value.shape)


def _pattern(value):
    """Nested tuples with each tensor's shape and None where a value is None."""
    if isinstance(value, tuple):
        return tuple(_pattern(v) for v in value)
    return None if value is None else tuple(value.shape)


# -- outputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_labels", [False, True])
def test_outputs_behave_like_transformers_model_output(pair, with_labels) -> None:
    ref, ours, _ = pair
    inputs = {"input_ids": IDS, "attention_mask": MASK, "pixel_values": _pixels()}
    if with_labels:
        inputs["labels"] = torch.rand(2, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # transformers returns the hidden states whatever it is asked
        a = ref(**inputs, output_hidden_states=True)
        b = ours(**inputs, output_hidden_states=True)
    assert isinstance(b, dict) and isinstance(a, dict)
    assert list(b) == list(a) == list(b.keys()) == [k for k, _ in b.items()]
    assert list(b.vision_model_output) == list(a.vision_model_output)
    assert list(b.decoder_output) == list(a.decoder_output)
    assert ("logits" in b) and ("loss" in b) == ("loss" in a) == with_labels
    assert len(b) == len(a) == len(list(b.values()))
    assert (b.get("loss") is None) == (a.get("loss") is None) == (not with_labels)
    assert b.get("nothing", 3) == a.get("nothing", 3) == 3
    assert sorted((lambda **kw: kw)(**b)) == sorted(dict(a))
    torch.testing.assert_close(b[0], a[0])
    torch.testing.assert_close(b["logits"], a["logits"])
    assert _structure(b.to_tuple()) == _structure(a.to_tuple())
    assert _structure(b[1:3]) == _structure(a[1:3])
    if not with_labels:
        for out in (a, b):
            with pytest.raises(KeyError):
                out["loss"]
            out.loss = torch.tensor(1.0)  # set later: a new key, at the end
        assert list(b) == list(a) and list(b)[-1] == "loss"
    for clone, ref_clone in (
        (copy.deepcopy(b), copy.deepcopy(a)),
        (pickle.loads(pickle.dumps(b)), pickle.loads(pickle.dumps(a))),
    ):
        assert type(clone) is type(b) and list(clone) == list(ref_clone)
        torch.testing.assert_close(clone.logits, b.logits)


def test_output_fields_set_to_none_leave_the_dict(pair) -> None:
    """The one difference: transformers keeps the old value under the key."""
    _, ours, _ = pair
    with torch.no_grad():
        out = ours(input_ids=IDS, pixel_values=_pixels())
    out.logits = None
    assert "logits" not in out and out.logits is None
    with pytest.raises(TypeError, match="cannot be removed"):
        out.pop("pooled_output")


def test_return_dict_false_matches_transformers(pair) -> None:
    ref, ours, _ = pair
    with torch.no_grad():
        inputs = {"input_ids": IDS, "pixel_values": _pixels(), "output_hidden_states": True}
        a = ref(**inputs, return_dict=False)
        b = ours(**inputs, return_dict=False)
    assert isinstance(b, tuple) and _structure(b) == _structure(a)


# -- from_pretrained ----------------------------------------------------------------------------


def test_dtype_auto_is_the_default_as_in_transformers(pair, tmp_path) -> None:
    _, _, directory = pair
    half = transformers.CLIPSegForImageSegmentation.from_pretrained(directory, dtype=torch.float16)
    half.save_pretrained(tmp_path / "fp16")
    for path in (directory, tmp_path / "fp16"):
        expected = transformers.CLIPSegForImageSegmentation.from_pretrained(path).dtype
        for kwargs in ({}, {"dtype": "auto"}, {"dtype": None}, {"torch_dtype": "auto"}):
            model = CLIPSegForImageSegmentation.from_pretrained(path, **kwargs)
            assert model.dtype == expected, (path, kwargs)
        assert model.config.dtype == expected
    # config.json without a dtype: the weights' own dtype, as transformers reads it
    bare = tmp_path / "fp16-no-dtype"
    shutil.copytree(tmp_path / "fp16", bare)
    config = json.loads((bare / "config.json").read_text())
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    (bare / "config.json").write_text(json.dumps(config))
    assert transformers.CLIPSegForImageSegmentation.from_pretrained(bare).dtype == torch.float16
    assert CLIPSegForImageSegmentation.from_pretrained(bare).dtype == torch.float16
    # our save records the dtype, which transformers reads
    CLIPSegForImageSegmentation.from_pretrained(bare).save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours/config.json").read_text())["dtype"] == "float16"
    reread = transformers.CLIPSegForImageSegmentation.from_pretrained(tmp_path / "ours")
    assert reread.dtype == torch.float16


def test_a_config_passed_in_is_not_changed_by_loading(pair) -> None:
    _, _, directory = pair
    config = CLIPSegForImageSegmentation.from_pretrained(directory).config
    before = config.to_dict()
    model = CLIPSegForImageSegmentation.from_pretrained(
        directory, config=config, dtype=torch.bfloat16
    )
    assert model.dtype == torch.bfloat16 and config.to_dict() == before
    # so the next "auto" load with the same config reads the checkpoint's dtype again
    again = CLIPSegForImageSegmentation.from_pretrained(directory, config=config)
    assert again.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"torch_dtype": torch.bfloat16},
        {"dtype": "float16"},
        {"dtype": torch.float64},
        {"torch_dtype": "bfloat16", "dtype": torch.bfloat16},
    ],
    ids=str,
)
def test_dtype_and_torch_dtype_as_in_transformers(pair, kwargs) -> None:
    _, _, directory = pair
    expected = transformers.CLIPSegForImageSegmentation.from_pretrained(directory, **kwargs).dtype
    assert CLIPSegForImageSegmentation.from_pretrained(directory, **kwargs).dtype == expected


def test_unsupported_from_pretrained_arguments_are_named(pair) -> None:
    _, _, directory = pair
    load = CLIPSegForImageSegmentation.from_pretrained
    assert load(directory, device_map="cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match="device_map='auto'"):
        load(directory, device_map="auto")
    with pytest.raises(ValueError, match="disagree"):
        load(directory, device="cpu", device_map="meta")
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'.*'sdpa'"):
        load(directory, attn_implementation="flash_attention_2")
    with pytest.raises(TypeError, match="cache_dir"):
        load(directory, cache_dir="/tmp")
    with pytest.raises(ValueError, match="disagree"):
        load(directory, dtype=torch.float16, torch_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="floating-point"):
        load(directory, dtype="int8")
    with pytest.raises(TypeError, match="together with config="):
        load(directory, config=load(directory).config, output_hidden_states=True)


def test_local_files_only_reaches_the_hub_client(monkeypatch, pair) -> None:
    _, _, directory = pair
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append(kwargs["local_files_only"])
        return str(directory)

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download)
    )
    CLIPSegForImageSegmentation.from_pretrained("someone/clipseg-copy", local_files_only=True)
    CLIPSegForImageSegmentation.from_pretrained("someone/clipseg-copy")
    assert calls == [True, False]
    assert CLIPSegForImageSegmentation.from_pretrained(directory, local_files_only=True)


# -- config switches as forward defaults --------------------------------------------------------


def test_config_switches_are_forward_defaults_like_transformers(pair, tmp_path) -> None:
    reference, _, directory = pair
    text_dir = tmp_path / "text"
    reference.clip.text_model.save_pretrained(text_dir)  # a transformers text-tower checkpoint
    kwargs = {"output_hidden_states": True, "output_attentions": True}
    ref = transformers.CLIPSegTextModel.from_pretrained(text_dir, **kwargs).eval()
    ours = CLIPSegTextModel.from_pretrained(text_dir, **kwargs)
    assert ours.config.output_hidden_states is ref.config.output_hidden_states is True
    with torch.no_grad():
        a, b = ref(input_ids=IDS), ours(input_ids=IDS)
        assert list(b) == list(a)  # hidden states without asking, as transformers
        for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
            torch.testing.assert_close(y, x, rtol=0, atol=1e-5)
        assert len(b.attentions) == TINY_CONFIG["text_config"]["num_hidden_layers"]
        assert ours(input_ids=IDS, output_hidden_states=False).hidden_states is None
    ref_tuple = transformers.CLIPSegTextModel.from_pretrained(text_dir, return_dict=False).eval()
    ours_tuple = CLIPSegTextModel.from_pretrained(text_dir, return_dict=False)
    with torch.no_grad():
        a, b = ref_tuple(input_ids=IDS), ours_tuple(input_ids=IDS)
    assert isinstance(a, tuple) and isinstance(b, tuple) and _structure(a) == _structure(b)
    torch.testing.assert_close(b[1], a[1], rtol=0, atol=1e-5)

    # transformers 5.24's segmentation model reads output_hidden_states from the argument only
    seg = CLIPSegForImageSegmentation.from_pretrained(directory, output_hidden_states=True)
    ref_seg = transformers.CLIPSegForImageSegmentation.from_pretrained(
        directory, output_hidden_states=True
    )
    for switch in ({}, {"output_hidden_states": False}, {"output_hidden_states": True}):
        with torch.no_grad():
            a = ref_seg(input_ids=IDS, pixel_values=_pixels(), **switch)
            b = seg(input_ids=IDS, pixel_values=_pixels(), **switch)
        assert _pattern(b.to_tuple()) == _pattern(a.to_tuple()), switch


# -- save_pretrained ------------------------------------------------------------------------------


def test_save_pretrained_shards_and_serialization(pair, tmp_path) -> None:
    ref, ours, _ = pair
    pixels, cond = _pixels(1), torch.randn(1, ours.config.projection_dim)
    with torch.no_grad():
        expected = ref(pixel_values=pixels, conditional_embeddings=cond).logits
    ours.save_pretrained(tmp_path, max_shard_size="100KB", safe_serialization=True)
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    for model in (
        transformers.CLIPSegForImageSegmentation.from_pretrained(tmp_path).eval(),
        CLIPSegForImageSegmentation.from_pretrained(tmp_path),
    ):
        with torch.no_grad():
            got = model(pixel_values=pixels, conditional_embeddings=cond).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    ours.save_pretrained(tmp_path)  # one file again; the shards and their index are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="safe_serialization=False"):
        ours.save_pretrained(tmp_path / "bin", safe_serialization=False)
    with pytest.raises(ValueError, match="max_shard_size"):
        ours.save_pretrained(tmp_path / "bad", max_shard_size="lots")
