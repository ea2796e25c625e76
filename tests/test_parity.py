"""Parity with `transformers` (the oracle): same checkpoint files, same inputs, same numbers.

Small-config tests (fast) cover every output and option; the full-size tests load checkpoints that
transformers wrote at the exact CIDAS shapes (random weights) and compare fp32 CPU outputs within
1e-4 (in practice they are bitwise equal: both use scaled-dot-product attention).
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from model_fixtures import TINY_CONFIG, build_reference

from clipseg import (
    CLIPSegForImageSegmentation,
    CLIPSegModel,
    CLIPSegTextModel,
    CLIPSegVisionModel,
)

ATOL = 1e-4
TINY_EOS = TINY_CONFIG["text_config"]["eos_token_id"]


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def text_batch(batch: int, eos: int, vocab_top: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids with BOS, random tokens, EOS, then EOS-padding of varying length."""
    g = torch.Generator().manual_seed(seed)
    length = 7
    ids = torch.randint(3, vocab_top, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    ids[:, 0] = eos - 1
    for row in range(batch):
        end = length - 1 - (row % 3)
        ids[row, end] = eos
        ids[row, end + 1 :] = eos
        mask[row, end + 1 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def pixels(batch: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


# -- small config ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pair(tiny_reference):
    ref, directory = tiny_reference
    return ref, CLIPSegForImageSegmentation.from_pretrained(directory)


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_text_prompts_logits_and_loss(tiny_pair, batch) -> None:
    ref, ours = tiny_pair
    inputs = {**text_batch(batch, TINY_EOS, TINY_EOS - 2), "pixel_values": pixels(batch, 96)}
    labels = (torch.rand(batch, 96, 96, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    with torch.no_grad():
        a = ref(**inputs, labels=labels)
        b = ours(**inputs, labels=labels)
    assert b.logits.shape == (batch, 96, 96)  # (B, H, W) also for B = 1
    assert torch.equal(a.logits, b.logits)
    close(a.loss, b.loss)
    close(a.conditional_embeddings, b.conditional_embeddings)
    close(a.pooled_output, b.pooled_output)
    close(a.vision_model_output.last_hidden_state, b.vision_model_output.last_hidden_state)


def test_tiny_image_prompts_and_embeddings(tiny_pair) -> None:
    ref, ours = tiny_pair
    query, prompt = pixels(2, 96, seed=1), pixels(2, 96, seed=2)
    emb = torch.randn(2, TINY_CONFIG["projection_dim"], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        close(
            ref(pixel_values=query, conditional_pixel_values=prompt).logits,
            ours(pixel_values=query, conditional_pixel_values=prompt).logits,
        )
        close(
            ref(pixel_values=query, conditional_embeddings=emb).logits,
            ours(pixel_values=query, conditional_embeddings=emb).logits,
        )


@pytest.mark.parametrize("side", [64, 80, 128])
def test_tiny_other_input_sizes(tiny_pair, side) -> None:
    """64 px is the trained grid (no interpolation); others resample the position embeddings."""
    ref, ours = tiny_pair
    inputs = {**text_batch(2, TINY_EOS, TINY_EOS - 2), "pixel_values": pixels(2, side)}
    with torch.no_grad():
        a, b = ref(**inputs).logits, ours(**inputs).logits
    assert b.shape == (2, side, side)
    close(a, b)


def test_tiny_hidden_states_and_attentions(tiny_reference, tiny_pair) -> None:
    """Attention weights need eager attention in transformers (SDPA returns none)."""
    _, directory = tiny_reference
    ref = transformers.CLIPSegForImageSegmentation.from_pretrained(
        directory, attn_implementation="eager"
    ).eval()
    ours = tiny_pair[1]
    inputs = {**text_batch(2, TINY_EOS, TINY_EOS - 2), "pixel_values": pixels(2, 96)}
    kwargs = {"output_attentions": True, "output_hidden_states": True}
    with torch.no_grad():
        a, b = ref(**inputs, **kwargs), ours(**inputs, **kwargs)
    close(a.logits, b.logits)
    va, vb = a.vision_model_output, b.vision_model_output
    assert len(va.hidden_states) == len(vb.hidden_states) == 6
    for x, y in zip(va.hidden_states, vb.hidden_states, strict=True):
        close(x, y)
    assert len(vb.attentions) == 5
    for x, y in zip(va.attentions, vb.attentions, strict=True):
        close(x, y)
    da, db = a.decoder_output, b.decoder_output
    assert len(db.hidden_states) == len(da.hidden_states) == 4
    for x, y in zip(da.hidden_states, db.hidden_states, strict=True):
        close(x, y)
    assert len(db.attentions) == 3 and db.attentions[0].shape == (2, 2, 37, 37)
    if da.attentions:  # transformers fills these only when the decoder itself runs eagerly
        for x, y in zip(da.attentions, db.attentions, strict=True):
            close(x, y)
    # the text tower's hidden states and (causal, padded) attention weights
    with torch.no_grad():
        ta = ref.clip.text_model(**text_batch(2, TINY_EOS, TINY_EOS - 2), **kwargs)
        tb = ours.clip.text_model(**text_batch(2, TINY_EOS, TINY_EOS - 2), **kwargs)
    for x, y in zip(
        ta.hidden_states + ta.attentions, tb.hidden_states + tb.attentions, strict=True
    ):
        close(x, y)
    close(ta.pooler_output, tb.pooler_output)


def test_tiny_clip_model_and_towers(tiny_pair, tiny_checkpoint) -> None:
    ref = tiny_pair[0].clip
    text = text_batch(3, TINY_EOS, TINY_EOS - 2)
    image = pixels(3, 96)
    clip = CLIPSegModel.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        a = ref(**text, pixel_values=image, return_loss=True)
        b = clip(**text, pixel_values=image, return_loss=True)
        close(a.logits_per_image, b.logits_per_image)
        close(a.logits_per_text, b.logits_per_text)
        close(a.loss, b.loss)
        close(
            ref.get_text_features(**text).pooler_output,
            clip.get_text_features(**text).pooler_output,
        )
        close(
            ref.get_image_features(image).pooler_output,
            clip.get_image_features(image).pooler_output,
        )
        tower = CLIPSegTextModel.from_pretrained(tiny_checkpoint)
        close(ref.text_model(**text).pooler_output, tower(**text).pooler_output)
        vision = CLIPSegVisionModel.from_pretrained(tiny_checkpoint)
        close(ref.vision_model(image).pooler_output, vision(image).pooler_output)


def test_legacy_eos_token_id_2_pools_at_argmax(tmp_path) -> None:
    """eos_token_id 2 (pre-#24773 configs): pool at input_ids.argmax(-1), like the reference."""
    config = copy.deepcopy(TINY_CONFIG)
    config["text_config"]["eos_token_id"] = 2
    ref = build_reference(config, tmp_path)
    ours = CLIPSegTextModel.from_pretrained(tmp_path)
    assert ours.config.eos_token_id == 2
    ids = torch.tensor([[617, 40, 618, 500, 3], [617, 618, 9, 9, 9]])  # argmax != first EOS
    with torch.no_grad():
        a = ref.clip.text_model(input_ids=ids).pooler_output
        b = ours(input_ids=ids).pooler_output
    close(a, b)
    last = ours(input_ids=ids).last_hidden_state
    torch.testing.assert_close(b, last[[0, 1], [2, 1]])  # the highest id: 618 at 2 and 1


def test_return_dict_false_and_indexing(tiny_pair) -> None:
    ours = tiny_pair[1]
    inputs = {**text_batch(1, TINY_EOS, TINY_EOS - 2), "pixel_values": pixels(1, 96)}
    with torch.no_grad():
        out = ours(**inputs)
        as_tuple = ours(**inputs, return_dict=False)
    assert torch.equal(out[0], out.logits) and torch.equal(out["logits"], out.logits)
    assert torch.equal(as_tuple[0], out.logits)


# -- full size (CIDAS shapes) ------------------------------------------------------------------

CIDAS_EOS = 49407


@pytest.fixture(scope="module")
def refined(reference_checkpoint):
    ref, directory = reference_checkpoint("rd64-refined")
    return ref, CLIPSegForImageSegmentation.from_pretrained(directory), directory


@pytest.mark.slow
def test_rd64_refined_text_prompts_and_loss(refined) -> None:
    ref, ours, _ = refined
    inputs = {**text_batch(2, CIDAS_EOS, 49000), "pixel_values": pixels(2, 352)}
    labels = (torch.rand(2, 352, 352, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    with torch.no_grad():
        a, b = ref(**inputs, labels=labels), ours(**inputs, labels=labels)
    assert b.logits.shape == (2, 352, 352)
    close(a.logits, b.logits)
    close(a.loss, b.loss)


@pytest.mark.slow
def test_rd64_refined_image_prompt_and_embeddings(refined) -> None:
    ref, ours, _ = refined
    query, prompt = pixels(1, 352, seed=1), pixels(1, 352, seed=2)
    emb = torch.randn(1, 512, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a = ref(pixel_values=query, conditional_pixel_values=prompt).logits
        b = ours(pixel_values=query, conditional_pixel_values=prompt).logits
        assert b.shape == (1, 352, 352)
        close(a, b)
        close(
            ref(pixel_values=query, conditional_embeddings=emb).logits,
            ours(pixel_values=query, conditional_embeddings=emb).logits,
        )


@pytest.mark.slow
def test_rd64_refined_clip_features(refined) -> None:
    """CLIPSegModel from a segmentation checkpoint gets exactly its clip.* towers."""
    ref, _, directory = refined
    clip = CLIPSegModel.from_pretrained(directory)
    text = text_batch(2, CIDAS_EOS, 49000)
    image = pixels(1, 224)
    with torch.no_grad():
        close(
            ref.clip.get_text_features(**text).pooler_output,
            clip.get_text_features(**text).pooler_output,
        )
        close(
            ref.clip.get_image_features(image).pooler_output,
            clip.get_image_features(image).pooler_output,
        )
        close(
            ref.clip(**text, pixel_values=image).logits_per_image,
            clip(**text, pixel_values=image).logits_per_image,
        )


@pytest.mark.slow
@pytest.mark.parametrize("side", [224, 416])
def test_rd64_refined_other_input_sizes(refined, side) -> None:
    ref, ours, _ = refined
    inputs = {**text_batch(1, CIDAS_EOS, 49000), "pixel_values": pixels(1, side)}
    with torch.no_grad():
        a, b = ref(**inputs).logits, ours(**inputs).logits
    assert b.shape == (1, side, side)
    close(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rd64", "rd16"])
def test_other_cidas_shapes(reference_checkpoint, name) -> None:
    """Only the decoder differs from rd64-refined: one text-prompt forward covers it."""
    ref, directory = reference_checkpoint(name)
    ours = CLIPSegForImageSegmentation.from_pretrained(directory)
    inputs = {**text_batch(1, CIDAS_EOS, 49000), "pixel_values": pixels(1, 352)}
    with torch.no_grad():
        close(ref(**inputs).logits, ours(**inputs).logits)
