"""Build the demo model's small CLIP-style BPE vocabulary (vocab.json + merges.txt).

The files have the layout of OpenAI's CLIP vocabulary, so the demo checkpoint is read by the same
code path as a real one (``CLIPSegProcessor.from_pretrained``): ids 0..255 are the byte-level
symbols in GPT-2/CLIP's ``bytes_to_unicode`` order, 256..511 the same with the end-of-word suffix
``</w>``, then one token per merge in merge order, and ``<|startoftext|>``, ``<|endoftext|>`` as the
last two ids. The merges are learned with the ``tokenizers`` BPE trainer on the demo words (colors,
shapes, ``object``, the prompt templates' words), until every word is a single token.

Rebuilds always give the same size (619) and the same whole-word tokens, but the trainer breaks
ties between equally frequent pairs in hash order, so the order of those merges (and so some ids)
can differ from one build to the next. A checkpoint's own vocab.json/merges.txt are therefore the
ones to use with it; ``python -m clipseg.train`` writes them next to the weights.

Run ``python -m clipseg.demo.vocabulary OUT_DIR`` to write the files.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from clipseg.demo.scenes import COLORS, SHAPES
from clipseg.prompts import PROMPT_TEMPLATES

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
SUFFIX = "</w>"
CLIP_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

TEMPLATES = PROMPT_TEMPLATES  # CLIPSeg's templates; training draws from them

EXTRA_WORDS: tuple[str, ...] = ("object", "objects", "shape", "shapes", "and", "the", "with")


def demo_words() -> list[str]:
    """Every word the demo vocabulary holds as a single token."""
    words = (
        list(COLORS)
        + list(SHAPES)
        + [s + ("es" if s.endswith("s") else "s") for s in SHAPES]
        + list(EXTRA_WORDS)
    )
    for template in TEMPLATES:
        words += [w for w in template.replace("{}", " ").replace(".", " ").split()]
    return sorted(set(words))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable characters."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def train_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Learn BPE merges over ``words`` with the ``tokenizers`` trainer (CLIP's normalizer and
    pre-tokenizer, byte-level alphabet, ``</w>`` suffix) until no pair is left to merge."""
    words = list(words)
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix=SUFFIX))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # far more than the words can fill: merge until nothing is left
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=SUFFIX,
    )
    tokenizer.train_from_iterator(words, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = []
    for m in model["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        merges.append((a, b))
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout for ``merges``: bytes, bytes + ``</w>``, merges, bos, eos."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + SUFFIX for s in symbols] + ["".join(m) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("duplicate tokens in the demo vocabulary; the merges are inconsistent")
    return vocab


def tokenizer_config(model_max_length: int = 77) -> dict:
    """The tokenizer_config.json of a CIDAS checkpoint, for the demo vocabulary."""
    return {
        "add_prefix_space": False,
        "bos_token": BOS_TOKEN,
        "do_lower_case": True,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": EOS_TOKEN,
        "processor_class": "CLIPSegProcessor",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS_TOKEN,
    }


def write_vocabulary(out_dir: str | Path, model_max_length: int = 77) -> int:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into
    ``out_dir``; returns the vocabulary size (the text config's ``vocab_size``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = train_merges(demo_words())
    vocab = build_vocab(merges)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    config = tokenizer_config(model_max_length)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {k: v for k, v in config.items() if k.endswith("_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return len(vocab)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the tokenizer files into")
    args = parser.parse_args(argv)
    n = write_vocabulary(args.out_dir)
    print(f"wrote a {n}-token vocabulary to {args.out_dir}")


if __name__ == "__main__":
    main()
