"""Loading the model: checkpoint resolution, device and dtype choice, demo detection.

`load_model(settings)` turns the model settings (CLIPSEG_MODEL, CLIPSEG_DEVICE, CLIPSEG_DTYPE)
into a `clipseg.Predictor` and what the backend reports about it (a model name, a short hash
of the weights, whether it is the bundled demo model).

Its errors (`backend.errors.ModelLoadError`) and warnings name the settings as data, not as
text (`backend.errors.Setting`), and each entry point words them in its own terms: the server
names environment variables (`CLIPSEG_MODEL=demo`), `clipseg-label` its options (`--model demo`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from backend.errors import (
    ModelLoadError,
    Part,
    ServerNote,
    Setting,
    Words,
    environment_words,
)
from backend.settings import DEFAULT_MODEL, DEVICE_PATTERN, Settings

if TYPE_CHECKING:
    from clipseg.predictor import Predictor

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ device
def resolve_device(name: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" / "cuda:N" checked against
    what torch sees (ModelLoadError saying so, rather than a failure inside model loading)."""
    import torch

    name = name.strip().lower()
    given = Setting("device", name)
    if not DEVICE_PATTERN.fullmatch(name):
        raise ModelLoadError(
            "device", name, given, " is not a device: use auto, cpu, cuda or cuda:N"
        )
    if name != "cpu":
        # `clipseg-backend` resolves the device in gunicorn's master, which then forks the
        # workers, and CUDA initialised before a fork cannot be used after it: every worker would
        # fail at its first CUDA call. torch's default availability check initialises CUDA
        # (cudaGetDeviceCount); with this setting it asks NVML, which does not.
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                "device",
                name,
                given,
                f" but this torch ({torch.__version__}) sees no CUDA GPU; use ",
                Setting("device", "cpu"),
                " (or auto)",
            )
        count = torch.cuda.device_count()
        if int(name.partition(":")[2] or 0) >= count:
            raise ModelLoadError(
                "device",
                name,
                given,
                f" but torch sees {count} CUDA GPU(s) (cuda:0 .. cuda:{count - 1})",
            )
    return name


# -------------------------------------------------------------------------------- checkpoint
_DEMO_HINT: tuple[Part, ...] = (
    "To try it without downloading anything, run the bundled demo model: ",
    Setting("model", "demo"),
    " (a small model trained on synthetic shapes, not real photos).",
)


def checkpoint_directory(name: str) -> Path:
    """The checkpoint directory of CLIPSEG_MODEL; ModelLoadError with how to download it and
    the demo hint."""
    from clipseg.weights import resolve_checkpoint

    try:
        return Path(resolve_checkpoint(name))
    except Exception as exc:  # the message of clipseg.weights says how to download it
        raise ModelLoadError(
            "model",
            name,
            f"cannot find the CLIPSeg model {name!r} (",
            Setting("model"),
            f"): {exc}.",
            ServerNote(" In docker, mount the downloaded directory (see docker/README.md)."),
            " ",
            *_DEMO_HINT,
        ) from exc


def check_checkpoint_or_exit(settings: Settings) -> None:
    """Fail fast before gunicorn forks when the checkpoint cannot even be found."""
    try:
        checkpoint_directory(settings.model)
    except ModelLoadError as exc:
        logger.error("cannot start: %s", exc)
        sys.exit(1)


def weights_hash(directory: Path) -> str:
    """A short sha256 of the checkpoint's weights file (or of its config when there is none)."""
    for name in ("model.safetensors", "pytorch_model.bin", "config.json"):
        path = directory / name
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    digest.update(chunk)
            return digest.hexdigest()[:8]
    return "unknown"


def model_slug(name: str, directory: Path, is_demo: bool) -> str:
    """The model's name in model_version: "clipseg-demo", else the checkpoint's last path part
    made safe and prefixed "clipseg-" when it is not already."""
    if is_demo:
        return "clipseg-demo"
    base = name.rstrip("/").split("/")[-1] if not Path(name).exists() else directory.name
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-") or "clipseg"
    return base if base.lower().startswith("clipseg") else f"clipseg-{base}"


