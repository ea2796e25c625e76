"""The CLIP tokenizer with the API (and the ids) of `transformers`' `CLIPTokenizer`.

Nothing here imports `transformers`. The tokenizer runs on the Rust `tokenizers` library with the
same pipeline `transformers` 5 builds for CLIP (NFC, whitespace collapsed, lower-cased, CLIP's split
pattern, byte-level BPE with the ``</w>`` end-of-word suffix, then
``<|startoftext|> ... <|endoftext|>``).

Deliberate differences from `transformers` (each documented where it happens):

- ``truncation=None`` (the default) truncates to ``model_max_length`` (77) with a logged warning;
  `transformers` then returns over-long sequences that the text model cannot embed (it has 77
  position embeddings). Pass ``truncation=False`` for the `transformers` behaviour.
- without a tokenizer_config.json, ``model_max_length`` is 77 (CLIP's context), not "unlimited".
- keyword arguments the tokenizer does not implement raise TypeError (`transformers` ignores some
  of them).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
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

from clipseg.encoding import BatchEncoding, unexpected_kwargs_message
from clipseg.weights import resolve_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["CLIPTokenizer", "TOKENIZER_CALL_KWARGS", "CLIP_CONTEXT_LENGTH"]

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CLIP_CONTEXT_LENGTH = 77
# CLIP's split pattern, as `transformers` writes it (its special tokens first so they stay whole).
CLIP_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|"""
    r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
END_OF_WORD_SUFFIX = "</w>"

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


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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
        clean_up_tokenization_spaces: bool = False,
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
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self._warned_clean_up = False

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
        d = resolve_checkpoint(name_or_path)
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
        if config.get("clean_up_tokenization_spaces") is not None:
            init["clean_up_tokenization_spaces"] = config["clean_up_tokenization_spaces"]
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
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
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
            raise TypeError(
                unexpected_kwargs_message("CLIPTokenizer", unsupported, TOKENIZER_CALL_KWARGS)
            )
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

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **unsupported: Any,
    ) -> str:
        """Ids back to text: ``</w>`` becomes a space, the ends are stripped (as transformers).

        ``clean_up_tokenization_spaces`` (None: the tokenizer's setting) is accepted and, as in
        transformers 5, not applied to this BPE tokenizer (the clean-up is WordPiece's and
        would drop real spaces before punctuation), with a warning. Other transformers
        arguments raise TypeError."""
        if unsupported:
            raise TypeError(
                unexpected_kwargs_message(
                    "CLIPTokenizer.decode",
                    unsupported,
                    ["skip_special_tokens", "clean_up_tokenization_spaces"],
                )
            )
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces and not self._warned_clean_up:
            self._warned_clean_up = True
            logger.warning(
                "Ignoring clean_up_tokenization_spaces=True for the BPE CLIPTokenizer (as "
                "transformers does): the clean-up is designed for WordPiece tokenizers and "
                "would strip spaces before punctuation. Pass clean_up_tokenization_spaces=False "
                "to silence this."
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
