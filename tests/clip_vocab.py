"""Build the real CLIP BPE vocabulary files (vocab.json + merges.txt) from OpenAI's
``bpe_simple_vocab_16e6.txt.gz`` for the tokenizer tests.

The file is looked up at ``$CLIP_BPE_PATH`` or ``<repo>/../shared/fixtures/clip-bpe/``; tests skip
when it is absent.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from clipseg.demo.vocabulary import bytes_to_unicode

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BPE_PATH = REPO_ROOT.parent / "shared/fixtures/clip-bpe/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # 48,894 merges, as in OpenAI's SimpleTokenizer


# CIDAS/clipseg-rd64-refined's preprocessor_config.json
CIDAS_PREPROCESSOR_CONFIG = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "ViTImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "processor_class": "CLIPSegProcessor",
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 352, "width": 352},
}


def bpe_path() -> Path:
    return Path(os.environ.get("CLIP_BPE_PATH", str(DEFAULT_BPE_PATH)))


def write_clip_vocab(out_dir: Path, *, with_configs: bool = True) -> Path:
    """Write vocab.json and merges.txt (and, if asked, CIDAS-style tokenizer_config.json and
    special_tokens_map.json) into ``out_dir``; returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    encoder = {tok: i for i, tok in enumerate(vocab)}
    (out_dir / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    with open(out_dir / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    if with_configs:

        def added(content: str) -> dict:
            return {
                "__type": "AddedToken",
                "content": content,
                "lstrip": False,
                "normalized": True,
                "rstrip": False,
                "single_word": False,
            }

        config = {
            "add_prefix_space": False,
            "bos_token": added("<|startoftext|>"),
            "do_lower_case": True,
            "eos_token": added("<|endoftext|>"),
            "errors": "replace",
            "model_max_length": 77,
            "pad_token": "<|endoftext|>",
            "processor_class": "CLIPSegProcessor",
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": added("<|endoftext|>"),
        }
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        stm = {k: v for k, v in config.items() if k.endswith("_token")}
        for v in stm.values():
            if isinstance(v, dict):
                v.pop("__type")
        (out_dir / "special_tokens_map.json").write_text(json.dumps(stm, indent=2))
    return out_dir


try:  # the session fixture, imported by the test modules that need the real vocabulary
    import pytest

    @pytest.fixture(scope="session", name="clip_vocab_dir")
    def clip_vocab_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
        """A directory with the real CLIP vocab.json + merges.txt and CIDAS-style configs."""
        if not bpe_path().is_file():
            pytest.skip(
                f"CLIP BPE file not found at {bpe_path()} (set CLIP_BPE_PATH to OpenAI's "
                "bpe_simple_vocab_16e6.txt.gz to run the tokenizer parity tests)"
            )
        return write_clip_vocab(tmp_path_factory.mktemp("clip-vocab"))

    @pytest.fixture(scope="module", name="checkpoint_dir")
    def processor_checkpoint_fixture(clip_vocab_dir: Path, tmp_path_factory) -> Path:
        """The real CLIP tokenizer files and CIDAS' preprocessor_config.json: a processor's
        checkpoint directory, as both libraries read it."""
        d = tmp_path_factory.mktemp("processor")
        for f in clip_vocab_dir.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        (d / "preprocessor_config.json").write_text(json.dumps(CIDAS_PREPROCESSOR_CONFIG))
        return d

except ImportError:  # pragma: no cover - pytest is only needed for the tests
    pass
