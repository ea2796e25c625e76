"""Preprocessing for CLIPSeg: the CLIP tokenizer, the image processor and the processor that
combines them, with the API (and the numbers) of `transformers`' `CLIPTokenizer`,
`ViTImageProcessorPil` and `CLIPSegProcessor`.

Nothing here imports `transformers`. The tokenizer runs on the Rust `tokenizers` library with the
same pipeline `transformers` 5 builds for CLIP (NFC, whitespace collapsed, lower-cased, CLIP's split
pattern, byte-level BPE with the ``</w>`` end-of-word suffix, then
``<|startoftext|> ... <|endoftext|>``).
The image processor resizes with PIL exactly as `transformers`' PIL backend does.

Deliberate differences from `transformers` (each documented where it happens):

- ``truncation=None`` (the default) truncates to ``model_max_length`` (77) with a logged warning;
  `transformers` then returns over-long sequences that the text model cannot embed (it has 77
  position embeddings). Pass ``truncation=False`` for the `transformers` behaviour.
- without a tokenizer_config.json, ``model_max_length`` is 77 (CLIP's context), not "unlimited".
- the image processor applies EXIF orientation (`transformers` ignores it) and always converts to
  RGB (alpha composited onto white, exactly as `transformers`' ``do_convert_rgb=True``).
- a float image with values in [0, 1] holds intensities: it is rescaled once, whatever
  ``do_rescale`` says (`transformers` multiplies it by ``rescale_factor`` a second time unless
  ``do_rescale=False``, and warns about "already rescaled images"). Float images are quantized to
  8 bits on loading (PIL resizes uint8), also with ``do_resize=False``.
- keyword arguments that neither the tokenizer nor the image processor implements raise TypeError
  (`transformers` ignores some of them).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE

logger = logging.getLogger(__name__)

__all__ = [
    "BatchEncoding",
    "CLIPTokenizer",
    "CLIPSegImageProcessor",
    "CLIPSegProcessor",
    "load_image",
    "tensor_to_numpy",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
]

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"  # transformers 5 nests the image settings here
# threads that preprocess one batch of images, at most (fewer when torch is given fewer)
_MAX_PREPROCESS_THREADS = 8

CLIP_CONTEXT_LENGTH = 77
# CLIP's split pattern, as `transformers` writes it (its special tokens first so they stay whole).
CLIP_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|"""
    r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
END_OF_WORD_SUFFIX = "</w>"

IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]

# Order in which `transformers` registers the named special tokens; when two names share a
# content (eos, unk and pad are all <|endoftext|>), the last spec wins, as in `tokenizers`.
_SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class BatchEncoding(dict):
    """A dict with attribute access (``enc.input_ids``) and ``.to(...)`` for tensors."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def to(self, *args: Any, **kwargs: Any) -> BatchEncoding:
        """Move and cast the tensors in place, as `transformers`' ``BatchFeature.to``; returns self.

        The arguments are those of ``torch.Tensor.to`` (``"cuda"``, ``torch.float16``,
        ``("cuda", torch.float16)``, ``device=``, ``dtype=``, ``non_blocking=``). Floating-point
        tensors (pixel values) get all of them; the others (token ids, attention masks) only move
        to the device, never change dtype.
        """
        device = _device_of_to_args(args, kwargs)
        non_blocking = kwargs.get("non_blocking", False)

        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.to(*args, **kwargs)
            if isinstance(value, torch.Tensor) and device is not None:
                return value.to(device=device, non_blocking=non_blocking)
            if isinstance(value, (list, tuple)):
                return type(value)(move(v) for v in value)
            return value

        for key in list(self):
            self[key] = move(self[key])
        return self


def _device_of_to_args(args: tuple, kwargs: dict) -> Any:
    """The device in ``.to(*args, **kwargs)`` arguments, or None when they only name a dtype."""
    if kwargs.get("device") is not None or not args:
        return kwargs.get("device")
    first = args[0]
    if isinstance(first, torch.dtype):
        return None
    if isinstance(first, (str, int, torch.device)):
        return first
    raise ValueError(
        f"BatchEncoding.to got {first!r}; pass a device (e.g. 'cuda'), a torch.dtype, or both"
    )


def _local_dir(name_or_path: str | os.PathLike) -> Path:
    """A directory as is; anything else ("demo", a hub id) through `clipseg.weights`."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from clipseg.weights import resolve_checkpoint  # lazy: weights may pull optional deps

    return Path(resolve_checkpoint(str(name_or_path)))


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _token_content(spec: str | Mapping | AddedToken | None) -> str | None:
    if spec is None:
        return None
    if isinstance(spec, AddedToken):
        return spec.content
    if isinstance(spec, Mapping):
        return str(spec["content"])
    return str(spec)


def _to_added_token(spec: str | Mapping | AddedToken) -> AddedToken:
    """A special token as `transformers` registers it: a plain string is not normalized; a dict
    (tokenizer_config.json's ``{"__type": "AddedToken", ...}``) keeps its own flags."""
    if isinstance(spec, AddedToken):
        return spec
    if isinstance(spec, Mapping):
        return AddedToken(
            str(spec["content"]),
            single_word=bool(spec.get("single_word", False)),
            lstrip=bool(spec.get("lstrip", False)),
            rstrip=bool(spec.get("rstrip", False)),
            normalized=bool(spec.get("normalized", False)),
            special=bool(spec.get("special", True)),
        )
    return AddedToken(str(spec), special=True, normalized=False)


