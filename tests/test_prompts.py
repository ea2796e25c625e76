"""Templates and the visual prompt (crop with context, background 0.1 * blur, square, resize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg.prompts import PROMPT_TEMPLATES, apply_templates, prepare_visual_prompt


def _image(h: int = 200, w: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(60, 250, (h, w, 3), dtype=np.uint8)


def test_templates():
    assert len(PROMPT_TEMPLATES) == 9
    assert PROMPT_TEMPLATES[0] == "a photo of a {}."
    assert "{}." in PROMPT_TEMPLATES
    assert apply_templates("cat")[:2] == ["a photo of a cat.", "a photograph of a cat."]


def test_output_size_and_mode():
    img = _image(123, 77)
    mask = np.zeros((123, 77), bool)
    mask[20:60, 10:30] = True
    for size in (352, 224, 33):
        out = prepare_visual_prompt(img, mask=mask, size=size)
        assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (size, size)
    assert prepare_visual_prompt(Image.fromarray(img)).size == (352, 352)  # whole image


def test_region_kept_background_darkened():
    img = _image()
    mask = np.zeros((200, 200), bool)
    mask[50:150, 50:150] = True
    # region 100x100, 10 % context -> crop [40, 160) = 120 px square, so size=120 is no resize
    out = np.asarray(prepare_visual_prompt(img, mask=mask, size=120)).astype(np.float64)
    inner = out[10:110, 10:110]
    np.testing.assert_array_equal(inner, img[50:150, 50:150])  # region unchanged
    outside = np.ones((120, 120), bool)
    outside[10:110, 10:110] = False
    ratio = out[outside].mean() / img[40:160, 40:160][outside].astype(np.float64).mean()
    assert 0.08 < ratio < 0.12  # background at about 10 % intensity
    # blurred: the background varies much less than 0.1 * the noisy original would
    assert out[outside].std() < 0.1 * img[40:160, 40:160][outside].std()


def test_box_equals_rectangular_mask():
    img = _image(150, 180, seed=1)
    mask = np.zeros((150, 180), np.uint8)
    mask[30:90, 40:130] = 255
    from_mask = np.asarray(prepare_visual_prompt(img, mask=mask))
    from_box = np.asarray(prepare_visual_prompt(img, box=(40, 30, 130, 90)))
    np.testing.assert_array_equal(from_mask, from_box)
    as_01 = np.asarray(prepare_visual_prompt(img, mask=(mask > 0).astype(np.float32)))
    np.testing.assert_array_equal(from_mask, as_01)
    as_tensor = np.asarray(prepare_visual_prompt(img, mask=torch.from_numpy(mask > 0)))
    np.testing.assert_array_equal(from_mask, as_tensor)
    # a mask straight from a bfloat16 pipeline (numpy has no bfloat16)
    as_bf16 = torch.from_numpy(mask > 0).to(torch.bfloat16)
    np.testing.assert_array_equal(from_mask, np.asarray(prepare_visual_prompt(img, mask=as_bf16)))


def test_pad_to_square_is_centred_black():
    img = np.full((100, 300, 3), 200, np.uint8)
    out = np.asarray(prepare_visual_prompt(img, size=300))  # no region: whole image, 300x100
    assert (out[:100] == 0).all() and (out[200:] == 0).all()
    assert (out[100:200] == 200).all()


def test_context_clipped_at_image_border():
    img = _image(100, 100)
    out = prepare_visual_prompt(img, box=(0, 0, 100, 100), size=100)
    np.testing.assert_array_equal(np.asarray(out), img)  # whole image, nothing darkened


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mask": np.zeros((200, 200), bool)}, "empty"),
        ({"mask": np.ones((100, 200), bool)}, "does not match"),
        ({"mask": np.ones((200, 200, 3), bool)}, "shape"),
        ({"box": (10, 10, 10, 50)}, "degenerate"),
        ({"box": (50, 10, 20, 50)}, "degenerate"),
        ({"box": (300, 300, 400, 400)}, "outside"),
        ({"box": (1, 2, 3)}, "four numbers"),
        ({"box": (0, 0, float("nan"), 5)}, "non-finite"),
        ({"mask": np.ones((200, 200), bool), "box": (0, 0, 5, 5)}, "not both"),
        ({"size": 0}, "size"),
        ({"mask": np.full((200, 200), -3.0)}, "values"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prepare_visual_prompt(_image(), **kwargs)


def test_non_image_raises():
    with pytest.raises(ValueError):
        prepare_visual_prompt(b"definitely not a file", box=(0, 0, 5, 5))
