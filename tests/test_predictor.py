"""Predictor: the same probabilities as CLIPSegForImageSegmentation (the oracle: our model's
forward, itself checked against transformers in test_parity.py), with the encoder run once."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipseg import CLIPSegForImageSegmentation, CLIPSegProcessor
from clipseg.predictor import DEFAULT_TEMPLATES, Exemplar, Mix, Predictor
from clipseg.prompts import prepare_visual_prompt

ATOL = 1e-5
PROMPTS = ["red circle", "a photo of a star.", "object", "blue"]


def make_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def parts(tiny_checkpoint):
    model = CLIPSegForImageSegmentation.from_pretrained(tiny_checkpoint)
    processor = CLIPSegProcessor.from_pretrained(tiny_checkpoint)
    return model, processor


@pytest.fixture
def predictor(parts) -> Predictor:
    return Predictor(*parts)


def oracle(model, pixel_values: torch.Tensor, size: tuple[int, int], **conditions) -> tuple:
    """The model's logits for K copies of one image, resized to ``size``, then the sigmoid."""
    k = next(iter(conditions.values())).shape[0]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values.repeat(k, 1, 1, 1), **conditions).logits
    probs = torch.sigmoid(F.interpolate(logits[:, None], size=size, mode="bilinear"))[:, 0]
    return probs.numpy(), logits.numpy()


