"""Regression tests for issue 15: code written for `transformers` keeps working when its imports
switch to `clipseg`. transformers (5.x, installed) is the oracle: each test runs the same calls on
both and compares what comes back.

One section per item of the issue, in its order.
"""

from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import TINY_CONFIG, TINY_IMAGE_SIZE

import clipseg

transformers = pytest.importorskip("transformers", reason="transformers is the oracle")

EOF = TINY_CONFIG["text_config"]["eos_token_id"]
IDS = torch.tensor([[EOF - 1, 5, 7, EOF], [EOF - 1, 9, EOF, EOF]])
TRAINED_SIDE = TINY_CONFIG["vision_config"]["image_size"]  # 64 px: the trained 4x4 grid


def _pixels(batch: int = 2, side: int = TINY_IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


# -- 1. inference_mode -----------------------------------------------------------------------


@pytest.mark.parametrize("side", [TINY_IMAGE_SIZE, TRAINED_SIDE, 80])
def test_a_model_loaded_inside_inference_mode_runs_there_and_later(tiny_checkpoint, side) -> None:
    """Loaded inside inference_mode, the model runs at any size there, then under no_grad and
    with gradients, with transformers' logits (its weights are ordinary tensors, as
    transformers')."""
    pixels = _pixels(side=side)
    with torch.inference_mode():
        ours = clipseg.CLIPSegForImageSegmentation.from_pretrained(tiny_checkpoint)
        ref = transformers.CLIPSegForImageSegmentation.from_pretrained(tiny_checkpoint)
        inside = ours(input_ids=IDS, pixel_values=pixels).logits
        expected = ref(input_ids=IDS, pixel_values=pixels).logits
    assert inside.shape == expected.shape == (2, side, side)
    assert torch.equal(inside, expected)
    assert [p.is_inference() for p in ours.parameters()] == [
        p.is_inference() for p in ref.parameters()
    ]
    with torch.no_grad():
        assert torch.equal(ours(input_ids=IDS, pixel_values=pixels).logits, expected)
    labels = torch.rand(2, side, side, generator=torch.Generator().manual_seed(1))
    ours(input_ids=IDS, pixel_values=pixels, labels=labels).loss.backward()
    assert ours.decoder.film_mul.weight.grad is not None


def test_a_model_built_or_moved_inside_inference_mode_runs_and_sees_later_changes(
    tiny_checkpoint,
) -> None:
    """A model whose weights are inference tensors (moved with .to() inside inference_mode)
    still runs outside it, and a position table changed in place is not served from a stale
    cache."""
    ours = clipseg.CLIPSegForImageSegmentation.from_pretrained(tiny_checkpoint)
    ref = transformers.CLIPSegForImageSegmentation.from_pretrained(tiny_checkpoint)
    pixels = _pixels()
    with torch.inference_mode():
        ours.to(torch.float64).to(torch.float32)  # .to() inside inference_mode: inference tensors
        assert ours.clip.vision_model.embeddings.position_embedding.weight.is_inference()
        first = ours(input_ids=IDS, pixel_values=pixels).logits
    with torch.no_grad():
        assert torch.equal(first, ref(input_ids=IDS, pixel_values=pixels).logits)
        assert torch.equal(ours(input_ids=IDS, pixel_values=pixels).logits, first)
    with torch.inference_mode():
        for model in (ours, ref):
            model.clip.vision_model.embeddings.position_embedding.weight.mul_(1.5)
        changed = ours(input_ids=IDS, pixel_values=pixels).logits
        assert torch.equal(changed, ref(input_ids=IDS, pixel_values=pixels).logits)
        assert not torch.equal(changed, first)


# -- 2. sub-config overrides -------------------------------------------------------------------


def _without_version(data: dict) -> dict:
    """transformers' dict without its transformers_version (clipseg writes none)."""
    data = dict(data)
    data.pop("transformers_version", None)
    for key in ("text_config", "vision_config"):
        if isinstance(data.get(key), dict):
            data[key] = _without_version(data[key])
    return data


@pytest.mark.parametrize(
    "overrides",
    [
        {"text_config": {"vocab_size": 20}},
        {"vision_config": {"layer_norm_eps": 1e-3}, "reduce_dim": 8},
        {"text_config": {"foo": 1}, "vision_config": {"attention_dropout": 0.1}},
    ],
)
def test_sub_config_overrides_merge_into_the_checkpoints_config(tiny_checkpoint, overrides):
    """A dict for a sub-config changes only the keys it names (transformers merges it)."""
    ours = clipseg.CLIPSegConfig.from_pretrained(tiny_checkpoint, **overrides)
    ref = transformers.CLIPSegConfig.from_pretrained(tiny_checkpoint, **overrides)
    assert ours.text_config.hidden_size == TINY_CONFIG["text_config"]["hidden_size"]
    assert ours.to_diff_dict() == _without_version(ref.to_diff_dict())


def test_model_from_pretrained_merges_sub_config_overrides(tiny_checkpoint) -> None:
    overrides = {"vision_config": {"layer_norm_eps": 1e-3}}
    ours = clipseg.CLIPSegForImageSegmentation.from_pretrained(tiny_checkpoint, **overrides)
    ref = transformers.CLIPSegForImageSegmentation.from_pretrained(tiny_checkpoint, **overrides)
    assert ours.config.vision_config.layer_norm_eps == 1e-3
    assert ours.config.vision_config.hidden_size == ref.config.vision_config.hidden_size
    with torch.no_grad():
        logits = ours(input_ids=IDS, pixel_values=_pixels()).logits
        assert torch.equal(logits, ref(input_ids=IDS, pixel_values=_pixels()).logits)


# -- 7. configs ----------------------------------------------------------------------------------

CONFIG_CASES = [
    ("CLIPSegConfig", {}),
    ("CLIPSegConfig", {"text_config": {"hidden_size": 64, "num_attention_heads": 4}}),
    ("CLIPSegConfig", {"return_dict": False, "projection_dim": 32, "num_labels": 3}),
    ("CLIPSegTextConfig", {"output_hidden_states": True, "id2label": {0: "a"}}),
    ("CLIPSegVisionConfig", {"dtype": "float16", "problem_type": "regression"}),
    ("CLIPSegVisionConfig", {"torch_dtype": "bfloat16", "architectures": ["X"]}),
]


@pytest.mark.parametrize(("name", "kwargs"), CONFIG_CASES)
def test_configs_carry_transformers_generic_attributes(name, kwargs) -> None:
    ours, ref = getattr(clipseg, name)(**kwargs), getattr(transformers, name)(**kwargs)
    assert ours.to_dict() == _without_version(ref.to_dict())
    assert ours.to_diff_dict() == _without_version(ref.to_diff_dict())
    for attr in ("dtype", "num_labels", "id2label", "label2id", "problem_type", "return_dict"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert type(ours.dtype) is type(ref.dtype)  # a torch.dtype, not its name
    assert ours.sub_configs.keys() == ref.sub_configs.keys()
    assert type(ours.get_text_config()).__name__ == type(ref.get_text_config()).__name__
    for use_diff in (True, False):
        again = type(ours).from_dict(json.loads(ours.to_json_string(use_diff=use_diff)))
        assert again.to_dict() == ours.to_dict()


def test_num_labels_renames_labels_as_transformers() -> None:
    ours, ref = clipseg.CLIPSegConfig(), transformers.CLIPSegConfig()
    for config in (ours, ref):
        config.num_labels = 4
    assert (ours.id2label, ours.label2id) == (ref.id2label, ref.label2id)
    assert ours.updated(num_labels=5).num_labels == 5
    assert clipseg.CLIPSegConfig.from_dict({}, num_labels=3).id2label == (
        transformers.CLIPSegConfig.from_dict({}, num_labels=3).id2label
    )
