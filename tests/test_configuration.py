"""CLIPSegConfig and its towers: defaults, config.json in both transformers layouts, round trips.

transformers' config classes are the oracle for defaults and for what they write.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from clipseg import CLIPSegConfig, CLIPSegTextConfig, CLIPSegVisionConfig

# The config.json of CIDAS/clipseg-rd64-refined as transformers 4.25 wrote it: full sub-config
# dumps with generic fields, and the legacy *_config_dict keys next to them.
GENERIC = {
    "add_cross_attention": False,
    "architectures": None,
    "bad_words_ids": None,
    "chunk_size_feed_forward": 0,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False,
    "output_attentions": False,
    "return_dict": True,
    "torch_dtype": None,
    "transformers_version": "4.25.0.dev0",
}
TEXT_425 = {
    **GENERIC,
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 512,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 2048,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clipseg_text_model",
    "num_attention_heads": 8,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "vocab_size": 49408,
}
VISION_425 = {
    **GENERIC,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "image_size": 224,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "model_type": "clipseg_vision_model",
    "num_attention_heads": 12,
    "num_channels": 3,
    "num_hidden_layers": 12,
    "patch_size": 16,
}
CIDAS_425 = {
    "_commit_hash": None,
    "architectures": ["CLIPSegForImageSegmentation"],
    "conditional_layer": 0,
    "decoder_attention_dropout": 0.0,
    "decoder_hidden_act": "quick_gelu",
    "decoder_intermediate_size": 2048,
    "decoder_num_attention_heads": 4,
    "extract_layers": [3, 6, 9],
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "clipseg",
    "projection_dim": 512,
    "reduce_dim": 64,
    "text_config": TEXT_425,
    "text_config_dict": {"hidden_size": 1000},  # legacy key: text_config must win
    "torch_dtype": "float32",
    "transformers_version": None,
    "use_complex_transposed_convolution": True,
    "vision_config": VISION_425,
    "vision_config_dict": {"patch_size": 16},
}


def test_defaults_match_reference() -> None:
    ours, ref = CLIPSegConfig(), transformers.CLIPSegConfig()
    for name in (
        "projection_dim",
        "logit_scale_init_value",
        "reduce_dim",
        "decoder_num_attention_heads",
        "decoder_attention_dropout",
        "decoder_hidden_act",
        "decoder_intermediate_size",
        "conditional_layer",
        "use_complex_transposed_convolution",
    ):
        assert getattr(ours, name) == getattr(ref, name), name
    assert list(ours.extract_layers) == list(ref.extract_layers) == [3, 6, 9]
    for ours_sub, ref_sub in (
        (ours.text_config, ref.text_config),
        (ours.vision_config, ref.vision_config),
    ):
        for name, value in ours_sub.to_dict().items():
            if name != "model_type":
                assert value == getattr(ref_sub, name), name
    assert ours.vision_config.patch_size == 32 and ours.text_config.eos_token_id == 49407


def test_reads_transformers_425_file(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CIDAS_425))
    config = CLIPSegConfig.from_pretrained(tmp_path)
    assert config.vision_config.patch_size == 16
    assert config.text_config.hidden_size == 512  # text_config preferred over text_config_dict
    assert config.text_config.eos_token_id == 2  # legacy value kept: it selects argmax pooling
    assert config.use_complex_transposed_convolution is True
    assert config.reduce_dim == 64


def test_legacy_dict_used_when_config_absent() -> None:
    data = {k: v for k, v in CIDAS_425.items() if k not in ("text_config", "vision_config")}
    data["vision_config_dict"] = {"patch_size": 16, "hidden_size": 64, "num_attention_heads": 4}
    config = CLIPSegConfig.from_dict(data)
    assert config.vision_config.hidden_size == 64
    assert config.text_config.hidden_size == 1000


def test_reads_current_transformers_file(tmp_path) -> None:
    ref = transformers.CLIPSegConfig(
        text_config={"hidden_size": 64, "num_attention_heads": 4},
        vision_config={"patch_size": 16},
        reduce_dim=16,
        extract_layers=[2, 5, 8],
    )
    ref.save_pretrained(tmp_path)
    config = CLIPSegConfig.from_pretrained(tmp_path)
    assert config.text_config.hidden_size == 64
    assert config.vision_config.patch_size == 16
    assert config.reduce_dim == 16 and config.extract_layers == [2, 5, 8]


def test_round_trip_and_transformers_reads_ours(tmp_path) -> None:
    config = CLIPSegConfig.from_text_vision_configs(
        CLIPSegTextConfig(hidden_size=64, num_attention_heads=4, eos_token_id=2),
        CLIPSegVisionConfig(patch_size=16, num_hidden_layers=10),
        reduce_dim=16,
        use_complex_transposed_convolution=True,
    )
    config.save_pretrained(tmp_path)
    assert CLIPSegConfig.from_pretrained(tmp_path) == config
    ref = transformers.CLIPSegConfig.from_pretrained(tmp_path)
    assert ref.text_config.hidden_size == 64 and ref.text_config.eos_token_id == 2
    assert ref.vision_config.num_hidden_layers == 10 and ref.reduce_dim == 16
    assert ref.use_complex_transposed_convolution is True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"extract_layers": [3, 12]}, "extract_layers"),
        ({"conditional_layer": 3}, "conditional_layer"),
        ({"reduce_dim": 30}, "reduce_dim"),
        ({"vision_config": {"hidden_size": 100}}, "multiple of num_attention_heads"),
    ],
)
def test_invalid_configs_are_named(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        CLIPSegConfig(**kwargs)


def test_not_a_clipseg_config(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not 'clipseg'"):
        CLIPSegConfig.from_pretrained(tmp_path)


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        CLIPSegConfig.from_pretrained(tmp_path)


# -- the transformers config API: extra attributes, overrides, sub-configs, JSON ----------------

SMALL = {"text_config": {"hidden_size": 64, "num_attention_heads": 4}, "reduce_dim": 16}


def test_extra_attributes_are_kept_like_transformers(tmp_path) -> None:
    ours, ref = CLIPSegConfig(foo=1, **SMALL), transformers.CLIPSegConfig(foo=1, **SMALL)
    assert ours.foo == ref.foo == 1
    assert ours.to_dict()["foo"] == ref.to_dict()["foo"] == 1
    ours.save_pretrained(tmp_path)
    assert transformers.CLIPSegConfig.from_pretrained(tmp_path).foo == 1
    assert CLIPSegConfig.from_pretrained(tmp_path).foo == 1
    # torch_dtype is transformers' older name of dtype
    old = CLIPSegConfig.from_dict({**SMALL, "torch_dtype": "float16"})
    # transformers 5 turns a dtype's name into the torch.dtype (and writes its name back)
    assert old.dtype == transformers.CLIPSegConfig(torch_dtype="float16").dtype == torch.float16
    assert "torch_dtype" not in old.to_dict() and old.to_dict()["dtype"] == "float16"


def test_from_pretrained_and_from_dict_overrides(tmp_path) -> None:
    transformers.CLIPSegConfig(**SMALL).save_pretrained(tmp_path)
    ours = CLIPSegConfig.from_pretrained(tmp_path, reduce_dim=8, output_hidden_states=True)
    ref = transformers.CLIPSegConfig.from_pretrained(
        tmp_path, reduce_dim=8, output_hidden_states=True
    )
    assert (ours.reduce_dim, ours.output_hidden_states) == (ref.reduce_dim, True)
    assert ours.text_config.hidden_size == ref.text_config.hidden_size == 64
    config, unused = CLIPSegConfig.from_pretrained(tmp_path, return_unused_kwargs=True, foo=1)
    _, ref_unused = transformers.CLIPSegConfig.from_pretrained(
        tmp_path, return_unused_kwargs=True, foo=1
    )
    assert unused == ref_unused == {"foo": 1} and not hasattr(config, "foo")
    # transformers drops an unknown override silently; here it is named (a typo would be lost)
    with pytest.raises(TypeError, match="reduce_dimm"):
        CLIPSegConfig.from_pretrained(tmp_path, reduce_dimm=8)
    with pytest.raises(ValueError, match="reduce_dim"):  # overrides are validated
        CLIPSegConfig.from_pretrained(tmp_path, reduce_dim=30)
    assert CLIPSegConfig.from_dict(SMALL, reduce_dim=32).reduce_dim == (
        transformers.CLIPSegConfig.from_dict(SMALL, reduce_dim=32).reduce_dim
    )


def test_tower_configs_read_a_full_clipseg_config(tmp_path) -> None:
    transformers.CLIPSegConfig(
        text_config={"hidden_size": 64, "num_attention_heads": 4},
        vision_config={"hidden_size": 96, "num_attention_heads": 4, "patch_size": 16},
    ).save_pretrained(tmp_path)
    for ours_cls, ref_cls in (
        (CLIPSegTextConfig, transformers.CLIPSegTextConfig),
        (CLIPSegVisionConfig, transformers.CLIPSegVisionConfig),
    ):
        ours, ref = ours_cls.from_pretrained(tmp_path), ref_cls.from_pretrained(tmp_path)
        for name, value in ours.to_dict().items():
            if name != "model_type":
                assert value == getattr(ref, name), (ours_cls.__name__, name)
        assert ours_cls.from_pretrained(tmp_path, layer_norm_eps=1e-3).layer_norm_eps == 1e-3
    assert CLIPSegVisionConfig.from_pretrained(tmp_path).patch_size == 16
    # a tower's own config.json, as transformers writes it for a tower model
    transformers.CLIPSegTextConfig(hidden_size=128, num_attention_heads=4).save_pretrained(
        tmp_path / "text"
    )
    assert CLIPSegTextConfig.from_pretrained(tmp_path / "text").hidden_size == 128


def test_json_string_and_file_read_by_transformers(tmp_path) -> None:
    config = CLIPSegConfig(output_attentions=True, **SMALL)
    ref = transformers.CLIPSegConfig(output_attentions=True, **SMALL)
    for use_diff in (True, False):  # transformers writes the diff by default; both read back
        ours_json = json.loads(config.to_json_string(use_diff=use_diff))
        ref_json = json.loads(ref.to_json_string(use_diff=use_diff))
        ref_json.pop("transformers_version")
        assert ours_json == ref_json, use_diff
        assert CLIPSegConfig.from_dict(ours_json) == config
    config.to_json_file(tmp_path / "c.json")
    ref = transformers.CLIPSegConfig.from_json_file(tmp_path / "c.json")
    assert ref.text_config.hidden_size == 64 and ref.reduce_dim == 16
    assert ref.output_attentions is True
    assert CLIPSegConfig.from_json_file(tmp_path / "c.json") == config


def test_generic_switches_match_transformers() -> None:
    ours, ref = CLIPSegConfig(), transformers.CLIPSegConfig()
    for name in ("output_hidden_states", "output_attentions", "return_dict", "use_return_dict"):
        assert getattr(ours, name) == getattr(ref, name), name
    flipped = CLIPSegConfig(return_dict=False, output_hidden_states=True)
    assert flipped.use_return_dict is False and flipped.output_hidden_states is True
    assert flipped.to_dict()["return_dict"] is False
    assert CLIPSegTextConfig(output_attentions=True).output_attentions is True