def _parse_merges(merges: str | os.PathLike | Iterable) -> list[tuple[str, str]]:
    if isinstance(merges, (str, os.PathLike)):
        with open(merges, encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [ln for ln in lines if ln.strip() and not ln.startswith("#version")]
    out = []
    for m in merges:
        pair = m.split() if isinstance(m, str) else list(m)
        if len(pair) != 2:
            raise ValueError(f"A BPE merge must be two symbols, got {m!r}")
        out.append((pair[0], pair[1]))
    return out


class CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer (the same pipeline as `transformers`' `CLIPTokenizer`).

    Args:
        vocab: token -> id dict, or the path of a vocab.json.
        merges: BPE merges ("a b" strings or pairs), or the path of a merges.txt.
        unk_token, bos_token, eos_token, pad_token: the special tokens; their ids are looked up in
            ``vocab`` by name (a small demo vocabulary puts them anywhere). Each may be a string or
            a tokenizer_config.json-style dict (``content``, ``normalized``, ...).
        model_max_length: the longest sequence the text model takes (CLIP: 77).
        added_tokens: extra ``id -> spec`` entries (tokenizer_config.json's
            ``added_tokens_decoder``), registered before the named special tokens.
        padding_side: "right" (default) or "left": where padding goes (per call too).
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab: Mapping[str, int] | str | os.PathLike,
        merges: Iterable | str | os.PathLike,
        unk_token: str | Mapping = "<|endoftext|>",
        bos_token: str | Mapping = "<|startoftext|>",
        eos_token: str | Mapping = "<|endoftext|>",
        pad_token: str | Mapping = "<|endoftext|>",
        model_max_length: int = CLIP_CONTEXT_LENGTH,
        added_tokens: Mapping[int | str, str | Mapping] | None = None,
        padding_side: str = "right",
        **init_kwargs: Any,
    ) -> None:
        if isinstance(vocab, (str, os.PathLike)):
            vocab = _read_json(Path(vocab))
        self._vocab: dict[str, int] = {str(k): int(v) for k, v in dict(vocab).items()}
        self._merges = _parse_merges(merges)
        self._specs = {
            "unk_token": unk_token,
            "bos_token": bos_token,
            "eos_token": eos_token,
            "pad_token": pad_token,
        }
        self._specs.update(
            {k: init_kwargs.pop(k) for k in _SPECIAL_TOKEN_NAMES if init_kwargs.get(k) is not None}
        )
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            content = _token_content(self._specs[name])
            if content not in self._vocab:
                raise ValueError(
                    f"The {name} {content!r} is not in the vocabulary; a CLIP vocabulary must hold "
                    "<|startoftext|> and <|endoftext|> (add them to vocab.json)."
                )
        self.model_max_length = int(model_max_length)
        self.padding_side = _check_padding_side(padding_side)
        self._added_tokens = {int(k): v for k, v in (added_tokens or {}).items()}
        self.init_kwargs = init_kwargs

        tok = Tokenizer(
            BPE(
                vocab=self._vocab,
                merges=self._merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix=END_OF_WORD_SUFFIX,
                fuse_unk=False,
                unk_token=self.unk_token,
            )
        )
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        specials = [_to_added_token(s) for _, s in sorted(self._added_tokens.items())]
        specials += [
            _to_added_token(self._specs[n]) for n in _SPECIAL_TOKEN_NAMES if n in self._specs
        ]
        tok.add_special_tokens(specials)
        tok.post_processor = processors.RobertaProcessing(
            (self.eos_token, self.eos_token_id), (self.bos_token, self.bos_token_id), False, False
        )
        self._tokenizer = tok

    # -- loading and saving ----------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> CLIPTokenizer:
        """Load from a directory with vocab.json + merges.txt (or a tokenizer.json), plus the
        optional tokenizer_config.json and special_tokens_map.json; "demo" and hub ids resolve
        through `clipseg.weights.resolve_checkpoint`."""
        d = _local_dir(name_or_path)
        config: dict[str, Any] = {}
        if (d / SPECIAL_TOKENS_MAP_FILE).is_file():
            config.update(_read_json(d / SPECIAL_TOKENS_MAP_FILE))
        if (d / TOKENIZER_CONFIG_FILE).is_file():
            tc = _read_json(d / TOKENIZER_CONFIG_FILE)
            # special_tokens_map.json wins over tokenizer_config.json, as in transformers
            config = {**tc, **config}
        if (d / VOCAB_FILE).is_file() and (d / MERGES_FILE).is_file():
            vocab: Any = d / VOCAB_FILE
            merges: Any = d / MERGES_FILE
        elif (d / TOKENIZER_FILE).is_file():
            model = _read_json(d / TOKENIZER_FILE)["model"]
            if model.get("type") != "BPE":
                raise ValueError(f"{d / TOKENIZER_FILE} holds a {model.get('type')} model, not BPE")
            vocab, merges = model["vocab"], model["merges"]
            tj_added = {t["id"]: t for t in _read_json(d / TOKENIZER_FILE).get("added_tokens", [])}
            config.setdefault("added_tokens_decoder", tj_added)
            by_content = {t["content"]: t for t in tj_added.values()}
            defaults = {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
            for name, content in defaults.items():  # flags as tokenizer.json has them
                if config.get(name) is None and content in by_content:
                    config[name] = by_content[content]
        else:
            raise FileNotFoundError(
                f"No tokenizer files in {d}: expected {VOCAB_FILE} + {MERGES_FILE} "
                f"or {TOKENIZER_FILE}"
            )
        init: dict[str, Any] = {
            k: config[k] for k in _SPECIAL_TOKEN_NAMES if config.get(k) is not None
        }
        mml = config.get("model_max_length")
        init["model_max_length"] = (
            int(mml) if isinstance(mml, (int, float)) and mml < 1e6 else CLIP_CONTEXT_LENGTH
        )
        if config.get("added_tokens_decoder"):
            init["added_tokens"] = config["added_tokens_decoder"]
        if config.get("padding_side") is not None:
            init["padding_side"] = config["padding_side"]
        init.update(kwargs)
        return cls(vocab, merges, **init)

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[Path]:
        """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json."""
        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / VOCAB_FILE).write_text(json.dumps(self._vocab, ensure_ascii=False), encoding="utf-8")
        with open(d / MERGES_FILE, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            f.writelines(f"{a} {b}\n" for a, b in self._merges)

        def spec_json(spec: Any) -> Any:
            if isinstance(spec, AddedToken):
                return {
                    "content": spec.content,
                    "lstrip": spec.lstrip,
                    "normalized": spec.normalized,
                    "rstrip": spec.rstrip,
                    "single_word": spec.single_word,
                }
            return dict(spec) if isinstance(spec, Mapping) else spec

        specials = {k: spec_json(v) for k, v in self._specs.items()}
        config = {
            **{k: v for k, v in self.init_kwargs.items() if _is_jsonable(v)},
            **specials,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "tokenizer_class": "CLIPTokenizer",
        }
        if self._added_tokens:
            config["added_tokens_decoder"] = {
                str(k): spec_json(v) for k, v in self._added_tokens.items()
            }
        (d / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False))
        (d / SPECIAL_TOKENS_MAP_FILE).write_text(json.dumps(specials, indent=2, ensure_ascii=False))
        return [
            d / VOCAB_FILE,
            d / MERGES_FILE,
            d / TOKENIZER_CONFIG_FILE,
            d / SPECIAL_TOKENS_MAP_FILE,
        ]

    # -- vocabulary --------------------------------------------------------------------------

    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    bos_token = property(lambda self: _token_content(self._specs["bos_token"]))
    eos_token = property(lambda self: _token_content(self._specs["eos_token"]))
    pad_token = property(lambda self: _token_content(self._specs["pad_token"]))
    unk_token = property(lambda self: _token_content(self._specs["unk_token"]))
    bos_token_id = property(lambda self: self._vocab[self.bos_token])
    eos_token_id = property(lambda self: self._vocab[self.eos_token])
    pad_token_id = property(lambda self: self._vocab[self.pad_token])
    unk_token_id = property(lambda self: self._vocab[self.unk_token])

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({self.bos_token_id, self.eos_token_id, self.pad_token_id, self.unk_token_id})

    def tokenize(self, text: str) -> list[str]:
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            tid = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if tid is None else tid
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, (int, np.integer)):
            return self._tokenizer.id_to_token(int(ids))
        return [self._tokenizer.id_to_token(int(i)) for i in ids]

    # -- encoding ------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | Sequence[str],
        *,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = True,
        add_special_tokens: bool = True,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        **unsupported: Any,
    ) -> BatchEncoding:
        """Tokenize one string or a batch.

        Args:
            text: a string or a sequence of strings (CLIP encodes single texts: no text pairs).
            padding: False / "do_not_pad", True / "longest" (to the batch's longest), or
                "max_length" (to ``max_length``, else ``model_max_length``). Pads with the pad id
                (``<|endoftext|>``) on ``padding_side``; the attention mask is 0 there.
            truncation: True / "longest_first" truncates to ``max_length`` (else
                ``model_max_length``), keeping ``<|endoftext|>`` last; False / "do_not_truncate"
                keeps everything; None (default) truncates like True (see the module docstring).
            max_length: the length for truncation and ``padding="max_length"``.
            return_tensors: "pt" (int64 torch tensors, (B, L)), "np" (int64 arrays) or None
                (lists; a single string gives flat lists).
            return_attention_mask: False leaves ``attention_mask`` out.
            add_special_tokens: False leaves out ``<|startoftext|>`` / ``<|endoftext|>``.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            padding_side: "right" or "left"; None uses ``self.padding_side``.

        Other `transformers` tokenizer arguments (``return_length``, ``return_token_type_ids``,
        ``text_pair``, ...) are not implemented and raise TypeError rather than being ignored.

        Returns:
            BatchEncoding with ``input_ids`` and ``attention_mask``.
        """
        if unsupported:
            raise TypeError(_unexpected_kwargs("CLIPTokenizer", unsupported, TOKENIZER_CALL_KWARGS))
        side = self.padding_side if padding_side is None else _check_padding_side(padding_side)
        batched = not isinstance(text, str)
        texts = _as_text_list(text)
        do_truncate = _truncation_enabled(truncation)
        pad_mode = _padding_mode(padding)
        trunc_len = max_length if max_length is not None else self.model_max_length

        tok = self._tokenizer
        if do_truncate:
            tok.enable_truncation(trunc_len)
        else:
            tok.no_truncation()
        try:
            encodings = tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        finally:
            tok.no_truncation()

        ids = [e.ids for e in encodings]
        n_truncated = sum(1 for e in encodings if e.overflowing)
        if n_truncated and truncation is None:
            logger.warning(
                "%d text(s) longer than %d tokens were truncated (the text model has %d "
                "positions); "
                "pass truncation=True to silence this, or shorten the prompt.",
                n_truncated,
                trunc_len,
                self.model_max_length,
            )
        if not do_truncate:
            longest = max((len(x) for x in ids), default=0)
            if longest > self.model_max_length:
                logger.warning(
                    "Token indices sequence length is longer than the specified maximum sequence "
                    "length for this model (%d > %d). Running this sequence through the model will "
                    "result in indexing errors",
                    longest,
                    self.model_max_length,
                )

        target = None
        if pad_mode == "longest":
            target = max((len(x) for x in ids), default=0)
        elif pad_mode == "max_length":
            target = max_length if max_length is not None else self.model_max_length
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        masks = [[1] * len(x) for x in ids]
        if target is not None:
            masks = [_pad(m, target, 0, side) for m in masks]
            ids = [_pad(x, target, self.pad_token_id, side) for x in ids]

        data: dict[str, Any] = {"input_ids": ids}
        if return_attention_mask is not False:
            data["attention_mask"] = masks
        return BatchEncoding(
            {k: _to_tensor(v, return_tensors, batched, k) for k, v in data.items()}
        )

    def encode(
        self,
        text: str,
        add_special_tokens: bool = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """The ids of one string (with ``<|startoftext|>``/``<|endoftext|>`` unless told not to)."""
        return self(
            text,
            add_special_tokens=add_special_tokens,
            truncation=truncation,
            max_length=max_length,
            return_attention_mask=False,
            **kwargs,
        )["input_ids"]

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **unsupported: Any) -> str:
        """Ids back to text: ``</w>`` becomes a space, the ends are stripped (as transformers).
        Other transformers arguments (``clean_up_tokenization_spaces``, ...) raise TypeError."""
        if unsupported:
            raise TypeError(
                _unexpected_kwargs("CLIPTokenizer.decode", unsupported, ["skip_special_tokens"])
            )
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        elif isinstance(token_ids, np.ndarray):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        text = self._tokenizer.decode(
            [int(i) for i in token_ids], skip_special_tokens=skip_special_tokens
        )
        return text.replace(END_OF_WORD_SUFFIX, " ").strip()

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any
    ) -> list[str]:
        if isinstance(sequences, (torch.Tensor, np.ndarray)):
            sequences = sequences.tolist()
        return [
            self.decode(s, skip_special_tokens=skip_special_tokens, **kwargs) for s in sequences
        ]

    def __repr__(self) -> str:
        return (
            f"CLIPTokenizer(vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, "
            f"bos={self.bos_token!r}:{self.bos_token_id}, "
            f"eos={self.eos_token!r}:{self.eos_token_id})"
        )


