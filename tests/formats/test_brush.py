"""Label Studio brush RLE: parity with label_studio_sdk's mask2rle / decode_rle, exact round trips,
and the validation of bad masks and malformed streams."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter.brush import decode_rle as sdk_decode_rle
from label_studio_sdk.converter.brush import mask2rle as sdk_mask2rle

from backend.formats.brush import decode_brush_rle, encode_brush_rle


def sdk_alpha(rle: list[int], height: int, width: int) -> np.ndarray:
    return sdk_decode_rle(rle).reshape(height, width, 4)[:, :, 3]


def clipseg_like(height: int, width: int, seed: int = 0, grid: int = 22) -> np.ndarray:
    """A coarse random field upsampled bilinearly and thresholded: blobs like CLIPSeg's."""
    field = np.random.default_rng(seed).normal(size=(grid, grid)).astype(np.float32)
    up = cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)
    return ((up > 0.3) * 255).astype(np.uint8)


def assert_parity(mask: np.ndarray) -> None:
    ours = encode_brush_rle(mask)
    theirs = sdk_mask2rle(mask)
    assert ours == theirs
    assert all(type(v) is int for v in ours)  # LS validates with isinstance(v, int)
    assert np.array_equal(decode_brush_rle(theirs, *mask.shape), mask)
    assert np.array_equal(sdk_alpha(ours, *mask.shape), mask)


EDGE_CASES = {
    "1x1 empty": np.zeros((1, 1), np.uint8),
    "1x1 full": np.full((1, 1), 255, np.uint8),
    "empty odd": np.zeros((7, 13), np.uint8),
    "full odd": np.full((13, 7), 255, np.uint8),
    # pixel runs of 70,000 -> 280,000 values: the 16-bit field splits them into 65,536-chunks
    "long runs": np.concatenate(
        [np.zeros((1, 70000), np.uint8), np.full((1, 70000), 255, np.uint8)], axis=1
    ),
    # exactly 65,536 values (16,384 pixels) and one pixel more
    "chunk edge": np.concatenate(
        [np.full((1, 16384), 255, np.uint8), np.zeros((1, 16385), np.uint8)], axis=1
    ),
    "noise": (np.random.default_rng(1).random((37, 41)) > 0.5).astype(np.uint8) * 255,
    "blobs": clipseg_like(301, 257),
    "one pixel": np.pad(np.full((1, 1), 255, np.uint8), ((5, 6), (7, 8))),
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_parity_with_sdk_on_edge_cases(name: str) -> None:
    assert_parity(EDGE_CASES[name])


def test_bool_mask_encodes_as_0_255() -> None:
    mask = clipseg_like(64, 48, seed=3) > 0
    assert encode_brush_rle(mask) == sdk_mask2rle(mask.astype(np.uint8) * 255)
    decoded = decode_brush_rle(encode_brush_rle(mask), 64, 48)
    assert decoded.dtype == np.uint8 and set(np.unique(decoded)) <= {0, 255}
    assert np.array_equal(decoded > 0, mask)


def test_non_contiguous_mask_encodes_in_row_major_order() -> None:
    mask = np.asfortranarray(clipseg_like(50, 70, seed=4))
    assert encode_brush_rle(mask) == sdk_mask2rle(np.ascontiguousarray(mask))
    view = clipseg_like(100, 100, seed=5)[::2, 1::3]
    assert encode_brush_rle(view) == sdk_mask2rle(np.ascontiguousarray(view))


@st.composite
def masks(draw) -> np.ndarray:
    height = draw(st.integers(1, 40))
    width = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["noise", "runs", "blobs"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return (rng.random((height, width)) < draw(st.floats(0, 1))).astype(np.uint8) * 255
    if kind == "runs":  # long runs of random lengths, row-major
        flat = np.zeros(height * width, np.uint8)
        cuts = np.sort(rng.integers(0, flat.size + 1, size=rng.integers(0, 6)))
        for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
            flat[a:b] = 255 * (k % 2)
        return flat.reshape(height, width)
    return clipseg_like(height, width, seed=seed % 1000, grid=draw(st.integers(2, 8)))


@settings(deadline=None, max_examples=60)
@given(masks())
def test_property_parity_and_round_trip(mask: np.ndarray) -> None:
    assert_parity(mask)


# ---------------------------------------------------------------- a stream of another encoder


def reference_pack(values: list[int], word_size: int, rle_sizes: list[int], seed: int) -> list[int]:
    """A plain bit-string encoder of the thi.ng rle-pack format with any word and field sizes,
    mixing literal groups (several words) and runs, as the Label Studio editor's encoder does."""
    rng = np.random.default_rng(seed)
    bits = [f"{len(values):032b}", f"{word_size - 1:05b}"]
    bits += [f"{s - 1:04b}" for s in rle_sizes]
    i = 0
    while i < len(values):
        j = i + 1
        while j < len(values) and values[j] == values[i]:
            j += 1
        idx = int(rng.integers(0, 4))
        max_count = 2 ** rle_sizes[idx]
        if j - i >= 2 and rng.random() < 0.7:  # a run
            n = min(j - i, max_count)
            bits += ["1", f"{idx:02b}", f"{n - 1:0{rle_sizes[idx]}b}", f"{values[i]:0{word_size}b}"]
        else:  # a literal group of up to max_count words
            n = int(min(rng.integers(1, 5), max_count, len(values) - i))
            bits += ["0", f"{idx:02b}", f"{n - 1:0{rle_sizes[idx]}b}"]
            bits += [f"{v:0{word_size}b}" for v in values[i : i + n]]
        i += n
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[k : k + 8], 2) for k in range(0, len(stream), 8)]


