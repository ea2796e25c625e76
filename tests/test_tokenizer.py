"""Parity of clipseg's CLIPTokenizer with transformers' on the real CLIP vocabulary."""

from __future__ import annotations

import json
import logging
import unicodedata

import numpy as np
import pytest
import torch
from clip_vocab import clip_vocab_fixture  # noqa: F401  (the session fixture clip_vocab_dir)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipseg.tokenization import CLIPTokenizer

transformers = pytest.importorskip("transformers", reason="transformers is the parity reference")

HAND_WRITTEN = [
    "",
    " ",
    "a photo of a cat",
    "A Photo Of A CAT",
    "a photo of a cat.",
    "red circle",
    "the dog's ball",
    "it's, they're, we've, I'm, you'll, he'd, don't",
    "IT'S THEY'RE WE'VE I'M YOU'LL HE'D DON'T",
    "'s 't 're 've 'm 'll 'd",
    "''s '''t rock'n'roll o'clock",
    "hello\tworld\nnew  line\r\n\r\n  spaces   ",
    "\t\t\n\n   ",
    "  leading and trailing  ",
    "numbers 123 4567 3.14159 1,000,000 0x1F",
    "2024-01-01T12:00:00Z",
    "Café naïve façade résumé über Ærøskøbing",
    "Cafe\u0301 nai\u0308ve",  # combining characters: NFC must compose them
    "e\u0301\u0301\u0301 a\u030a",
    "ﬁnancial ﬂower ＡＢＣ ①②③",  # compatibility forms (NFC keeps them)
    "日本語のテキスト 中文字符 한국어",
    "Привет, мир! Ёлка ЁЛКА",
    "Γειά σου κόσμε ΣΊΣΥΦΟΣ",
    "مرحبا بالعالم שלום עולם",
    "हिन्दी ภาษาไทย",
    "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
    "🐱 cat 🐶dog",
    "punctuation!!! ??? ... --- ;;; :: (()) [[]] {{}} <<>>",
    "quotes \"double\" 'single' `back` «guillemets» „German“",
    "a/b\\c|d@e#f$g%h^i&j*k+l=m~n",
    "@user #hashtag http://example.com/path?q=1&r=2",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|startoftext|>a photo<|endoftext|>",
    "<|STARTOFTEXT|> upper specials <|ENDOFTEXT|>",
    "x <|endoftext|> y <|endoftext|><|endoftext|>",
    "MiXeD CaSe WoRdS aNd ÀÉÎÕÜ",
    "İstanbul ß ẞ Σ ς",
    "\u00a0non\u00a0breaking\u2003em\u2009thin\u200bzero",
    "soft\u00adhyphen and\u200djoiner",
    "tab\tseparated\tvalues",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "1 2 3 4 5 6 7 8 9 0",
    "\x00\x01\x07 control \x1b[31m chars",
    "surrogate-free \U0001f600 astral \U00020000 plane",
    "word " * 100,  # longer than 77 tokens
    "🐱" * 80,
    ", ".join(str(i) for i in range(60)),
]
WORDS = ["cat", "dog", "a", "the", "photo", "red", "blue", "circle", "star", "Éclair", "水", "кот"]
SEPS = [" ", "  ", "\t", "\n", ", ", "'s ", "! ", "-", "... "]
GENERATED = [
    SEPS[i % len(SEPS)].join(WORDS[(i + k) % len(WORDS)] for k in range(1 + i % 7))
    for i in range(120)
]
ALL_STRINGS = HAND_WRITTEN + GENERATED
assert len(ALL_STRINGS) >= 160


@pytest.fixture(scope="module")
def ours(clip_vocab_dir):
    return CLIPTokenizer.from_pretrained(clip_vocab_dir)


def _reference_classes():
    classes = [transformers.CLIPTokenizer]
    fast = getattr(transformers, "CLIPTokenizerFast", None)  # absent in transformers 5
    if fast is not None and fast is not transformers.CLIPTokenizer:
        classes.append(fast)
    return classes


@pytest.fixture(scope="module", params=_reference_classes(), ids=lambda c: c.__name__)
def ref(request, clip_vocab_dir):
    return request.param.from_pretrained(clip_vocab_dir)


def _as_lists(enc):
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in enc.items()}