TOKENIZER_CALL_KWARGS = (
    "padding",
    "truncation",
    "max_length",
    "return_tensors",
    "return_attention_mask",
    "add_special_tokens",
    "pad_to_multiple_of",
    "padding_side",
)


def _unexpected_kwargs(owner: str, kwargs: Mapping[str, Any], supported: Iterable[str]) -> str:
    """The TypeError message for keyword arguments ``owner`` does not implement."""
    names = ", ".join(repr(k) for k in sorted(kwargs))
    return (
        f"{owner} got unsupported keyword argument(s) {names}; it takes "
        f"{', '.join(supported)}. Remove the argument (it is not implemented here, and ignoring it "
        "would silently change the result)."
    )


def _check_padding_side(side: Any) -> str:
    if side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
    return side


def _pad(row: list[int], length: int, value: int, side: str) -> list[int]:
    """``row`` padded with ``value`` to ``length`` on ``side``."""
    padding = [value] * (length - len(row))
    return padding + row if side == "left" else row + padding


def _is_jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _as_text_list(text: Any) -> list[str]:
    if isinstance(text, str):
        return [text]
    if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
        return list(text)
    raise ValueError(
        "text must be a string or a list/tuple of strings, got "
        f"{type(text).__name__}"
        + (" with non-string items" if isinstance(text, (list, tuple)) else "")
    )


