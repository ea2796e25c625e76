"""CLIPSegImageProcessor / load_image / CLIPSegProcessor against transformers' PIL-backend ViT
image processor (the numbers CIDAS' preprocessor_config.json gives in transformers)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from clip_vocab import (  # noqa: F401  (the fixtures clip_vocab_dir, checkpoint_dir)
    CIDAS_PREPROCESSOR_CONFIG,
    clip_vocab_fixture,
    processor_checkpoint_fixture,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageOps

from clipseg.processing import (
    CLIPSegImageProcessor,
    CLIPSegProcessor,
    CLIPTokenizer,
    load_image,
)

transformers = pytest.importorskip("transformers", reason="transformers is the parity reference")

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
CIDAS_CONFIG = CIDAS_PREPROCESSOR_CONFIG


@pytest.fixture(scope="module")
def ref():
    """transformers' PIL ("slow") ViT processor with CIDAS' settings; do_convert_rgb=True so that
    every mode reaches RGB (it composites alpha onto white, as ours does)."""
    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(
        do_resize=True,
        size={"height": 352, "width": 352},
        resample=2,
        do_rescale=True,
        do_normalize=True,
        image_mean=MEAN,
        image_std=STD,
        do_convert_rgb=True,
    )


@pytest.fixture(scope="module")
def ours():
    return CLIPSegImageProcessor(**CIDAS_CONFIG)


def _ref_pixels(ref, image) -> np.ndarray:
    return np.asarray(ref(image, return_tensors="np")["pixel_values"])


def _rgba(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth-ish content plus noise so resampling is exercised
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256, xx * 0 + 128], -1
    )
    noise = rng.integers(-40, 40, (h, w, 4))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _modes(h: int, w: int) -> dict[str, Image.Image]:
    arr = _rgba(h, w)
    arr[..., 3] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]  # varying alpha
    rgb = Image.fromarray(arr[..., :3])
    p_transparent = rgb.convert("P")
    p_transparent.info["transparency"] = 3
    return {
        "RGB": rgb,
        "RGBA": Image.fromarray(arr),
        "L": Image.fromarray(arr[..., 0]),
        "LA": Image.fromarray(arr).convert("LA"),
        "P": rgb.convert("P"),
        "P+transparency": p_transparent,
        "CMYK": rgb.convert("CMYK"),
        "1": Image.fromarray(arr[..., 0]).convert("1"),
    }


@pytest.mark.parametrize("size", [(37, 53), (352, 352), (500, 301), (1, 1), (2, 900)], ids=str)
@pytest.mark.parametrize("mode", list(_modes(4, 4)))
def test_pil_modes_match_transformers(ref, ours, mode, size):
    image = _modes(*size)[mode]
    got = ours(image, return_tensors="pt")["pixel_values"]
    assert got.dtype == torch.float32 and got.shape == (1, 3, 352, 352)
    np.testing.assert_allclose(got.numpy(), _ref_pixels(ref, image), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_wide_grey_differs_from_transformers_deliberately(ref, ours, mode):
    """More than 8 bits of grey: transformers lets PIL clip to [0, 255]; clipseg shows it as
    Label Studio's browser does (16 bits: v >> 8; float: intensities in [0, 1]), see
    tests/test_sixteen_bit.py and docs/transformers.md."""
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 65536, (37, 53)) if mode != "F" else rng.random((37, 53))
    image = {
        "I;16": lambda: Image.fromarray(levels.astype(np.uint16)),
        "I": lambda: Image.fromarray(levels.astype(np.int32), mode="I"),
        "F": lambda: Image.fromarray(levels.astype(np.float32), mode="F"),
    }[mode]()
    shown = (levels >> 8) if mode != "F" else np.round(levels.astype(np.float32) * 255.0)
    shown = Image.fromarray(shown.astype(np.uint8))
    clipped = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    got = ours(image, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(got, ours(shown, return_tensors="np")["pixel_values"], atol=0)
    np.testing.assert_allclose(_ref_pixels(ref, image), _ref_pixels(ref, clipped), atol=1e-6)
    assert not np.allclose(got, _ref_pixels(ref, image), atol=1e-3)


@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_numpy_uint8_matches_transformers(ref, ours, channels):
    arr = _rgba(61, 43, seed=1)
    arr = arr[..., 0] if channels is None else arr[..., :channels]
    got = ours(arr, return_tensors="np")["pixel_values"]
    # transformers cannot read a 2-D array; its (H, W, 1) form is the same image
    reference = _ref_pixels(ref, arr[..., None] if channels is None else arr)
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-6)


def test_float_and_tensor_inputs_equal_uint8(ours):
    arr = _rgba(40, 30, seed=2)[..., :3]
    expected = ours(arr, return_tensors="np")["pixel_values"]
    as_float = arr.astype(np.float32) / 255.0
    np.testing.assert_allclose(
        ours(as_float, return_tensors="np")["pixel_values"], expected, atol=1e-6
    )
    chw = torch.from_numpy(arr).permute(2, 0, 1)
    np.testing.assert_allclose(ours(chw, return_tensors="np")["pixel_values"], expected, atol=1e-6)
    # bfloat16 (numpy has none) reads as the float32 of the same values
    bf16 = torch.from_numpy(as_float).to(torch.bfloat16)
    np.testing.assert_array_equal(
        ours(bf16, return_tensors="np")["pixel_values"],
        ours(bf16.float(), return_tensors="np")["pixel_values"],
    )


def test_batch_and_list_output(ref, ours):
    images = list(_modes(20, 31).values())[:4]
    got = ours(images)["pixel_values"]
    assert got.shape == (4, 3, 352, 352) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _ref_pixels(ref, images), atol=1e-6)
    as_list = ours(images, return_tensors=None)["pixel_values"]
    assert len(as_list) == 4 and as_list[0].shape == (3, 352, 352)


@pytest.mark.parametrize(
    "settings",
    [
        {"do_resize": False},
        {"size": {"height": 224, "width": 224}},
        {"size": 64},
        {"resample": 0},
        {"resample": Image.Resampling.BICUBIC},
        {"do_rescale": False},
        {"rescale_factor": 1 / 127.5},
        {"do_normalize": False},
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
        {"image_mean": 0.5, "image_std": 0.25},
    ],
    ids=str,
)
def test_per_call_settings_match_transformers(ref, ours, settings):
    image = Image.fromarray(_rgba(53, 37, seed=4)[..., :3])
    before = ours.to_dict()
    got = ours(image, return_tensors="np", **settings)["pixel_values"]
    expected = np.asarray(ref(image, return_tensors="np", **settings)["pixel_values"])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * max(1, np.abs(expected).max()))
    assert ours.to_dict() == before  # a call's settings do not stick


def test_unknown_call_settings_raise(ours):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match="'do_center_crop', 'foo'"):
        ours(image, foo=1, do_center_crop=True)
    with pytest.raises(ValueError, match="do_convert_rgb=False"):
        ours(image, do_convert_rgb=False)
    assert ours(image, do_convert_rgb=True)["pixel_values"].shape == (1, 3, 352, 352)
    with pytest.raises(ValueError, match="do_resize=None is ambiguous"):
        ours(image, do_resize=None)  # transformers 5: no resize; transformers 4: resize


def test_images_of_different_sizes_without_resize(ours):
    images = [np.zeros((8, 6, 3), np.uint8), np.zeros((5, 7, 3), np.uint8)]
    with pytest.raises(ValueError, match="different sizes"):
        ours(images, do_resize=False)
    listed = ours(images, do_resize=False, return_tensors=None)["pixel_values"]
    assert [a.shape for a in listed] == [(3, 8, 6), (3, 5, 7)]


def test_batched_arrays_match_transformers(ref, ours):
    batch = np.stack([_rgba(41, 29, seed=s)[..., :3] for s in range(3)])  # (B, H, W, C)
    expected = _ref_pixels(ref, batch)
    assert expected.shape == (3, 3, 352, 352)
    np.testing.assert_allclose(
        ours(batch, return_tensors="np")["pixel_values"], expected, atol=1e-6
    )
    as_torch = torch.from_numpy(batch).permute(0, 3, 1, 2)  # (B, C, H, W)
    np.testing.assert_allclose(_ref_pixels(ref, as_torch), expected, atol=1e-6)
    np.testing.assert_allclose(
        ours(as_torch, return_tensors="np")["pixel_values"], expected, atol=1e-6
    )
    mixed = ours([batch[:2], Image.fromarray(batch[2])], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(mixed, expected, atol=1e-6)
    with pytest.raises(ValueError, match="empty batch"):
        ours(batch[:0])


def test_float_images_as_transformers_reads_them(ref, ours):
    arr = _rgba(33, 47, seed=5)[..., :3]
    uint8 = ours(arr, return_tensors="np")["pixel_values"]
    # whole pixel levels stored as floats are the uint8 image, in both
    levels = arr.astype(np.float32)
    np.testing.assert_allclose(_ref_pixels(ref, levels), uint8, atol=1e-6)
    np.testing.assert_allclose(ours(levels, return_tensors="np")["pixel_values"], uint8, atol=1e-6)
    # intensities in [0, 1] with do_rescale=False (transformers' advice for them): equal
    unit = arr.astype(np.float64) / 255
    kept = np.asarray(ref(unit, return_tensors="np", do_rescale=False)["pixel_values"])
    np.testing.assert_allclose(
        ours(unit, return_tensors="np", do_rescale=False)["pixel_values"], kept, atol=1e-6
    )
    np.testing.assert_allclose(kept, uint8, atol=1e-6)
    # the documented difference: with do_rescale on, transformers divides by 255 a second time
    np.testing.assert_allclose(ours(unit, return_tensors="np")["pixel_values"], uint8, atol=1e-6)
    assert np.abs(_ref_pixels(ref, unit) - uint8).max() > 1
    # neither intensities nor whole levels: both refuse
    odd = levels + 0.5
    with pytest.raises(ValueError):
        ref(odd, return_tensors="np")
    with pytest.raises(ValueError, match="neither intensities in \\[0, 1\\] nor whole pixel"):
        ours(odd)


def _jpeg_with_orientation(arr: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(ref, ours, orientation):
    data = _jpeg_with_orientation(_rgba(48, 80, seed=3)[..., :3], orientation)
    raw = Image.open(io.BytesIO(data))
    transposed = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert transposed.size != raw.size or orientation == 3
    got = ours(raw, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(got, _ref_pixels(ref, transposed), atol=1e-6)
    assert not np.allclose(got, _ref_pixels(ref, raw), atol=1e-3)  # it really did something
    assert load_image(data).size == transposed.size  # bytes go through the same path


def test_load_image_alpha_composited_on_white():
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[..., 0] = 200
    arr[0, 0, 3] = 255  # opaque red-ish
    arr[1, 1, 3] = 0  # fully transparent -> white
    out = np.asarray(load_image(Image.fromarray(arr)))
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]
    assert np.asarray(load_image(arr))[1, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "bad, match",
    [
        (b"not an image at all", "could not be decoded"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "could not be decoded"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((5, 5, 2), np.uint8), "shape"),
        (np.zeros((2, 5, 5, 3), np.uint8), "shape"),
        (np.zeros((5,), np.uint8), "shape"),
        (np.full((5, 5, 3), 2.5, np.float32), "neither intensities"),
        (np.full((5, 5, 3), -1.0, np.float32), "neither intensities"),
        (np.full((5, 5, 3), 256.0, np.float32), "neither intensities"),
        (np.full((5, 5, 3), np.nan, np.float32), "NaN"),
        (np.full((5, 5), 300, np.int32), "outside"),
        (np.zeros((5, 5), np.complex64), "dtype"),
        (12345, "int"),
        ({"image": 1}, "dict"),
        (None, "NoneType"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_load_image_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        load_image(bad)


def test_load_image_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.png")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match="could not be decoded"):
        load_image(corrupt)


def test_reads_the_processor_config_transformers_5_writes(checkpoint_dir, tmp_path):
    """transformers 5 saves the image settings nested in processor_config.json (and no
    preprocessor_config.json); they are read, and win over a preprocessor_config.json as in
    transformers."""
    theirs = transformers.CLIPSegProcessor.from_pretrained(checkpoint_dir)
    theirs.image_processor.size = {"height": 224, "width": 224}
    theirs.image_processor.image_mean = [0.5, 0.4, 0.3]
    theirs.image_processor.image_std = [0.2, 0.3, 0.4]
    theirs.image_processor.resample = 3
    theirs.save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file()
    assert not (tmp_path / "preprocessor_config.json").exists()
    image = _modes(40, 70)["RGB"]
    reloaded = transformers.CLIPSegProcessor.from_pretrained(tmp_path)
    expected = reloaded(images=image, return_tensors="pt")["pixel_values"]
    ours = CLIPSegProcessor.from_pretrained(tmp_path)
    got = ours(images=image, return_tensors="pt")["pixel_values"]
    assert got.shape == expected.shape == (1, 3, 224, 224)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # an older preprocessor_config.json next to it is not used (transformers' order)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(CIDAS_CONFIG))
    assert CLIPSegImageProcessor.from_pretrained(tmp_path).size == {"height": 224, "width": 224}
    assert transformers.CLIPSegProcessor.from_pretrained(tmp_path).image_processor.size == {
        "height": 224,
        "width": 224,
    }


def test_config_roundtrip_and_size_forms(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**CIDAS_CONFIG, "foo": 1}))
    proc = CLIPSegImageProcessor.from_pretrained(tmp_path)
    assert (proc.height, proc.width, proc.resample) == (352, 352, 2)
    out = tmp_path / "saved"
    proc.save_pretrained(out)
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 352, "width": 352} and saved["foo"] == 1
    assert saved["image_mean"] == MEAN and saved["image_std"] == STD
    assert CLIPSegImageProcessor(size={"shortest_edge": 224})(np.zeros((5, 9, 3), np.uint8))[
        "pixel_values"
    ].shape == (1, 3, 224, 224)
    assert CLIPSegImageProcessor(size=64, crop_size={"height": 1})(np.zeros((5, 9), np.uint8))[
        "pixel_values"
    ].shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="size"):
        CLIPSegImageProcessor(size={"bogus": 3})


# ---- CLIPSegProcessor -------------------------------------------------------------------------


def test_processor_matches_transformers(checkpoint_dir, ref):
    ours = CLIPSegProcessor.from_pretrained(checkpoint_dir)
    theirs = transformers.CLIPSegProcessor(
        image_processor=ref, tokenizer=transformers.CLIPTokenizer.from_pretrained(checkpoint_dir)
    )
    image = _modes(50, 70)["RGB"]
    prompts = ["a cat", "a photo of a dog", "something"]
    got = ours(text=prompts, images=[image] * 3, padding="max_length", return_tensors="pt")
    exp = theirs(text=prompts, images=[image] * 3, padding="max_length", return_tensors="pt")
    assert set(got) == set(exp) == {"input_ids", "attention_mask", "pixel_values"}
    assert torch.equal(got["input_ids"], exp["input_ids"])
    assert torch.equal(got["attention_mask"], exp["attention_mask"])
    torch.testing.assert_close(got["pixel_values"], exp["pixel_values"], rtol=0, atol=1e-6)

    vp = ours(images=[image], visual_prompt=[image], return_tensors="pt")
    vp_exp = theirs(images=[image], visual_prompt=[image], return_tensors="pt")
    assert set(vp) == set(vp_exp) == {"pixel_values", "conditional_pixel_values"}
    torch.testing.assert_close(vp["conditional_pixel_values"], vp_exp["conditional_pixel_values"])
    assert set(ours(visual_prompt=image)) == {"conditional_pixel_values"}
    assert set(ours(images=image)) == {"pixel_values"}
    assert set(ours(text="a cat")) == {"input_ids", "attention_mask"}
    assert ours.batch_decode(got["input_ids"], skip_special_tokens=True) == prompts
    assert ours.decode(got["input_ids"][0], skip_special_tokens=True) == "a cat"
    assert got.input_ids is got["input_ids"]


def test_processor_errors_and_roundtrip(checkpoint_dir, tmp_path):
    proc = CLIPSegProcessor.from_pretrained(checkpoint_dir)
    with pytest.raises(ValueError, match="either text, visual prompt or images"):
        proc()
    with pytest.raises(ValueError, match="exactly one type of prompt"):
        proc(text="a", visual_prompt=np.zeros((4, 4, 3), np.uint8))
    proc.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
    }
    again = CLIPSegProcessor.from_pretrained(tmp_path)
    assert isinstance(again.tokenizer, CLIPTokenizer)
    assert again.tokenizer.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert again.image_processor.to_dict() == proc.image_processor.to_dict()


def test_processor_resolves_names_through_weights():
    """Non-directory names resolve as the models' do: "demo" is the shipped checkpoint."""
    from clipseg.weights import DEMO_CHECKPOINT

    by_name = CLIPSegProcessor.from_pretrained("demo")
    by_path = CLIPSegProcessor.from_pretrained(DEMO_CHECKPOINT)
    assert by_name.tokenizer.get_vocab() == by_path.tokenizer.get_vocab()
    assert by_name.image_processor.to_dict() == by_path.image_processor.to_dict()
    assert by_name.tokenizer.encode("a cat")[0] == by_name.tokenizer.bos_token_id
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        CLIPSegProcessor.from_pretrained("./no/such/dir")