def test_text_prompts_match_the_model(parts, predictor) -> None:
    model, processor = parts
    image = make_image(70, 50, seed=0)
    inputs = processor(text=PROMPTS, images=[image] * len(PROMPTS), padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits
    expected = torch.sigmoid(F.interpolate(logits[:, None], size=(50, 70), mode="bilinear"))[:, 0]
    predictor.set_image(image)
    probs, raw = predictor.predict(PROMPTS, return_logits=True)
    assert probs.dtype == np.float32 and probs.shape == (4, 50, 70)
    np.testing.assert_allclose(probs, expected.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(raw, logits.numpy(), atol=ATOL, rtol=0)
    assert raw.shape == (4, 96, 96)


def test_embedding_prompts_match_the_model(parts, predictor) -> None:
    model, processor = parts
    image = np.asarray(make_image(40, 64, seed=1))  # numpy (H, W, 3)
    emb = torch.randn(3, model.config.projection_dim, generator=torch.Generator().manual_seed(0))
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    expected, _ = oracle(model, pixels, (64, 40), conditional_embeddings=emb)
    predictor.set_image(image)
    np.testing.assert_allclose(predictor.predict_embeddings(emb), expected, atol=ATOL, rtol=0)
    mixed_types = [emb[0], emb[1].numpy(), emb[2]]
    np.testing.assert_allclose(predictor.predict(mixed_types), expected, atol=ATOL, rtol=0)


def test_exemplar_prompts_match_the_model(parts, predictor) -> None:
    model, processor = parts
    image, example = make_image(60, 60, seed=2), make_image(80, 50, seed=3)
    mask = np.zeros((50, 80), dtype=bool)
    mask[10:30, 20:50] = True
    exemplars = [Exemplar(example, mask=mask), Exemplar(example, box=(5, 5, 40, 45))]
    side = processor.image_processor.height  # prepared at the model's input size: one resize
    prepared = [
        prepare_visual_prompt(e.image, mask=e.mask, box=e.box, size=side) for e in exemplars
    ]
    conditional = processor.image_processor(prepared, return_tensors="pt")["pixel_values"]
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    expected, _ = oracle(model, pixels, (60, 60), conditional_pixel_values=conditional)
    predictor.set_image(image)
    np.testing.assert_allclose(predictor.predict(exemplars), expected, atol=ATOL, rtol=0)
    with torch.no_grad():
        features = model.clip.get_image_features(conditional[:1]).pooler_output[0]
    torch.testing.assert_close(predictor.embed_exemplar(example, mask=mask), features)


def test_whole_image_exemplar_matches_transformers_visual_prompt(tiny_reference) -> None:
    """A square exemplar without mask or box is the image itself: resized once to the processor's
    size (96 here, not 352 and then 96), it equals transformers' ``visual_prompt``."""
    transformers = pytest.importorskip("transformers")
    ref, directory = tiny_reference
    ref_processor = transformers.CLIPSegProcessor.from_pretrained(directory)
    image, example = make_image(60, 60, seed=6), make_image(64, 64, seed=7)
    inputs = ref_processor(images=[image], visual_prompt=[example], return_tensors="pt")
    with torch.no_grad():
        logits = ref(**inputs).logits
    expected = torch.sigmoid(F.interpolate(logits[:, None], size=(60, 60), mode="bilinear"))[:, 0]
    predictor = Predictor.from_pretrained(directory, device="cpu")
    assert predictor.processor.image_processor.height == 96
    predictor.set_image(image)
    got = predictor.predict([Exemplar(example)])
    np.testing.assert_allclose(got, expected.numpy(), atol=ATOL, rtol=0)


def test_mix_is_the_weighted_sum(predictor) -> None:
    predictor.set_image(make_image(48, 48, seed=4))
    text = predictor.embed_text(["red circle"])[0]
    other = torch.randn_like(text)
    expected = predictor.predict_embeddings((0.3 * text + 0.7 * other)[None])
    got = predictor.predict([Mix([("red circle", 0.3), (other, 0.7)])])
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_templates_average_the_text_embeddings(predictor) -> None:
    templates = DEFAULT_TEMPLATES[:3]
    got = predictor.embed_text(["star", "circle"], templates=templates)
    for row, label in enumerate(["star", "circle"]):
        singles = predictor.embed_text([t.format(label) for t in templates])
        torch.testing.assert_close(got[row], singles.mean(0))
    predictor.set_image(make_image(32, 32, seed=5))
    np.testing.assert_allclose(
        predictor.predict(["star"], templates=templates),
        predictor.predict_embeddings(got[:1]),
        atol=ATOL,
        rtol=0,
    )


def test_encoder_runs_once_and_stops_at_the_deepest_extracted_layer(parts) -> None:
    model, processor = parts
    predictor = Predictor(model, processor)
    layers = model.clip.vision_model.encoder.layers
    deepest = max(model.extract_layers)
    assert deepest < len(layers) - 1  # the tiny config has blocks past the deepest one
    calls = {"vision": [0] * len(layers), "reduce": 0, "text": 0}
    handles = [
        layer.register_forward_hook(
            lambda *_, i=i: calls["vision"].__setitem__(i, calls["vision"][i] + 1)
        )
        for i, layer in enumerate(layers)
    ]
    handles.append(
        model.decoder.reduces[0].register_forward_hook(
            lambda *_: calls.__setitem__("reduce", calls["reduce"] + 1)
        )
    )
    handles.append(
        model.clip.text_model.register_forward_hook(
            lambda *_: calls.__setitem__("text", calls["text"] + 1)
        )
    )
    try:
        predictor.set_image(make_image(50, 40, seed=6))
        assert calls["vision"] == [1] * (deepest + 1) + [0] * (len(layers) - deepest - 1)
        assert calls["reduce"] == 1
        predictor.predict(PROMPTS)
        predictor.predict(PROMPTS[:2])  # cached text: no text-tower call
        assert calls["vision"] == [1] * (deepest + 1) + [0] * (len(layers) - deepest - 1)
        assert calls["reduce"] == 1  # reduces applied once per image, not per prompt
        assert calls["text"] == 1  # all uncached texts in one batch, then the cache
    finally:
        for handle in handles:
            handle.remove()


def test_an_image_seen_recently_is_not_encoded_again(parts) -> None:
    model, processor = parts
    predictor = Predictor(model, processor, image_cache_size=2)
    first = model.clip.vision_model.encoder.layers[0]
    encoded = []
    handle = first.register_forward_hook(lambda *_: encoded.append(1))
    a, b, c = (make_image(50, 40, seed=s) for s in (20, 21, 22))
    try:
        predictor.set_image(a)
        expected = predictor.predict(PROMPTS)
        predictor.set_image(np.asarray(a).copy())  # the same pixels in another container
        np.testing.assert_array_equal(predictor.predict(PROMPTS), expected)
        assert len(encoded) == 1
        predictor.set_image(b)
        predictor.set_image(c)  # cache of 2: a, the least recently used, is dropped
        predictor.set_image(b)
        assert len(encoded) == 3
        predictor.set_image(a)
        assert len(encoded) == 4
        np.testing.assert_array_equal(predictor.predict(PROMPTS), expected)
        flipped = np.asarray(a).copy()
        flipped[0, 0] = 255 - flipped[0, 0]  # one pixel differs: a different image
        predictor.set_image(flipped)
        assert len(encoded) == 5
        predictor.reset_image()  # empties the cache
        predictor.set_image(a)
        assert len(encoded) == 6
        off = Predictor(model, processor, image_cache_size=0)
        off.set_image(a)
        off.set_image(a)
        assert len(encoded) == 8
    finally:
        handle.remove()


def test_a_model_moved_after_use_is_followed(parts) -> None:
    """Moving the model (here to bfloat16; to CUDA alike) drops what was computed for the old
    dtype: the cached text embeddings, the encoded images and the current image."""
    model, processor = parts
    model = copy.deepcopy(model)
    predictor = Predictor(model, processor)
    image = make_image(40, 30, seed=23)
    predictor.set_image(image)
    predictor.predict(PROMPTS)  # fills the text and image caches in float32
    model.to(torch.bfloat16)
    assert not predictor.is_image_set
    with pytest.raises(RuntimeError, match="moved to cpu / torch.bfloat16 after the image was set"):
        predictor.predict(PROMPTS)
    predictor.set_image(image)  # the same pixels: not taken from the float32 cache
    got = predictor.predict(PROMPTS)
    fresh = Predictor(model, processor)
    fresh.set_image(image)
    np.testing.assert_array_equal(got, fresh.predict(PROMPTS))
    assert predictor.embed_text(PROMPTS).dtype == torch.bfloat16


def test_chunked_decoding_equals_one_chunk(parts) -> None:
    image = make_image(30, 45, seed=7)
    big = Predictor(*parts, chunk_size=32)
    small = Predictor(*parts, chunk_size=3)
    big.set_image(image)
    small.set_image(image)
    prompts = [*PROMPTS, "star", "green", "circle"]
    np.testing.assert_allclose(small.predict(prompts), big.predict(prompts), atol=ATOL, rtol=0)


def test_set_images_batches_several_images(predictor) -> None:
    images = [make_image(40, 30, seed=8), make_image(25, 60, seed=9)]
    predictor.set_images(images)
    results = predictor.predict(PROMPTS[:2])
    assert [r.shape for r in results] == [(2, 30, 40), (2, 60, 25)]
    for image, got in zip(images, results, strict=True):
        predictor.set_image(image)
        np.testing.assert_allclose(got, predictor.predict(PROMPTS[:2]), atol=ATOL, rtol=0)


def test_pairs_batch_equals_one_image_at_a_time(parts) -> None:
    """Many images x few prompts decode as one batch of (image, prompt) pairs, in chunks."""
    images = [make_image(36, 28, seed=20 + i) for i in range(5)]
    single = Predictor(*parts)
    expected = []
    for image in images:
        single.set_image(image)
        expected.append(single.predict(PROMPTS[:3], return_logits=True))
    for chunk_size in (3, 7, 64):  # one image per call, a partial last chunk, all at once
        batched = Predictor(*parts, chunk_size=chunk_size)
        batched.set_images(images)
        got = batched.predict(PROMPTS[:3], return_logits=True)
        for (probs, logits), (want_probs, want_logits) in zip(got, expected, strict=True):
            np.testing.assert_allclose(probs, want_probs, atol=ATOL, rtol=0)
            # logits are larger than probabilities: batch-size dependent rounding in matmuls
            np.testing.assert_allclose(logits, want_logits, atol=ATOL, rtol=1e-5)


def test_tensor_batch_is_preprocessed_on_its_device(parts) -> None:
    """A (B, 3, H, W) uint8 batch skips PIL: pixels within one gray level, same predictions."""
    images = [make_image(64, 48, seed=30 + i) for i in range(3)]
    batch = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    predictor = Predictor(*parts)
    predictor.set_images(images)
    via_pil = predictor.predict(PROMPTS[:2])
    predictor.set_images(batch)
    via_tensor = predictor.predict(PROMPTS[:2])
    for a, b in zip(via_pil, via_tensor, strict=True):
        assert b.shape == (2, 48, 64)
        difference = np.abs(a - b)  # random weights amplify the one-gray-level differences
        assert 0 < difference.mean() < 5e-3 and difference.max() < 0.1
    processor = parts[1].image_processor
    pixels_pil = processor(images, return_tensors="pt")["pixel_values"]
    pixels_tensor = processor.preprocess_tensor(batch)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    gray_levels = ((pixels_pil - pixels_tensor).abs() * std * 255).max()
    assert float(gray_levels) <= 1.0 + 1e-3
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        processor.preprocess_tensor(batch[:, :2])
    # a batch larger than one slice is converted in slices, with the same result
    sliced = copy.copy(processor)
    sliced.tensor_slice_values = batch[0].numel() * 2  # slices of 2 images: 2 + 1
    calls = []

    def recording(images):
        calls.append(len(images))
        return type(sliced).preprocess_tensor(sliced, images)

    sliced.preprocess_tensor = recording
    torch.testing.assert_close(sliced.preprocess_tensor(batch), pixels_tensor, atol=0, rtol=0)
    assert calls == [3, 2, 1]
    sliced.tensor_slice_values = 1  # never less than one image per slice
    torch.testing.assert_close(sliced.preprocess_tensor(batch), pixels_tensor, atol=0, rtol=0)
    with pytest.raises(TypeError, match="set_image for one image"):
        predictor.set_images(batch[0])


def test_text_embedding_does_not_depend_on_its_batch(parts) -> None:
    """Padding to the longest string in a batch changes nothing (the tower is causal)."""
    alone = Predictor(*parts).embed_text(["cat"])[0]
    padded = Predictor(*parts).embed_text(["a photo of a very large striped cat", "cat"])[1]
    torch.testing.assert_close(padded, alone, atol=ATOL, rtol=0)


def test_text_embedding_ignores_a_left_padding_tokenizer(parts, tiny_checkpoint) -> None:
    model, processor = parts
    left = CLIPSegProcessor.from_pretrained(tiny_checkpoint, padding_side="left")
    texts = ["red circle", "a photo of a star."]  # different lengths: one is padded
    ids = {
        side: CLIPSegProcessor.from_pretrained(tiny_checkpoint, padding_side=side).tokenizer(
            texts, padding=True
        )["input_ids"][0]
        for side in ("left", "right")
    }
    assert ids["left"] != ids["right"]  # the tokenizer really pads on the left
    expected = Predictor(model, processor).embed_text(texts)
    torch.testing.assert_close(Predictor(model, left).embed_text(texts), expected)


def test_tensor_path_reads_nothing_back_to_the_host(parts) -> None:
    """No scalar read-backs between a tensor batch and device-side probabilities: on a GPU each
    one would stall the host until all queued work is done (the text tower then could not be
    queued behind the vision encoder)."""
    batch = torch.randint(0, 256, (3, 3, 40, 56), dtype=torch.uint8)
    predictor = Predictor(*parts)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        predictor.set_images(batch)
        probs = predictor.predict(["never seen", "cat", "a photo of a dog"], output="torch")
    assert [tuple(p.shape) for p in probs] == [(3, 40, 56)] * 3
    names = {event.key for event in profile.key_averages()}
    assert not names & {"aten::item", "aten::_local_scalar_dense", "aten::nonzero"}
    assert "aten::upsample_bilinear2d" in names  # the profile saw the pipeline


def test_torch_output_stays_on_the_device(predictor) -> None:
    predictor.set_image(make_image(40, 30, seed=40))
    as_numpy = predictor.predict(PROMPTS[:2], return_logits=True)
    as_torch = predictor.predict(PROMPTS[:2], return_logits=True, output="torch")
    for a, t in zip(as_numpy, as_torch, strict=True):
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
        assert t.device == predictor.device
        np.testing.assert_array_equal(a, t.numpy())
    with pytest.raises(ValueError, match="output must be"):
        predictor.predict(PROMPTS[:1], output="pil")


def test_shared_across_threads(parts) -> None:
    predictor = Predictor(*parts)
    images = [make_image(32 + 4 * i, 40, seed=10 + i) for i in range(4)]
    expected = [predictor.segment(image, PROMPTS) for image in images]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = predictor.segment(images[i], PROMPTS)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        np.testing.assert_array_equal(results[i], expected[i])


def test_predict_before_set_image(predictor) -> None:
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(["cat"])


def test_empty_prompt_list(predictor) -> None:
    predictor.set_image(make_image(20, 20, seed=11))
    with pytest.raises(ValueError, match="empty"):
        predictor.predict([])
    with pytest.raises(ValueError, match="empty"):
        predictor.predict_embeddings(np.zeros((0, 24), dtype=np.float32))


@pytest.mark.parametrize(
    "bad", [42, object(), np.zeros((8, 8, 7), dtype=np.uint8), np.zeros((0, 5, 3), np.uint8)]
)
def test_non_image_is_rejected(predictor, bad) -> None:
    with pytest.raises(ValueError):
        predictor.set_image(bad)
    assert not predictor.is_image_set


def test_bad_prompts_are_named(predictor) -> None:
    predictor.set_image(make_image(20, 20, seed=12))
    with pytest.raises(ValueError, match=r"shape \(24,\)"):
        predictor.predict([np.zeros(5, dtype=np.float32)])
    with pytest.raises(TypeError, match="unsupported prompt type"):
        predictor.predict([3.5])


def test_from_pretrained_follows_device_and_dtype(tiny_checkpoint) -> None:
    predictor = Predictor.from_pretrained(tiny_checkpoint, device="cpu")
    assert predictor.device.type == "cpu" and predictor.dtype == torch.float32
    predictor.set_image(make_image(24, 24, seed=13))
    probs = predictor.predict(["star"])
    assert probs.dtype == np.float32 and probs.shape == (1, 24, 24)
    assert ((probs >= 0) & (probs <= 1)).all()
    low = Predictor.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.bfloat16)
    low.set_image(make_image(24, 24, seed=13))
    low_probs = low.predict(["star"])
    assert low_probs.dtype == np.float32
    np.testing.assert_allclose(low_probs, probs, atol=0.1)
