"""Shared pieces of the benchmarks: identical random weights for both implementations, timing.

Every benchmark compares our code with the `transformers` reference on the *same* weights:
`build_checkpoint` makes transformers' `CLIPSegForImageSegmentation` at the
CIDAS/clipseg-rd64-refined shape (or a small shape for smoke runs) with a fixed seed, saves it in
the Hugging Face layout (config.json, model.safetensors, tokenizer and preprocessor files) and
both sides load that directory.
No weights are downloaded: the numbers measure speed and memory, not segmentation quality.

The tokenizer files are CLIP's: derived from OpenAI's `bpe_simple_vocab_16e6.txt.gz` when
`../shared/fixtures/clip-bpe/` holds it (49,408 tokens, as in the real checkpoint), otherwise the
demo vocabulary (longer token sequences, same code paths).

`transformers` is imported here (benchmarks are test-side code); `clipseg/` and `backend/` never do.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# OpenAI's CLIP BPE file ($CLIPSEG_BPE_FILE overrides, e.g. on a machine without ../shared)
BPE_FIXTURE = Path(
    os.environ.get("CLIPSEG_BPE_FILE")
    or REPO_ROOT.parent / "shared" / "fixtures" / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz"
)

# CIDAS/clipseg-rd64-refined: ViT-B/16 vision tower (image_size 224 -> 14x14 position grid),
# CLIP text tower, reduce_dim 64, the refined (complex) transposed-convolution upsampler.
RD64_REFINED: dict = {
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "max_position_embeddings": 77,
        # the CIDAS config carries the legacy ids: the text output is pooled at argmax(input_ids)
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 16,
    },
    "projection_dim": 512,
    "extract_layers": [3, 6, 9],
    "reduce_dim": 64,
    "decoder_num_attention_heads": 4,
    "decoder_intermediate_size": 2048,
    "conditional_layer": 0,
    "use_complex_transposed_convolution": True,
}

# A few-MB model with the same structure, for smoke runs on CPU (`--small`).
SMALL: dict = {
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    },
    "vision_config": {
        "hidden_size": 96,
        "intermediate_size": 192,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "image_size": 224,
        "patch_size": 16,
    },
    "projection_dim": 64,
    "extract_layers": [1, 2, 3],
    "reduce_dim": 16,
    "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 64,
    "conditional_layer": 0,
    "use_complex_transposed_convolution": True,
}

PREPROCESSOR_CONFIG: dict = {  # CIDAS/clipseg-rd64-refined's preprocessor_config.json
    "do_normalize": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "image_processor_type": "ViTImageProcessor",
    "processor_class": "CLIPSegProcessor",
    "resample": 2,
    "size": 352,
}

PROMPTS = [
    "a cat", "a dog", "a red car", "the sky", "a tree", "grass", "a person", "a bicycle",
    "a window", "a wooden table", "water", "a road", "a building", "a chair", "a bird",
    "a cup of coffee", "a laptop", "a flower", "a cloud", "a traffic light",
]  # fmt: skip


def prompts(k: int) -> list[str]:
    """The first `k` benchmark prompts (cycled when k > 20), realistic short label names."""
    return [PROMPTS[i % len(PROMPTS)] for i in range(k)]


_FRESH = itertools.count()


def fresh_prompts(texts: Sequence[str]) -> list[str]:
    """`texts` with a number never used before in this process appended ("a cat 17"), so that a
    per-string text-embedding cache cannot hit: what a timed run must pay for new labels."""
    n = next(_FRESH)
    return [f"{t} {n}" for t in texts]


# ----------------------------------------------------------------------------- tokenizer files


def clip_merges(bpe_path: Path) -> list[tuple[str, str]]:
    """The 48,894 merges of OpenAI's `bpe_simple_vocab_16e6.txt.gz` (line 0 is a header)."""
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    return [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]


def write_processor_files(directory: Path, bpe_path: Path | None = BPE_FIXTURE) -> None:
    """Write the tokenizer and preprocessor files of a CIDAS-style checkpoint into `directory`.

    With OpenAI's BPE file: CLIP's 49,408-token vocabulary, laid out by
    `clipseg.demo.vocabulary.build_vocab` ("a photo of a cat" -> [49406, 320, 1125, 539, 320,
    2368, 49407]). Without it: the demo vocabulary (a few hundred tokens; prompts then split into
    more tokens, through the same code paths).
    """
    from clipseg.demo.vocabulary import build_vocab, tokenizer_config, write_vocabulary

    if bpe_path is not None and Path(bpe_path).is_file():
        merges = clip_merges(Path(bpe_path))
        vocab = build_vocab(merges)
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
        (directory / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
        )
        config = tokenizer_config()
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        special = {k: v for k, v in config.items() if k.endswith("_token")}
        (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    else:
        logger.warning("%s not found: using the demo vocabulary", bpe_path)
        write_vocabulary(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))


# ----------------------------------------------------------------------------- weights