@settings(deadline=None, max_examples=40)
@given(
    masks(),
    st.integers(8, 12),
    st.lists(st.integers(1, 16), min_size=4, max_size=4),
    st.integers(0, 1000),
)
def test_decodes_literal_groups_and_other_sizes(mask, word_size, rle_sizes, seed) -> None:
    values = np.repeat(mask.ravel(), 4).tolist()
    rle = reference_pack(values, word_size, rle_sizes, seed)
    assert np.array_equal(sdk_alpha(rle, *mask.shape), mask)  # the oracle agrees on the stream
    assert np.array_equal(decode_brush_rle(rle, *mask.shape), mask)


def test_decode_keeps_soft_alpha_from_the_editor() -> None:
    alpha = np.array([[0, 17, 255], [128, 128, 3]], np.uint8)
    rgba = np.stack([alpha] * 4, axis=-1)
    rgba[..., :3] = 9  # colour channels differ from alpha: only alpha is returned
    rle = reference_pack(rgba.ravel().tolist(), 8, [3, 4, 8, 16], seed=0)
    assert np.array_equal(decode_brush_rle(rle, 2, 3), alpha)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((2, 3, 4), np.uint8), "2-D"),
        (np.zeros(5, np.uint8), "2-D"),
        (np.zeros((3, 3), np.float32), "dtype float32"),
        (np.zeros((3, 3), np.int64), "dtype int64"),
        (np.ones((3, 3), np.uint8), "only 0 and 255"),
        ([[0, 255]], "numpy array"),
    ],
)
def test_encode_rejects_bad_masks(mask, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_brush_rle(mask)


def test_decode_rejects_size_mismatch() -> None:
    rle = encode_brush_rle(np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="holds 80 values but a 5 x 5 RGBA image needs 100"):
        decode_brush_rle(rle, 5, 5)
    with pytest.raises(ValueError, match="do not match"):
        decode_brush_rle(rle, 4, 4)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ([], "shorter than its 7-byte header"),
        ([0, 0, 1], "shorter than its 7-byte header"),
        ([0, 0, 0, 80, 300, 0, 0, 0], r"bytes \(0..255\)"),
        ([0, 0, 0, 80, -1, 0, 0, 0], r"bytes \(0..255\)"),
        ([0.5] * 8, "integers 0..255"),
        ([[1, 2], [3, 4]], "flat list"),
        ("abc", "flat list"),
    ],
)
def test_decode_rejects_malformed_bytes(rle, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_brush_rle(rle, 4, 5)


def test_decode_rejects_truncated_and_overlong_streams() -> None:
    mask = clipseg_like(60, 50, seed=7)
    rle = encode_brush_rle(mask)
    with pytest.raises(ValueError, match="truncated"):
        decode_brush_rle(rle[: len(rle) // 2], 60, 50)
    # a header claiming fewer values than the codes hold: a run goes past the end
    head = (60 * 50 * 4 - 4).to_bytes(4, "big")
    with pytest.raises(ValueError, match="more than the"):
        decode_brush_rle(list(head) + rle[4:], 1, 60 * 50 - 1)


def test_decode_rejects_words_above_a_byte() -> None:
    values = [300] * 8  # 2 pixels, 9-bit words
    rle = reference_pack(values, 9, [3, 4, 8, 16], seed=0)
    with pytest.raises(ValueError, match="above 255"):
        decode_brush_rle(rle, 1, 2)