def test_known_value(ours):
    assert ours("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ours.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (49406, 49407, 49407)
    assert ours.vocab_size == 49408
    assert ours.model_max_length == 77


@pytest.mark.parametrize("text", ALL_STRINGS, ids=range(len(ALL_STRINGS)))
def test_single_string_parity(ours, ref, text):
    expected = dict(ref(text, truncation=True))
    assert dict(ours(text, truncation=True)) == expected
    assert dict(ours(text)) == expected  # our default truncates too
    assert ours.encode(text) == ref.encode(text, truncation=True)
    ids = expected["input_ids"]
    assert ours.decode(ids) == ref.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    assert ours.tokenize(text) == ref.tokenize(text)


def test_no_truncation_matches_reference_default(ours, ref, caplog):
    text = "word " * 100
    with caplog.at_level(logging.WARNING, logger="clipseg.processing"):
        got = ours(text, truncation=False)
    assert dict(got) == dict(ref(text))
    assert len(got["input_ids"]) == 102
    assert "longer than the specified maximum" in caplog.text


def test_truncation_keeps_eos_and_warns(ours, ref, caplog):
    text = "word " * 100
    with caplog.at_level(logging.WARNING, logger="clipseg.processing"):
        ids = ours(text)["input_ids"]
    assert len(ids) == 77 and ids[0] == ours.bos_token_id and ids[-1] == ours.eos_token_id
    assert "truncated" in caplog.text
    for max_length in (2, 3, 5, 10, 40):
        assert dict(ours(text, truncation=True, max_length=max_length)) == dict(
            ref(text, truncation=True, max_length=max_length)
        )


@pytest.mark.parametrize("padding", [True, "longest", "max_length"])
@pytest.mark.parametrize("return_tensors", [None, "np", "pt"])
def test_batch_parity(ours, ref, padding, return_tensors):
    batch = HAND_WRITTEN
    kwargs = dict(padding=padding, truncation=True, return_tensors=return_tensors)
    got, expected = ours(batch, **kwargs), ref(batch, **kwargs)
    assert set(got) == {"input_ids", "attention_mask"}
    for key in ("input_ids", "attention_mask"):
        if return_tensors == "pt":
            assert isinstance(got[key], torch.Tensor) and got[key].dtype == torch.long
        if return_tensors == "np":
            assert isinstance(got[key], np.ndarray) and got[key].dtype == np.int64
    assert _as_lists(got) == _as_lists(expected)
    width = len(_as_lists(got)["input_ids"][0])
    assert width == 77  # the batch holds over-long strings
    assert ours.batch_decode(got["input_ids"], skip_special_tokens=True) == ref.batch_decode(
        expected["input_ids"], skip_special_tokens=True
    )


def test_short_batch_padding_uses_eos(ours, ref):
    batch = ["a", "a photo of a cat", ""]
    got = ours(batch, padding=True, return_tensors="pt")
    assert _as_lists(got) == _as_lists(ref(batch, padding=True, return_tensors="pt"))
    assert got["input_ids"].shape == (3, 7)
    assert got["input_ids"][0].tolist() == [49406, 320, 49407, 49407, 49407, 49407, 49407]
    assert got["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0]
    mx = ours(batch, padding="max_length", max_length=12, return_tensors="np")
    assert _as_lists(mx) == _as_lists(
        ref(batch, padding="max_length", max_length=12, return_tensors="np")
    )
    assert ours("a cat", return_tensors="pt")["input_ids"].shape == (1, 4)


@pytest.mark.parametrize("return_tensors", [None, "pt"])
@pytest.mark.parametrize("padding", [True, "max_length"])
def test_padding_side_matches_reference(ours, ref, padding, return_tensors):
    batch = ["a", "a photo of a cat", ""]
    length = {"max_length": 9} if padding == "max_length" else {}
    for side in ("left", "right"):
        got = ours(
            batch, padding=padding, padding_side=side, return_tensors=return_tensors, **length
        )
        expected = ref(
            batch, padding=padding, padding_side=side, return_tensors=return_tensors, **length
        )
        assert _as_lists(got) == _as_lists(expected), side
    mask = ours(batch, padding=True, padding_side="left")["attention_mask"][0]
    assert mask == [0] * 4 + [1] * 3


def test_padding_side_from_tokenizer_config(clip_vocab_dir, ref, tmp_path):
    """A tokenizer_config.json's padding_side is the default, as in transformers, and is saved."""
    for f in clip_vocab_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    left = CLIPTokenizer.from_pretrained(tmp_path)
    reference = type(ref).from_pretrained(tmp_path)
    assert left.padding_side == reference.padding_side == "left"
    batch = ["a", "a photo of a cat"]
    assert _as_lists(left(batch, padding=True)) == _as_lists(reference(batch, padding=True))
    left.save_pretrained(tmp_path / "saved")
    assert CLIPTokenizer.from_pretrained(tmp_path / "saved").padding_side == "left"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"return_length": True},
        {"return_token_type_ids": True},
        {"return_special_tokens_mask": True},
        {"text_target": "a dog"},
        {"is_split_into_words": True},
    ],
    ids=lambda k: next(iter(k)),
)
def test_unimplemented_arguments_raise_instead_of_being_ignored(ours, ref, kwargs):
    name = next(iter(kwargs))
    ref(["a cat"], **kwargs)  # transformers implements it: ignoring it would change the result
    with pytest.raises(TypeError, match=name):
        ours(["a cat"], **kwargs)
    with pytest.raises(TypeError, match="positional"):
        ours("a cat", "a dog")  # a text pair: CLIP encodes single texts
    with pytest.raises(TypeError, match="spaces_between_special_tokens"):
        ours.decode([320, 2368], spaces_between_special_tokens=False)
    with pytest.raises(ValueError, match="padding_side"):
        ours("a cat", padding_side="up")