def default_cache_dir() -> Path:
    """Where built checkpoints are kept between runs ($CLIPSEG_BENCH_CACHE, else a tmp dir)."""
    env = os.environ.get("CLIPSEG_BENCH_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / "clipseg-bench"


def build_checkpoint(*, small: bool = False, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """A checkpoint directory with random weights at the rd64-refined (or small) shape.

    Built once with transformers (`torch.manual_seed(seed)`, then its own initialisation, then the
    biases and LayerNorm parameters randomised too so that the probability maps are not flat),
    `save_pretrained`, and the CLIP tokenizer/preprocessor files. Reused from `cache_dir` when it
    exists; written to a sibling and renamed so that concurrent runs never see half a checkpoint.
    """
    name = f"{'small' if small else 'rd64-refined'}-seed{seed}"
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / name
    if (target / "model.safetensors").is_file() and (target / "vocab.json").is_file():
        return target
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=name + ".", dir=root))
    logger.info("building %s random weights in %s", name, staging)
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(CLIPSegConfig(**(SMALL if small else RD64_REFINED)))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif "layer_norm" in pname or "layrnorm" in pname or "layernorm" in pname:
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)
        _scale_logits(model, target_std=3.0)
    model.save_pretrained(staging)
    write_processor_files(staging)
    try:
        staging.rename(target)
    except OSError:  # another run finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _scale_logits(model: torch.nn.Module, target_std: float) -> None:
    """Scale the upsampler's last layer so that the logits' spread is about `target_std`.

    At initialisation the logits spread over hundreds, so every probability is 0 or 1 and a
    comparison of probabilities would only see the borders; a spread of a few units keeps the
    sigmoid in its sensitive range. The last layer is linear, so the logits scale exactly.
    """
    last = [
        m
        for m in model.decoder.transposed_convolution.modules()
        if isinstance(m, torch.nn.ConvTranspose2d)
    ][-1]
    pixel_values = torch.randn(1, 3, 352, 352, generator=torch.Generator().manual_seed(0))
    input_ids = torch.tensor([[49406, 320, 2368, 49407]])  # "a cat"
    logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    factor = target_std / float(logits.std())
    last.weight.mul_(factor)
    last.bias.mul_(factor)


def load_reference(path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """transformers' model (eval, on `device` in `dtype`) and processor from `path`."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    model = CLIPSegForImageSegmentation.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, CLIPSegProcessor.from_pretrained(path)


def load_ours(path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Our model (eval, on `device` in `dtype`) and processor from `path`."""
    from clipseg import CLIPSegForImageSegmentation, CLIPSegProcessor

    model = CLIPSegForImageSegmentation.from_pretrained(path).to(device=device, dtype=dtype).eval()
    return model, CLIPSegProcessor.from_pretrained(path)


def reference_predict(
    model, processor, image: Image.Image, texts: Sequence[str], autocast_dtype=None
) -> torch.Tensor:
    """transformers' documented usage for K prompts on one image -> probabilities (K, H, W).

    `processor(text=prompts, images=[image] * K, padding=True)`, `model(**inputs)`, then the
    logits resized (bilinear) to the image size and a sigmoid, the same post-processing our
    Predictor does so that the outputs can be compared.
    """
    inputs = processor(
        text=list(texts), images=[image] * len(texts), padding=True, return_tensors="pt"
    )
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    with torch.inference_mode():
        logits = model(**inputs).logits.reshape(len(texts), 1, *inputs["pixel_values"].shape[-2:])
        logits = torch.nn.functional.interpolate(
            logits.float(), size=(image.height, image.width), mode="bilinear", align_corners=False
        )
        return torch.sigmoid(logits[:, 0])


# ----------------------------------------------------------------------------- inputs


def make_image(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A photo-like RGB test image: smooth colour fields plus a few flat shapes and mild noise.

    Smooth content keeps JPEG/PNG sizes and the masks' region counts close to real photos', which
    matters for the decode, polygon and RLE stages; pure noise would not.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).copy()
    for _ in range(6):
        x0, y0 = rng.integers(0, width * 3 // 4), rng.integers(0, height * 3 // 4)
        w, h = rng.integers(width // 10, width // 3), rng.integers(height // 10, height // 3)
        img[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 4, size=img.shape)
    return Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- timing


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op thread count (None: leave torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def synchronize(device: str | torch.device) -> None:
    """Wait for queued CUDA work on `device` (no-op on CPU) so that wall-clock timing is honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object], *, repeats: int, warmup: int = 1, device: str = "cpu"
) -> list[float]:
    """Run `fn` `warmup` times untimed, then `repeats` times; each run's seconds (synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def time_interleaved(
    fns: dict[str, Callable[[int], object]],
    *,
    repeats: int,
    warmup: int = 1,
    device: str = "cpu",
) -> dict[str, list[float]]:
    """Time several contenders round-robin: each round runs every function once, in turn.

    On a shared, noisy machine interleaving exposes the contenders to the same background load,
    so that their ratio is more trustworthy than that of two back-to-back series. Each function
    receives the run index (warm-up runs get negative indices), e.g. to vary its inputs.
    """
    for i in range(warmup):
        for fn in fns.values():
            fn(-1 - i)
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(r)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@contextlib.contextmanager
def stopwatch(into: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds spent in the block to `into[key]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - start


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table, numeric columns right-aligned (pasted into docs/performance.md)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if num else c.ljust(w)
                for c, w, num in zip(r, widths, numeric, strict=True)
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if n else ("-" * (w + 2))
            for w, n in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def _fmt(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v == 0:
            return "0"
        if abs(v) < 1e-2:
            return f"{v:.1e}"
        if abs(v) < 10:
            return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
        return f"{v:.1f}"
    return str(value)


@lru_cache(maxsize=1)
def machine_description() -> str:
    """One line naming the machine: CPU model and cores, torch version and threads, GPU if any."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    parts = [
        f"{cpu}, {os.cpu_count()} cores",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"Python {platform.python_version()}",
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    with contextlib.suppress(ImportError):
        import transformers

        parts.append(f"transformers {transformers.__version__}")
    return "; ".join(parts)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """--seed, --cache-dir and --threads, shared by every benchmark."""
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the random checkpoints are built and reused (default: $CLIPSEG_BENCH_CACHE "
        "or <tmp>/clipseg-bench)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
