"""One rule for images with more than 8 bits of grey (issue 15 item 9): the model sees what the
annotator sees. Label Studio's browser decodes a 16-bit PNG to 8 bits by keeping each value's
high byte (v >> 8); clipseg's image processor and the backend's image loader both convert by
`clipseg.image_processing.image_to_rgb`, so both give exactly that.

The 16-bit values are read back by OpenCV, a decoder independent of PIL, so the expected pixels
do not come from the code under test.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from backend.images import ImageError, decode_image
from backend.settings import Settings
from clipseg.image_processing import CLIPSegImageProcessor, image_to_rgb, load_image


def _sixteen_bit_grey() -> np.ndarray:
    """(40, 64) uint16: a full-range ramp on top, a typical narrow-range scan below (values
    1,000..4,000 of 65,535, which PIL's own conversion would clip to white)."""
    ramp = np.linspace(0, 65535, 64, dtype=np.float64).round().astype(np.uint16)
    rows = np.repeat(ramp[None], 20, axis=0)
    rng = np.random.default_rng(0)
    narrow = rng.integers(1000, 4001, (20, 64)).astype(np.uint16)
    return np.concatenate([rows, narrow])


def _encode(values: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    image = Image.fromarray(values) if mode is None else Image.fromarray(values, mode=mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def png16() -> bytes:
    data = _encode(_sixteen_bit_grey(), "PNG")
    assert data[24] == 16 and data[25] == 0  # IHDR: bit depth 16, colour type 0 (grey)
    return data


def _browser_view(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8: the file's 16-bit values, read by OpenCV, reduced to their high byte."""
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    grey = (raw >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def test_load_image_shows_16_bit_grey_as_the_browser(png16) -> None:
    expected = _browser_view(png16)
    assert np.array_equal(np.asarray(load_image(png16)), expected)
    # neither clipped (PIL's convert) nor stretched from min to max (the backend's old rule)
    narrow = expected[20:, :, 0]
    assert 3 <= narrow.min() and narrow.max() <= 15


def test_backend_decodes_16_bit_grey_by_the_same_rule(png16) -> None:
    loaded = decode_image(png16, Settings(), "scan.png")
    assert np.array_equal(loaded.array, _browser_view(png16))


def test_image_processor_sees_what_the_annotator_sees(png16) -> None:
    """Pixel values of the 16-bit file equal those of the 8-bit image a browser shows."""
    processor = CLIPSegImageProcessor(size={"height": 32, "width": 32})
    shown = Image.fromarray(_browser_view(png16))
    assert np.array_equal(
        processor(png16, return_tensors="np")["pixel_values"],
        processor(shown, return_tensors="np")["pixel_values"],
    )


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "TIFF"), ("I;16B", "TIFF"), ("I;16", "PNG")])
def test_every_16_bit_layout_follows_the_rule(mode, fmt) -> None:
    values = _sixteen_bit_grey()
    image = Image.frombytes(
        mode, values.shape[::-1], values.astype(">u2" if mode.endswith("B") else "<u2").tobytes()
    )
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    expected = np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(np.asarray(load_image(buf.getvalue())), expected)
    assert np.array_equal(decode_image(buf.getvalue(), Settings()).array, expected)


def test_32_bit_containers_and_float_grey() -> None:
    values = _sixteen_bit_grey().astype(np.int32)
    as_i = Image.fromarray(values, mode="I")
    expected = np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(np.asarray(image_to_rgb(as_i)), expected)
    with pytest.raises(ValueError, match="outside 16 bits"):
        image_to_rgb(Image.fromarray(values * 4, mode="I"))
    unit = np.linspace(0, 1, 64 * 40, dtype=np.float32).reshape(40, 64)
    grey = np.round(unit.astype(np.float64) * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(image_to_rgb(Image.fromarray(unit, mode="F")))[..., 0], grey)
    with pytest.raises(ValueError, match="neither intensities"):
        image_to_rgb(Image.fromarray(unit * 1000, mode="F"))
    with pytest.raises(ImageError, match="outside 16 bits"):
        decode_image(_encode(values * 4, "TIFF", mode="I"), Settings())


def test_8_bit_modes_are_unchanged() -> None:
    """The rule touches only wide grey: 8-bit grey, RGB and alpha convert as before."""
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    assert np.array_equal(np.asarray(image_to_rgb(Image.fromarray(grey)))[..., 1], grey)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    alpha = rgba[..., 3:4] / 255
    white = np.round(alpha * rgba[..., :3] + (1 - alpha) * 255)
    got = np.asarray(image_to_rgb(Image.fromarray(rgba))).astype(int)
    assert np.abs(got - white).max() <= 1  # PIL's integer compositing