def test_ragged_batch_to_tensor_raises(ours):
    with pytest.raises(ValueError, match="padding=True"):
        ours(["a", "a photo of a cat"], return_tensors="pt")


def test_bad_text_raises(ours):
    with pytest.raises(ValueError, match="string"):
        ours(123)
    with pytest.raises(ValueError, match="non-string"):
        ours(["a", None])


def test_nfc_normalization(ours):
    decomposed = "Cafe\u0301"
    assert unicodedata.normalize("NFC", decomposed) != decomposed
    assert ours.encode(decomposed) == ours.encode("Café")


def test_save_and_reload_roundtrip(ours, ref, tmp_path):
    ours.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    reference_again = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    for text in HAND_WRITTEN:
        assert again.encode(text) == ours.encode(text)
        assert again.encode(text) == reference_again.encode(text, truncation=True)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == 77


def test_tokenizer_json_loads_through_same_path(ours, tmp_path):
    (tmp_path / "tokenizer.json").write_text(ours.backend_tokenizer.to_str())
    from_json = CLIPTokenizer.from_pretrained(tmp_path)
    for text in HAND_WRITTEN:
        assert from_json.encode(text) == ours.encode(text)


def test_minimal_directory_and_special_ids_by_name(tmp_path):
    """A tiny vocabulary (like the demo's): special ids are looked up by name."""
    from tokenizers import Tokenizer, models, trainers
    from tokenizers import pre_tokenizers as pt

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pt.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pt.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
    )
    tok.train_from_iterator(["red circle", "blue square", "green triangle"] * 10, trainer)
    tok.model.save(str(tmp_path))
    small = CLIPTokenizer.from_pretrained(tmp_path)
    assert small.bos_token_id == 0 and small.eos_token_id == 1 and small.pad_token_id == 1
    ids = small.encode("red circle")
    assert ids[0] == 0 and ids[-1] == 1
    assert small.decode(ids, skip_special_tokens=True) == "red circle"
    assert small(["red", "blue square"], padding=True)["input_ids"][0][-1] == 1
    reference = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    for text in ["red circle", "Blue  SQUARE", "green triangle!", "unknown words 123"]:
        assert small.encode(text) == reference.encode(text)


def test_missing_special_token_raises(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        CLIPTokenizer.from_pretrained(tmp_path)


_TEXT_ALPHABET = st.characters(
    codec="utf-8",
    categories=("L", "M", "N", "P", "S", "Z", "Cc"),
)
_PIECES = st.sampled_from(
    [
        "'s",
        "'t",
        "'re",
        "'ve",
        "'m",
        "'ll",
        "'d",
        " ",
        "  ",
        "\t",
        "\n",
        "<|endoftext|>",
        "é",
        "e\u0301",
    ]
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(st.text(_TEXT_ALPHABET, max_size=12), _PIECES), max_size=12).map("".join))
def test_hypothesis_parity(ours, ref, text):
    assert dict(ours(text, truncation=True)) == dict(ref(text, truncation=True))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(_TEXT_ALPHABET, max_size=120), min_size=1, max_size=5))
def test_hypothesis_batch_parity(ours, ref, texts):
    kwargs = dict(padding=True, truncation=True, return_tensors="np")
    assert _as_lists(ours(texts, **kwargs)) == _as_lists(ref(texts, **kwargs))
