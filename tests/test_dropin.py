"""Regression tests for issue 15: code written for `transformers` keeps working when its imports
switch to `clipseg`. transformers (5.x, installed) is the oracle: each test runs the same calls on
both and compares what comes back.

One section per item of the issue, in its order.
"""

from __future__ import annotations

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