@settings(max_examples=30, deadline=None)
@given(
    pixels=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=9)),
    rescale=st.sampled_from([{}, {"do_rescale": False}, {"rescale_factor": 1 / 127.5}]),
    normalize=st.sampled_from(
        [{}, {"do_normalize": False}, {"image_mean": [0.1, 0.7, 0.3], "image_std": [3.0, 0.2, 1.0]}]
    ),
)
def test_level_table_is_bitwise_the_arithmetic(ours, pixels, rescale, normalize):
    """Rescale and normalize run as a per-level lookup; it must equal the steps it replaces
    (transformers' order and precision) bit for bit, for every level and channel."""
    rgb = np.stack([pixels, 255 - pixels, pixels[::-1]], axis=-1)  # (H, W, 3)
    proc = ours.with_settings(do_resize=False, **rescale, **normalize)
    got = proc(rgb, return_tensors="np")["pixel_values"][0]
    values = rgb.astype(np.float32)
    if proc.do_rescale:
        values = (rgb.astype(np.float64) * proc.rescale_factor).astype(np.float32)
    if proc.do_normalize:
        mean = np.asarray(proc.image_mean, dtype=np.float32)
        values = (values - mean) / np.asarray(proc.image_std, dtype=np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, values.transpose(2, 0, 1))


