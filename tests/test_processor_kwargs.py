"""CLIPSegProcessor's keyword arguments and BatchEncoding.to, against transformers'
CLIPSegProcessor (built from the same files: the real CLIP vocabulary and CIDAS' image settings).

Keyword arguments are routed by name as transformers routes them (image settings to the image
processor, for ``images`` and ``visual_prompt``; tokenizer arguments to the tokenizer); what
neither implements raises TypeError instead of being ignored.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clip_vocab import (  # noqa: F401  (the fixtures clip_vocab_dir, checkpoint_dir)
    CIDAS_PREPROCESSOR_CONFIG,
    clip_vocab_fixture,
    processor_checkpoint_fixture,
)

from clipseg.processing import BatchEncoding, CLIPSegProcessor

transformers = pytest.importorskip("transformers", reason="transformers is the parity reference")

CIDAS_CONFIG = CIDAS_PREPROCESSOR_CONFIG
TEXTS = ["a cat", "a photo of a dog", "x"]


@pytest.fixture(scope="module")
def ours(checkpoint_dir):
    return CLIPSegProcessor.from_pretrained(checkpoint_dir)


@pytest.fixture(scope="module")
def theirs(checkpoint_dir):
    processor = transformers.CLIPSegProcessor.from_pretrained(checkpoint_dir)
    assert type(processor.image_processor).__name__.startswith("ViTImageProcessor")
    return processor


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (53, 37, 3), dtype=np.uint8) for _ in range(n)]


def _assert_same(got, expected) -> None:
    assert set(got) == set(expected)
    for key in expected:
        a, b = torch.as_tensor(got[key]), torch.as_tensor(expected[key])
        assert a.shape == b.shape and a.dtype == b.dtype, key
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"do_resize": False},
        {"size": {"height": 224, "width": 224}},
        {"do_normalize": False},
        {"do_rescale": False, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
        {"resample": 0, "rescale_factor": 1 / 127.5},
        {"padding_side": "left"},
        {"add_special_tokens": False, "pad_to_multiple_of": 8},
        {"return_attention_mask": False, "size": 64},
    ],
    ids=str,
)
def test_keyword_arguments_take_effect_as_in_transformers(ours, theirs, kwargs):
    images = _images(3)
    common = {"padding": True, "return_tensors": "pt"}
    _assert_same(
        ours(text=TEXTS, images=images, **common, **kwargs),
        theirs(text=TEXTS, images=images, **common, **kwargs),
    )
    # visual prompts go through the same image settings
    _assert_same(
        ours(images=images[:1], visual_prompt=images[1:2], return_tensors="pt", **kwargs),
        theirs(images=images[:1], visual_prompt=images[1:2], return_tensors="pt", **kwargs),
    )


def test_unknown_keyword_arguments_raise(ours):
    image = _images(1)[0]
    with pytest.raises(TypeError, match="'foo'"):
        ours(images=image, foo=1)
    with pytest.raises(TypeError, match="'foo'"):
        ours(text="a cat", foo=1)  # named whether or not the part it might belong to runs
    for name in ("return_length", "return_token_type_ids", "return_overflowing_tokens"):
        with pytest.raises(TypeError, match=name):
            ours(text="a cat", **{name: True})
    with pytest.raises(TypeError, match="positional"):
        ours("a cat", image, None, True)  # padding is keyword-only, as in transformers
    with pytest.raises(ValueError, match="padding_side"):
        ours(text="a cat", padding_side="middle")


def test_from_pretrained_overrides_go_to_their_part(checkpoint_dir):
    kwargs = {"size": {"height": 128, "width": 128}, "padding_side": "left"}
    ours = CLIPSegProcessor.from_pretrained(checkpoint_dir, **kwargs)
    reference = transformers.CLIPSegProcessor.from_pretrained(checkpoint_dir, **kwargs)
    assert ours.image_processor.size == reference.image_processor.size == kwargs["size"]
    assert ours.tokenizer.padding_side == reference.tokenizer.padding_side == "left"
    _assert_same(
        ours(text=TEXTS, images=_images(3), padding=True),
        reference(text=TEXTS, images=_images(3), padding=True, return_tensors="pt"),
    )


def test_return_tensors_defaults_to_pt(ours, theirs):
    """The one deliberate difference in defaults (see the class docstring)."""
    assert isinstance(ours(text="a cat")["input_ids"], torch.Tensor)
    assert isinstance(theirs(text="a cat")["input_ids"], list)
    assert ours(text="a cat", return_tensors=None)["input_ids"] == theirs(text="a cat")["input_ids"]


def test_to_dtype_casts_only_floating_point_tensors_as_transformers(ours):
    """transformers' BatchFeature.to: a dtype casts the pixel values, never the token ids; a
    device moves everything; in place, returning the same object."""
    encoded = ours(text=TEXTS[:2], images=_images(2), padding=True, return_tensors="pt")
    reference = transformers.BatchFeature({k: v.clone() for k, v in encoded.items()})
    for args, kwargs in [
        ((torch.float16,), {}),
        (("cpu", torch.bfloat16), {}),
        ((), {"dtype": torch.float64}),
        (("cpu",), {}),
        ((), {"device": "cpu", "dtype": torch.float32, "non_blocking": False}),
    ]:
        got = encoded.to(*args, **kwargs)
        expected = reference.to(*args, **kwargs)
        assert got is encoded
        assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in expected.items()}
        assert got["input_ids"].dtype == torch.int64
    torch.testing.assert_close(got["pixel_values"], expected["pixel_values"])
    assert torch.equal(got["input_ids"], expected["input_ids"])
    with pytest.raises(ValueError, match="device"):
        BatchEncoding(x=torch.zeros(1)).to([1, 2])
