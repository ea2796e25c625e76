"""Reference-checkpoint builders shared by the model tests (imported by tests/conftest.py and
test modules: a plain module, because several folders have a conftest.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from clipseg.demo.vocabulary import write_vocabulary
from clipseg.image_processing import CLIPSegImageProcessor

TINY_VOCAB = 619  # the demo vocabulary's size (write_vocabulary returns it; checked below)

# A small model with every code path of the real one: patch 16, a 4x4 trained position grid (so
# 96 px inputs interpolate to 6x6), the refined upsampler, three extracted layers out of five.
TINY_CONFIG: dict[str, Any] = {
    "text_config": {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": TINY_VOCAB - 2,
        "eos_token_id": TINY_VOCAB - 1,
        "pad_token_id": 1,
    },
    "vision_config": {
        "hidden_size": 48,
        "intermediate_size": 64,
        "num_hidden_layers": 5,
        "num_attention_heads": 4,
        "image_size": 64,
        "patch_size": 16,
    },
    "projection_dim": 24,
    "extract_layers": [1, 2, 3],
    "reduce_dim": 16,
    "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 32,
    "use_complex_transposed_convolution": True,
}
TINY_IMAGE_SIZE = 96

# CIDAS/clipseg-rd64-refined and its siblings; everything not listed is the default.
REFERENCE_SHAPES: dict[str, dict[str, Any]] = {
    "rd64-refined": {
        "vision_config": {"patch_size": 16},
        "reduce_dim": 64,
        "use_complex_transposed_convolution": True,
    },
    "rd64": {"vision_config": {"patch_size": 16}, "reduce_dim": 64},
    "rd16": {"vision_config": {"patch_size": 16}, "reduce_dim": 16},
}


def build_reference(config: dict[str, Any], directory: Path, seed: int = 0) -> Any:
    """transformers' CLIPSegForImageSegmentation with random weights, saved to ``directory``."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.CLIPSegForImageSegmentation(
        transformers.CLIPSegConfig(**copy.deepcopy(config))
    ).eval()
    _scale_logits(model, target_std=4.0)
    model.save_pretrained(directory)
    return model


def _scale_logits(model: Any, target_std: float) -> None:
    """Scale the upsampler's (linear) last layer so the logits spread about ``target_std``.

    Random weights give logits in the thousands: every probability would be 0 or 1 and an absolute
    tolerance on logits meaningless. Measured on a cheap 4 x 4-patch input.
    """
    last = [
        m
        for m in model.decoder.transposed_convolution.modules()
        if isinstance(m, torch.nn.ConvTranspose2d)
    ][-1]
    config = model.config
    side = 4 * config.vision_config.patch_size
    pixels = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    eos = config.text_config.eos_token_id
    input_ids = torch.tensor([[eos - 1, 5, 7, eos], [eos - 1, 9, eos, eos]])
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixels).logits
        factor = target_std / float(logits.std())
        last.weight.mul_(factor)
        last.bias.mul_(factor)


def write_processor_files(directory: Path, image_size: int = 352) -> None:
    """Demo tokenizer files and a CIDAS-style preprocessor_config.json (``image_size`` px)."""
    assert write_vocabulary(directory) == TINY_VOCAB
    CLIPSegImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(
        directory
    )