def test_a_batch_preprocessed_on_several_threads_keeps_its_order(ours, monkeypatch):
    images = [Image.fromarray(_rgba(30 + i, 20 + 3 * i, seed=i)[..., :3]) for i in range(7)]
    one_by_one = np.stack([ours.preprocess_one(image) for image in images])
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    got = ours(images, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(got, one_by_one)
    with pytest.raises(ValueError, match=r"image array is empty \(shape \(0, 4, 3\)\)"):
        ours([images[0], np.zeros((0, 4, 3), np.uint8)])  # a bad image still names itself


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_one_lazily_opened_image_repeated_in_a_batch(ours, monkeypatch, tmp_path, fmt):
    """transformers' usage repeats one image per prompt; an image opened from a file is decoded
    on first use, which several threads must not do to one object at once."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    path = tmp_path / f"photo.{fmt.lower()}"
    Image.fromarray(_rgba(640, 480, seed=5)[..., :3]).save(path, fmt)
    expected = ours(Image.open(path), return_tensors="np")["pixel_values"][0]
    for _ in range(3):
        lazy = Image.open(path)
        got = ours([lazy] * 5, return_tensors="np")["pixel_values"]
        assert got.shape == (5, 3, 352, 352)
        for row in got:
            np.testing.assert_array_equal(row, expected)
    listed = ours([Image.open(path)] * 2, return_tensors=None)["pixel_values"]
    listed[0][:] = 0  # the caller's list: a repeated image is not one shared array
    np.testing.assert_array_equal(listed[1], expected)


def test_names_stay_importable_from_before_the_split():
    """processing.py was split into tokenization / image_processing / processing; the names it
    held are the same objects from every place they were importable."""
    import clipseg
    import clipseg.image_processing as image_processing
    import clipseg.processing as processing
    import clipseg.tokenization as tokenization

    assert processing.CLIPTokenizer is tokenization.CLIPTokenizer is clipseg.CLIPTokenizer
    for name in ("CLIPSegImageProcessor", "load_image", "tensor_to_numpy", "IMAGENET_DEFAULT_MEAN"):
        assert getattr(processing, name) is getattr(image_processing, name)
    assert clipseg.CLIPSegImageProcessor is image_processing.CLIPSegImageProcessor
    assert clipseg.CLIPSegProcessor is processing.CLIPSegProcessor
    assert set(processing.__all__) >= {"BatchEncoding", "CLIPTokenizer", "load_image"}