def is_demo_checkpoint(name: str, directory: Path) -> bool:
    """The bundled demo checkpoint, by name, by location, or by the marker in its config.json."""
    from clipseg.weights import DEMO_CHECKPOINT

    if name == "demo" or directory.resolve() == Path(DEMO_CHECKPOINT).resolve():
        return True
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    marks = [config.get(k) for k in ("demo", "is_demo", "clipseg_demo")]
    nested = config.get("clipseg")
    if isinstance(nested, dict):
        marks.append(nested.get("demo"))
    return any(bool(m) for m in marks)


# -------------------------------------------------------------------------------------- load
@dataclass(frozen=True)
class LoadedModel:
    """A loaded checkpoint and what the backend reports about it."""

    predictor: Predictor
    directory: Path
    name: str  # the model's name in model_version (`model_slug`)
    weights_hash: str
    is_demo: bool
    device: str  # where the model runs: "cpu", "cuda", "cuda:1"
    dtype: str  # "float32", "float16", "bfloat16"


def patch_size(predictor: Predictor) -> int:
    """The model's patch size in pixels: the smallest tile tiled prediction can use."""
    return int(predictor.model.config.vision_config.patch_size)


def check_tiling_settings(settings: Settings, predictor: Predictor) -> None:
    """Refuse at start a tile size the loaded model cannot use (below its patch size)."""
    from clipseg.tiling import check_tiling

    try:
        check_tiling(settings.tile_size, settings.tile_overlap, patch_size(predictor))
    except ValueError as exc:
        raise ModelLoadError(
            "tile_size",
            str(settings.tile_size),
            Setting("tile_size", str(settings.tile_size)),
            " ",
            Setting("tile_overlap", str(settings.tile_overlap)),
            f": {exc}",
        ) from exc


def load_model(settings: Settings, words: Words = environment_words) -> LoadedModel:
    """Load the checkpoint of `settings.model` on `settings.device` in `settings.dtype`.

    Raises ModelLoadError saying how to fix a failure; the warnings it logs (the demo model,
    half precision on the CPU) are worded by `words` (the entry point's terms).
    """
    directory = checkpoint_directory(settings.model)
    device = resolve_device(settings.device)
    try:
        import torch

        from clipseg import Predictor

        dtype = None if settings.dtype == "auto" else getattr(torch, settings.dtype)
        predictor = Predictor.from_pretrained(str(directory), device=device, dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(
            "model",
            settings.model,
            f"cannot load the CLIPSeg model {settings.model!r} from {directory}: "
            f"{type(exc).__name__}: {exc}. Check that it is a complete CLIPSeg checkpoint "
            "(config.json, model.safetensors or pytorch_model.bin, vocab.json, merges.txt, "
            "preprocessor_config.json); re-download it if not. ",
            *_DEMO_HINT,
        ) from exc
    check_tiling_settings(settings, predictor)
    is_demo = is_demo_checkpoint(settings.model, directory)
    loaded = LoadedModel(
        predictor=predictor,
        directory=directory,
        name=model_slug(settings.model, directory, is_demo),
        weights_hash=weights_hash(directory),
        is_demo=is_demo,
        device=str(getattr(predictor, "device", device)),
        dtype=str(getattr(predictor, "dtype", "float32")).replace("torch.", ""),
    )
    logger.info(
        "loaded %s from %s on %s (%s); model_version %s@%s",
        settings.model,
        directory,
        loaded.device,
        loaded.dtype,
        loaded.name,
        loaded.weights_hash,
    )
    if loaded.device == "cpu" and loaded.dtype in ("float16", "bfloat16"):
        logger.warning(
            "%s on the CPU: without bf16/AMX support in the CPU, half precision runs "
            "several times slower than float32 (what CLIPSEG_DTYPE=auto picks on the CPU)",
            loaded.dtype,
        )
    if is_demo:
        logger.warning(
            "%s",
            words(
                (
                    Setting("model", settings.model),
                    " is the DEMO model: a small CLIPSeg trained on synthetic '<color> <shape>' "
                    "scenes; it will not segment real photos. For real images run the published "
                    "model: ",
                    Setting("model", DEFAULT_MODEL),
                    ServerNote(" clipseg-backend (see docs/backend.md)"),
                )
            ),
        )
    return loaded