def _truncation_enabled(truncation: bool | str | None) -> bool:
    if truncation is None or truncation is True:
        return True
    if truncation is False or truncation == "do_not_truncate":
        return False
    if truncation in ("longest_first", "only_first"):
        return True
    raise ValueError(
        f"truncation must be True, False, 'longest_first' or 'do_not_truncate', got {truncation!r}"
    )


def _padding_mode(padding: bool | str) -> str | None:
    if padding is True or padding == "longest":
        return "longest"
    if padding is False or padding is None or padding == "do_not_pad":
        return None
    if padding == "max_length":
        return "max_length"
    raise ValueError(
        f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}"
    )


def _to_tensor(rows: list[list[int]], return_tensors: str | None, batched: bool, key: str) -> Any:
    if return_tensors is None:
        return rows if batched else rows[0]
    if return_tensors not in ("pt", "np"):
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
    if len({len(r) for r in rows}) > 1:
        raise ValueError(
            f"Cannot make a tensor of {key} with sequences of different lengths; pass padding=True "
            "(or padding='max_length') to pad the batch."
        )
    arr = np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)
    return torch.from_numpy(arr) if return_tensors == "pt" else arr


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _array_to_pil(arr: np.ndarray, what: str) -> Image.Image:
    """(H, W), (H, W, C) or (C, H, W) with C in 1/3/4 -> PIL (L/RGB/RGBA, uint8)."""
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channels first (a torch tensor's layout)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise ValueError(
            f"{what} must have shape (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; "
            f"got {arr.shape} (a 4-D batch goes to the image processor, not load_image)"
        )
    if arr.size == 0 or 0 in arr.shape:
        raise ValueError(f"{what} is empty (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = _float_to_uint8(arr, what)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.dtype != np.uint8:
            if arr.min() < 0 or arr.max() > 255:
                raise ValueError(
                    f"{what} has dtype {arr.dtype} with values outside [0, 255]; "
                    "scale it to uint8 first"
                )
            arr = arr.astype(np.uint8)
    else:
        raise ValueError(f"{what} has unsupported dtype {arr.dtype}; use uint8, or float in [0, 1]")
    if arr.ndim == 3 and arr.shape[-1] == 4:
        # composite onto white exactly as transformers' convert_to_rgb does for arrays
        alpha = arr[..., 3:4] / 255
        arr = np.round(alpha * arr[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


@functools.lru_cache(maxsize=16)
def _level_table(
    scale: float | None, normalize: tuple[tuple[float, ...], tuple[float, ...]] | None
) -> np.ndarray:
    """(3, 256) float32: what rescaling by ``scale`` and normalizing by (mean, std) make of each
    uint8 level, per channel. The steps are transformers': upcast to float64, scale, down to
    float32, then (x - mean) / std in float32. Each output value depends only on its level and
    channel, so applying the same steps to the 256 levels gives a table that is bitwise what the
    steps give on a whole image, at the cost of one lookup per value (3-4x faster)."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)  # (256, 3): HWC-like
    if scale is not None:
        values = (levels.astype(np.float64) * scale).astype(np.float32)
    else:
        values = levels.astype(np.float32)
    if normalize is not None:
        mean, std = (np.asarray(v, dtype=np.float32) for v in normalize)
        values = (values - mean) / std
    table = np.ascontiguousarray(values.T)
    table.flags.writeable = False  # shared by every call with these settings
    return table


def _is_unit_float(obj: Any) -> bool:
    """Whether ``obj`` is a float array or tensor with every value in [0, 1] (intensities)."""
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point() or obj.numel() == 0:
            return False
        return bool((obj.min() >= 0) & (obj.max() <= 1))
    if isinstance(obj, np.ndarray) and np.issubdtype(obj.dtype, np.floating) and obj.size:
        return bool(obj.min() >= 0.0 and obj.max() <= 1.0)
    return False


def _float_to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    """A float image -> uint8 levels.

    Values in [0, 1] are intensities (times 255, rounded). Otherwise whole numbers in [0, 255] are
    pixel levels already, as `transformers` reads them (equal to the same uint8 image). Anything
    else is refused, as `transformers` refuses it when it resizes (it cannot be made uint8 for PIL).
    """
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.round(arr.astype(np.float64) * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0 and np.allclose(arr, np.round(arr)):
        return np.round(arr).astype(np.uint8)
    raise ValueError(
        f"{what} is a float array with values in [{lo}, {hi}] that are neither intensities in "
        "[0, 1] nor whole pixel levels in [0, 255]; scale it to [0, 1] or round it to uint8 "
        "(transformers refuses such an image too when it resizes)"
    )


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """PIL -> RGB as transformers' convert_to_rgb: any alpha (or palette transparency) is
    composited onto white; other modes go through PIL's convert (16-bit and float modes are
    clipped to [0, 255] by PIL, not rescaled)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a numpy array; bfloat16, which numpy lacks, as float32 (exact)."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def load_image(obj: Any) -> Image.Image:
    """Any image-like input -> an RGB PIL image with EXIF orientation applied.

    Accepts a PIL image (any mode), a numpy array or torch tensor ((H, W), (H, W, 1|3|4) or
    (C, H, W); uint8, bool, or float in [0, 1]), encoded bytes, or a file path. Alpha is composited
    onto white (what transformers does). Raises ValueError naming the problem otherwise.
    """
    if isinstance(obj, Image.Image):
        image = obj
    elif isinstance(obj, torch.Tensor):
        image = _array_to_pil(tensor_to_numpy(obj), "image tensor")
    elif isinstance(obj, np.ndarray):
        image = _array_to_pil(obj, "image array")
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        if len(obj) == 0:
            raise ValueError("image bytes are empty")
        image = _open_image(io.BytesIO(bytes(obj)), "image bytes")
    elif isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"No image file at {path}")
        image = _open_image(path, f"image file {path}")
    else:
        raise ValueError(
            f"Cannot read an image from a {type(obj).__name__}; give a PIL image, a numpy array, "
            "a torch tensor, encoded bytes or a file path"
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image is empty ({image.width}x{image.height})")
    image = ImageOps.exif_transpose(image)
    return _pil_to_rgb(image)


def _open_image(src: Any, what: str) -> Image.Image:
    try:
        image = Image.open(src)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} could not be decoded as an image: {e}") from e
    return image


def _square_size(size: Any) -> tuple[int, int]:
    """(height, width) from {"height", "width"}, {"shortest_edge"}, {"longest_edge"} or an int.

    CLIPSeg needs a square input (its decoder reshapes tokens to a square grid), so an edge
    length means a square of that side."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(size, Mapping):
        if size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
        for key in ("shortest_edge", "longest_edge"):
            if size.get(key):
                return int(size[key]), int(size[key])
    raise ValueError(
        f"size must be {{'height': H, 'width': W}}, {{'shortest_edge': S}} or an int, got {size!r}"
    )


class CLIPSegImageProcessor:
    """Resize (exactly, no crop), rescale and normalize images as CIDAS' preprocessor_config.json
    says; numbers equal `transformers`' PIL-backend ViT image processor.

    Args:
        do_resize, size, resample: resize to ``size`` (height x width) with this PIL filter
            (2 = bilinear).
        do_rescale, rescale_factor: multiply by 1/255.
        do_normalize, image_mean, image_std: (x - mean) / std per channel.
        **kwargs: other keys of preprocessor_config.json, kept and written back.

    Each of these settings can also be given to a single call (``processor(images,
    do_resize=False)``), as in `transformers`.
    """

    model_input_names = ["pixel_values"]
    # `preprocess_tensor` converts at most this many input values to float32 at a time (256 MB)
    tensor_slice_values = 2**26
    # the settings a call may override (transformers' ImagesKwargs that this processor implements)
    call_settings = (
        "do_resize",
        "size",
        "resample",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
    )

    def __init__(
        self,
        do_resize: bool = True,
        size: Any = None,
        resample: int = 2,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] | float | None = None,
        image_std: Sequence[float] | float | None = None,
        **kwargs: Any,
    ) -> None:
        self.do_resize = do_resize
        if size is None:
            size = {"height": 352, "width": 352}
        elif not isinstance(size, Mapping):
            h, w = _square_size(size)
            size = {"height": h, "width": w}
        self.size = dict(size)
        self.height, self.width = _square_size(self.size)
        self.resample = int(resample)
        self.do_rescale = do_rescale
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = do_normalize
        self.image_mean = _three(image_mean if image_mean is not None else IMAGENET_DEFAULT_MEAN)
        self.image_std = _three(image_std if image_std is not None else IMAGENET_DEFAULT_STD)
        kwargs.pop("do_convert_rgb", None)  # always RGB
        self.extra = kwargs

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, **kwargs: Any
    ) -> CLIPSegImageProcessor:
        """Settings from ``processor_config.json``'s ``"image_processor"`` (what transformers 5's
        ``save_pretrained`` writes), else ``preprocessor_config.json`` (earlier versions, CIDAS),
        the order transformers 5 reads them in; ``kwargs`` override them."""
        d = _local_dir(name_or_path)
        config = _read_image_processor_config(d)
        if config is None:
            logger.warning(
                "No %s (nor %s with an image_processor entry) in %s; using CLIPSeg's defaults",
                PREPROCESSOR_CONFIG_FILE,
                PROCESSOR_CONFIG_FILE,
                d,
            )
            config = {}
        config.update(kwargs)
        return cls(**config)

    def with_settings(self, **settings: Any) -> CLIPSegImageProcessor:
        """This processor with some of `call_settings` changed; self when none is given.
        TypeError names unknown settings; None is refused (transformers 5 reads
        ``do_resize=None`` as False and a None size or mean as an error, transformers 4 as the
        processor's own setting: leave the argument out for that)."""
        unknown = {k: v for k, v in settings.items() if k not in self.call_settings}
        convert_rgb = unknown.pop("do_convert_rgb", None)
        if unknown:
            raise TypeError(
                _unexpected_kwargs("CLIPSegImageProcessor", unknown, self.call_settings)
            )
        if convert_rgb is False:
            raise ValueError(
                "do_convert_rgb=False is not supported: CLIPSeg's vision tower takes 3 channels, "
                "so every image is converted to RGB; leave do_convert_rgb out"
            )
        changed = {k: v for k, v in settings.items() if k in self.call_settings}
        unset = sorted(k for k, v in changed.items() if v is None)
        if unset:
            raise ValueError(
                f"{', '.join(unset)}=None is ambiguous (transformers 5 turns a None do_* switch "
                "off, transformers 4 used the processor's setting); pass a value, or leave the "
                "argument out to use the processor's setting"
            )
        if not changed:
            return self
        return type(self)(**{**self.to_dict(), **changed})

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": self.extra.get("image_processor_type", "ViTImageProcessor"),
            "image_std": list(self.image_std),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": dict(self.size),
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / PREPROCESSOR_CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    def preprocess_one(self, image: Any) -> np.ndarray:
        """One image -> float32 (3, H, W).

        A float image in [0, 1] is rescaled once whatever ``do_rescale`` says: with
        ``do_rescale=False`` its values stay in [0, 1] (transformers' numbers), with True they are
        not divided by 255 a second time (transformers would; see the module docstring)."""
        pil = load_image(image)
        if self.do_resize:
            pil = pil.resize((self.width, self.height), resample=self.resample)
        arr = np.asarray(pil)  # (H, W, 3) uint8
        scale = self.rescale_factor if self.do_rescale else None
        if scale is None and _is_unit_float(image):
            scale = 1 / 255  # back to the input's own [0, 1] scale, as transformers returns it
        normalize = (tuple(self.image_mean), tuple(self.image_std)) if self.do_normalize else None
        table = _level_table(scale, normalize)  # (3, 256)
        out = np.empty((3, *arr.shape[:2]), dtype=np.float32)
        for channel in range(3):
            # mode="clip" writes straight into `out` ("raise" buffers it); uint8 levels are
            # always in the table's range, so it clips nothing
            np.take(table[channel], arr[..., channel], out=out[channel], mode="clip")
        return out

    def preprocess_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """A (B, 3, H, W) RGB batch (uint8, or float in [0, 1]) -> float32 pixel values
        (B, 3, S, S) on the batch's own device: the throughput path for images already on a GPU.

        Resizing is torch's antialiased bilinear filter, rounded to uint8 levels like PIL's, so
        pixel values differ from `__call__`'s (PIL) by at most a few gray levels; use `__call__`
        for the reference's exact numbers. No EXIF, alpha or mode handling: that is the loader's.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must be a (B, 3, H, W) RGB tensor, got {shape}")
        if 0 in images.shape:
            raise ValueError(f"images is empty: shape {tuple(images.shape)}")
        per_slice = max(1, self.tensor_slice_values // images[0].numel())
        if len(images) > per_slice:
            # the float32 copy at the input's resolution is this method's peak: 256 images of
            # 1920x1080 would take 6.4 GB at once, so large batches are converted in slices
            return torch.cat(
                [
                    self.preprocess_tensor(images[start : start + per_slice])
                    for start in range(0, len(images), per_slice)
                ]
            )
        if images.dtype == torch.uint8:
            x = images.float()
        elif images.is_floating_point():
            x = images.float().clamp(0, 1) * 255
        else:
            raise ValueError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
        if self.do_resize and tuple(x.shape[-2:]) != (self.height, self.width):
            if self.resample != 2:  # PIL.Image.BILINEAR
                raise ValueError(
                    f"preprocess_tensor resizes bilinearly; this processor's resample is "
                    f"{self.resample}: use __call__"
                )
            x = F.interpolate(
                x,
                size=(self.height, self.width),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            x = x.round_().clamp_(0, 255)  # PIL hands back uint8
        # rescale and normalize as one affine map per channel, x * scale + shift; its two (3,)
        # tensors are built on the host and copied without blocking (a blocking copy to a GPU
        # would wait for all work queued before it)
        scale = torch.full((3,), self.rescale_factor if self.do_rescale else 1.0)
        shift = torch.zeros(3)
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=torch.float32)
            std = torch.tensor(self.image_std, dtype=torch.float32)
            scale, shift = scale / std, -mean / std
        scale = scale.to(x.device, non_blocking=True).view(1, 3, 1, 1)
        shift = shift.to(x.device, non_blocking=True).view(1, 3, 1, 1)
        return torch.addcmul(shift, x, scale)

    def __call__(
        self, images: Any, return_tensors: str | None = "pt", **settings: Any
    ) -> BatchEncoding:
        """Images -> ``pixel_values`` (B, 3, H, W) float32 ("pt" or "np"), or a list of
        (3, H, W) arrays with ``return_tensors=None``.

        Args:
            images: one image (anything `load_image` reads), a list of them, or a batch as one
                4-D array: numpy (B, H, W, C) or torch (B, C, H, W) (the channel axis is found
                per image as `load_image` does). A list may hold such batches too.
            return_tensors: "pt" (default; transformers' default is None), "np" or None.
            **settings: per-call `call_settings` (``do_resize=False``, ``size=...``, ...), as in
                transformers; any other keyword raises TypeError.
        """
        proc = self.with_settings(**settings)
        batch = _image_batch(images)
        # each object once: the reference's usage repeats one image per prompt ([image] * K), and
        # one lazily opened PIL image must not be loaded by several threads at the same time
        unique = list({id(image): image for image in batch}.values())
        workers = min(len(unique), torch.get_num_threads(), _MAX_PREPROCESS_THREADS)
        if workers > 1 and not any(isinstance(image, torch.Tensor) for image in unique):
            # decoding and resizing release the GIL: a batch uses the cores torch would use
            with ThreadPoolExecutor(workers, thread_name_prefix="clipseg-preprocess") as pool:
                done = list(pool.map(proc.preprocess_one, unique))
        else:
            done = [proc.preprocess_one(image) for image in unique]
        by_id = {id(image): array for image, array in zip(unique, done, strict=True)}
        if return_tensors is None:
            seen: set[int] = set()
            arrays = []
            for image in batch:  # a repeated image gets its own copy: the list is the caller's
                array = by_id[id(image)]
                arrays.append(array.copy() if id(image) in seen else array)
                seen.add(id(image))
            return BatchEncoding(pixel_values=arrays)
        arrays = [by_id[id(image)] for image in batch]
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(
                "Cannot stack images of different sizes into one tensor (do_resize=False keeps "
                f"each image's size: {sorted({a.shape[1:] for a in arrays})}); resize them, pass "
                "them one at a time, or use return_tensors=None for a list"
            )
        stacked = np.stack(arrays)
        if return_tensors == "np":
            return BatchEncoding(pixel_values=stacked)
        if return_tensors == "pt":
            return BatchEncoding(pixel_values=torch.from_numpy(stacked))
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")

    preprocess = __call__

    def __repr__(self) -> str:
        return f"CLIPSegImageProcessor({json.dumps(self.to_dict(), sort_keys=True)})"


def _read_image_processor_config(directory: Path) -> dict[str, Any] | None:
    """The image processor's settings saved in ``directory``, in transformers 5's order:
    processor_config.json's nested ``"image_processor"``, then preprocessor_config.json."""
    nested = directory / PROCESSOR_CONFIG_FILE
    if nested.is_file():
        entry = _read_json(nested).get("image_processor")
        if isinstance(entry, Mapping):
            return dict(entry)
    legacy = directory / PREPROCESSOR_CONFIG_FILE
    return _read_json(legacy) if legacy.is_file() else None


def _image_batch(images: Any) -> list[Any]:
    """The images of a call as a flat list: a 4-D array or tensor is a batch of images, a list or
    tuple holds images or such batches, anything else is one image."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("images is an empty list")
    batch: list[Any] = []
    for item in items:
        if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
            if len(item) == 0:
                raise ValueError(f"images is an empty batch (shape {tuple(item.shape)})")
            batch.extend(item)
        else:
            batch.append(item)
    return batch


def _three(v: Sequence[float] | float) -> list[float]:
    if isinstance(v, (int, float)):
        return [float(v)] * 3
    v = [float(x) for x in v]
    if len(v) != 3:
        raise ValueError(f"image_mean/image_std must have 3 values (RGB), got {v}")
    return v


# --------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------


class CLIPSegProcessor:
    """The tokenizer and the image processor together, as `transformers`' `CLIPSegProcessor`.

    One difference in defaults: ``return_tensors`` is "pt" (transformers: None, which gives
    lists); pass ``return_tensors=None`` for lists or "np" for numpy arrays.
    """

    def __init__(self, image_processor: CLIPSegImageProcessor, tokenizer: CLIPTokenizer) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> CLIPSegProcessor:
        """From a checkpoint directory, "demo" or a hub id (via `clipseg.weights`). ``kwargs``
        override saved settings: the image processor's `CLIPSegImageProcessor.call_settings`
        (``size=...``) go to it, the rest to the tokenizer (``padding_side="left"``, ...)."""
        d = _local_dir(name_or_path)
        image_kwargs = {
            k: kwargs.pop(k) for k in list(kwargs) if k in CLIPSegImageProcessor.call_settings
        }
        return cls(
            CLIPSegImageProcessor.from_pretrained(d, **image_kwargs),
            CLIPTokenizer.from_pretrained(d, **kwargs),
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(save_directory)
        self.image_processor.save_pretrained(save_directory)

    @property
    def model_input_names(self) -> list[str]:
        return self.tokenizer.model_input_names + self.image_processor.model_input_names

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Any = None,
        visual_prompt: Any = None,
        *,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchEncoding:
        """Text -> input_ids/attention_mask; images -> pixel_values; visual_prompt ->
        conditional_pixel_values (text and visual_prompt are exclusive), as transformers.

        ``kwargs`` are routed by name as in transformers: the image processor's
        `CLIPSegImageProcessor.call_settings` (``do_resize``, ``size``, ``image_mean``, ...) apply
        to ``images`` and ``visual_prompt``, the tokenizer's arguments (``padding_side``,
        ``add_special_tokens``, ...) to ``text``. Any other keyword raises TypeError.
        ``return_tensors`` defaults to "pt" here (transformers: None).
        """
        image_settings = {
            k: kwargs.pop(k) for k in list(kwargs) if k in self.image_processor.call_settings
        }
        if "do_convert_rgb" in kwargs:  # a transformers images kwarg; validated by the processor
            image_settings["do_convert_rgb"] = kwargs.pop("do_convert_rgb")
        unknown = {k: v for k, v in kwargs.items() if k not in TOKENIZER_CALL_KWARGS}
        if unknown:
            raise TypeError(
                _unexpected_kwargs(
                    "CLIPSegProcessor",
                    unknown,
                    [*TOKENIZER_CALL_KWARGS, *self.image_processor.call_settings],
                )
            )
        image_processor = self.image_processor.with_settings(**image_settings)
        if text is None and images is None and visual_prompt is None:
            raise ValueError("You have to specify either text, visual prompt or images.")
        if text is not None and visual_prompt is not None:
            raise ValueError(
                "You have to specify exactly one type of prompt. Either text or visual prompt."
            )
        out = BatchEncoding()
        if text is not None:
            out.update(
                self.tokenizer(
                    text,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length,
                    return_tensors=return_tensors,
                    **kwargs,
                )
            )
        if images is not None:
            out["pixel_values"] = image_processor(images, return_tensors=return_tensors)[
                "pixel_values"
            ]
        if visual_prompt is not None:
            out["conditional_pixel_values"] = image_processor(
                visual_prompt, return_tensors=return_tensors
            )["pixel_values"]
        return out

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def __repr__(self) -> str:
        return f"CLIPSegProcessor(\n  {self.image_processor!r},\n  {self.tokenizer!r}\n)"
