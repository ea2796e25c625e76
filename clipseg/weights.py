"""Checkpoint files: where they are, how their keys map to our modules, and a strict load.

A checkpoint is a directory in the Hugging Face layout (``config.json`` + ``model.safetensors``
or ``pytorch_model.bin``). `resolve_checkpoint` finds it (a local directory, ``"demo"`` for the
checkpoint shipped in ``clipseg/demo/checkpoint``, or a hub id through the optional
``huggingface_hub``). `convert_state_dict` is a pure function from any CLIPSeg checkpoint layout to
the keys of the requested model class, and `load_state_dict_strict` refuses to load anything that
is missing, unexpected or mis-shaped, naming the keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "DEMO_CHECKPOINT",
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_NAME",
    "resolve_checkpoint",
    "read_state_dict",
    "convert_state_dict",
    "foreign_keys",
    "load_state_dict_strict",
    "save_state_dict",
    "first_float_dtype",
    "fresh_copy",
    "parse_shard_size",
]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "demo" / "checkpoint"

# The layouts a state dict can come in, by the model class that wrote it.
Layout = Literal["segmentation", "clip", "text", "vision"]
# Where each model's keys live inside a segmentation checkpoint.
_PREFIX: dict[str, str] = {
    "segmentation": "",
    "clip": "clip.",
    "text": "clip.text_model.",
    "vision": "clip.vision_model.",
}
# Non-parameter buffers that checkpoints may carry and our modules recompute.
_IGNORED_BUFFERS = re.compile(r"(^|\.)position_ids$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# How much of a safetensors file is read through one memory mapping before it is reopened.
_REMAP_BYTES = 64 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as is: missing, corrupt, or disagreeing with its config."""


def _download_hint(repo_id: str) -> str:
    local = "./" + repo_id.split("/")[-1]
    return (
        f"download it once, e.g. `hf download {repo_id} --local-dir {local}` or "
        f"`git clone https://huggingface.co/{repo_id} {local}`, then pass the directory ({local})"
    )


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str], local_files_only: bool = False, subfolder: str = ""
) -> Path:
    """The local directory holding the checkpoint ``name_or_path`` (its ``subfolder`` when one
    is named, as transformers' ``subfolder=``: a checkpoint stored one level down).

    - an existing directory: itself;
    - ``"demo"``: the demo checkpoint shipped in the package (``clipseg/demo/checkpoint``);
    - a hub id such as ``"CIDAS/clipseg-rd64-refined"``: the local snapshot from
      ``huggingface_hub.snapshot_download`` (optional: ``pip install huggingface_hub``, the
      project's ``hub`` extra); with ``local_files_only=True`` only from the local hub cache,
      never the network.

    Raises FileNotFoundError (with the fix) when none of these applies.
    """
    root = _resolve_root(name_or_path, local_files_only, subfolder)
    if not subfolder:
        return root
    directory = root / subfolder
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{os.fspath(name_or_path)!r} has no subfolder {subfolder!r} (looked for {directory}); "
            "check the subfolder's name, or leave subfolder out"
        )
    return directory


def _resolve_root(
    name_or_path: str | os.PathLike[str], local_files_only: bool, subfolder: str
) -> Path:
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if text == "demo":
        if (DEMO_CHECKPOINT / "config.json").is_file():
            return DEMO_CHECKPOINT
        raise FileNotFoundError(
            f"the demo checkpoint is not installed (expected {DEMO_CHECKPOINT}/config.json); "
            "reinstall the package or train it with `python -m clipseg.train`"
        )
    if path.exists():
        raise NotADirectoryError(
            f"{path} is a file; pass the checkpoint directory that holds config.json and "
            f"{SAFE_WEIGHTS_NAME}"
        )
    if isinstance(name_or_path, str) and _HUB_ID.match(text) and not text.startswith((".", "~")):
        return _snapshot(text, local_files_only, subfolder)
    raise FileNotFoundError(
        f"no checkpoint directory at {path}: pass a directory holding config.json and "
        f"{SAFE_WEIGHTS_NAME} (or {WEIGHTS_NAME}), a hub id such as CIDAS/clipseg-rd64-refined, "
        "or 'demo'"
    )


def _snapshot(repo_id: str, local_files_only: bool = False, subfolder: str = "") -> Path:
    """Download (or find in the local cache) the files of hub repository ``repo_id`` (those of
    its ``subfolder`` when one is named); returns the snapshot's root."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"there is no directory {Path(repo_id).resolve()}, and {repo_id!r} cannot be looked "
            "up on the Hugging Face hub: huggingface_hub is not installed (pip install "
            f"huggingface_hub); or {_download_hint(repo_id)}"
        ) from None
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    patterns = [f"{prefix}{p}" for p in ("*.json", "*.txt", SAFE_WEIGHTS_NAME)]
    try:
        directory = Path(
            snapshot_download(repo_id, allow_patterns=patterns, local_files_only=local_files_only)
        )
        if not (directory / prefix / SAFE_WEIGHTS_NAME).is_file():
            directory = Path(
                snapshot_download(
                    repo_id,
                    allow_patterns=[*patterns, prefix + WEIGHTS_NAME],
                    local_files_only=local_files_only,
                )
            )
    except Exception as exc:  # network, auth, missing repo: all end in the same advice
        raise FileNotFoundError(
            f"there is no directory {Path(repo_id).resolve()}, and {repo_id!r} could not be "
            f"fetched from the Hugging Face hub ({type(exc).__name__}: {exc}); "
            f"{_download_hint(repo_id)}"
        ) from exc
    logger.info("resolved %s to %s", repo_id, directory)
    return directory


def read_state_dict(
    directory: str | os.PathLike[str], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in ``directory`` on the CPU, each in fresh storage of its own.

    Prefers ``model.safetensors`` (or a sharded ``model.safetensors.index.json``); falls back to
    ``pytorch_model.bin`` read with ``torch.load(weights_only=True)`` (no code execution).
    Floating-point tensors are converted to ``dtype`` when it is given, as they are read.

    The tensors are read one at a time, and a safetensors file's pages are released after each,
    so that the peak is about one copy of the weights (in ``dtype``) rather than the mapped file
    and the copies together. The storage is fresh (aligned) rather than a view into the file:
    BLAS results depend at the last bit on alignment, and parity with transformers is bitwise.
    """
    from safetensors import SafetensorError

    directory = Path(directory)
    safe, index, pickle = (
        directory / SAFE_WEIGHTS_NAME,
        directory / SAFE_WEIGHTS_INDEX_NAME,
        directory / WEIGHTS_NAME,
    )
    try:
        if safe.is_file():
            return dict(_read_safetensors(safe, dtype))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_read_safetensors(directory / shard, dtype))
            return state
        if pickle.is_file():
            return dict(_read_pickle(pickle, dtype))
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, EOFError) as exc:
        broken = next(p for p in (safe, index, pickle) if p.is_file())
        raise CheckpointError(
            f"cannot read the weights in {broken} ({type(exc).__name__}: {exc}); the file is "
            "corrupt or truncated: download the checkpoint again"
        ) from exc
    raise FileNotFoundError(
        f"no weights in {directory}: expected {SAFE_WEIGHTS_NAME} or {WEIGHTS_NAME}"
    )


def fresh_copy(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A detached copy of ``tensor`` in new storage on the CPU, floating point converted to
    ``dtype`` when given."""
    if dtype is None or not tensor.is_floating_point():
        dtype = tensor.dtype
    return tensor.detach().to(device="cpu", dtype=dtype, copy=True)


def _read_safetensors(path: Path, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for each tensor in the safetensors file ``path``, copied one at a time."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as file:
        keys = list(file.keys())
    # safetensors memory-maps the file, and every page read through a mapping stays resident until
    # the mapping is closed: read through one mapping, the whole file would be resident next to
    # the copies by the end (two copies of the weights). So the file is reopened every
    # _REMAP_BYTES: the peak is one copy plus that much (or plus one tensor, if larger).
    done = 0
    while done < len(keys):
        with safe_open(path, framework="pt") as file:
            mapped = 0
            while done < len(keys) and mapped < _REMAP_BYTES:
                view = file.get_tensor(keys[done])
                mapped += view.nbytes
                tensor = fresh_copy(view, dtype)
                del view
                yield keys[done], tensor
                done += 1


def _read_pickle(path: Path, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for each tensor of a ``torch.save``d state dict, each original dropped once
    copied (a pickle is read whole: the peak is one copy and one tensor)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in list(state):
        yield key, fresh_copy(state.pop(key), dtype)


def _source_layout(keys: set[str]) -> Layout:
    """Which model class wrote a state dict, judged by its key prefixes."""
    if any(k.startswith(("clip.", "decoder.")) for k in keys):
        return "segmentation"
    if any(k.startswith(("text_model.", "vision_model.")) for k in keys) or "logit_scale" in keys:
        if any(k.startswith("text_model.") for k in keys) and any(
            k.startswith("vision_model.") for k in keys
        ):
            return "clip"
        # a tower saved on its own by transformers 4.x (CLIPSegTextModel.text_model.*)
        return "text" if any(k.startswith("text_model.") for k in keys) else "vision"
    if "embeddings.token_embedding.weight" in keys:
        return "text"
    if "embeddings.patch_embedding.weight" in keys:
        return "vision"
    raise CheckpointError(
        "the weights are not a CLIPSeg state dict (no clip.*, text_model.*, vision_model.* or "
        f"tower embedding keys; first keys: {sorted(keys)[:5]})"
    )


def _lift(key: str, layout: Layout) -> str:
    """A key of a ``layout`` state dict as the segmentation layout names it."""
    if layout in ("text", "vision"):
        # transformers 4.x towers nest under text_model./vision_model.; 5.x do not
        key = key.removeprefix(f"{layout}_model.")
    return _PREFIX[layout] + key


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], target: Layout
) -> dict[str, torch.Tensor]:
    """Map a CLIPSeg state dict in any layout to the keys of model class ``target``.

    Pure: nothing is loaded or checked here beyond recognising the layout. Keys are first lifted
    into the segmentation layout (``clip.text_model.*``, ``clip.vision_model.*``, ``decoder.*``),
    then the part ``target`` owns is cut out, so that e.g. `CLIPSegModel` or
    `CLIPSegTextModel` loaded from a segmentation checkpoint get exactly that checkpoint's towers.
    Non-parameter buffers (``*.position_ids``) are dropped. Keys outside the target are dropped;
    a target wider than the source yields missing keys for the strict load to report.
    """
    keys = set(state_dict)
    layout = _source_layout(keys)
    lifted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if _IGNORED_BUFFERS.search(key):
            continue
        lifted[_lift(key, layout)] = tensor
    prefix = _PREFIX[target]
    return {k[len(prefix) :]: v for k, v in lifted.items() if k.startswith(prefix)}


def foreign_keys(keys: Iterable[str], target: Layout) -> set[str]:
    """The keys of a checkpoint that model class ``target`` does not own, as the checkpoint
    names them: what `convert_state_dict` leaves out (e.g. ``decoder.*`` for `CLIPSegModel`
    loaded from a segmentation checkpoint). Buffers the modules recompute are not counted."""
    keys = set(keys)
    layout = _source_layout(keys)
    prefix = _PREFIX[target]
    foreign = set()
    for key in keys:
        if _IGNORED_BUFFERS.search(key):
            continue
        if not _lift(key, layout).startswith(prefix):
            foreign.add(key)
    return foreign


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], assign: bool = False
) -> None:
    """Copy ``state_dict`` into ``model``, refusing missing, unexpected or mis-shaped keys.

    ``assign=True`` makes the model's parameters the given tensors (for a model built on the
    meta device) instead of copying into existing storage.

    Raises CheckpointError naming the keys (shapes included), so that a checkpoint and a
    config.json that disagree are caught here rather than as a broadcasting error later.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys {_short(misshaped)}")
    if problems:
        raise CheckpointError(
            f"the weights do not fit {type(model).__name__} as configured: "
            + "; ".join(problems)
            + ". Check that config.json belongs to these weights and that the model class "
            "matches the checkpoint"
        )
    model.load_state_dict(dict(state_dict), strict=True, assign=assign)


def _short(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


def first_float_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    """The dtype of the first floating-point tensor (what transformers' ``dtype="auto"`` takes
    when config.json names none), or None when there is none."""
    return next((t.dtype for t in state_dict.values() if t.is_floating_point()), None)


def parse_shard_size(size: int | str) -> int:
    """Bytes from an int or a string such as "5GB" (10**9), "500MiB" (2**20) or "100KB", as
    transformers reads ``max_shard_size``."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    units = {"GIB": 2**30, "MIB": 2**20, "KIB": 2**10, "GB": 10**9, "MB": 10**6, "KB": 10**3}
    text = str(size).strip().upper()
    for unit, factor in units.items():
        number = text.removesuffix(unit)
        if number != text and number.strip().isdigit() and int(number) > 0:
            return int(number) * factor
    raise ValueError(
        f"max_shard_size must be a positive number of bytes or a string such as '5GB', '500MiB', "
        f"got {size!r}"
    )


def _shards(state: Mapping[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """``state`` split in order into pieces of at most ``limit`` bytes (a larger tensor alone)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        if shards[-1] and size + tensor.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += tensor.nbytes
    return shards


def save_state_dict(
    model: nn.Module, directory: str | os.PathLike[str], max_shard_size: int | str = "50GB"
) -> Path:
    """Write ``model``'s parameters as safetensors (contiguous CPU copies) into ``directory``.

    One ``model.safetensors`` when they fit in ``max_shard_size`` (transformers' default, 50GB,
    holds any CLIPSeg), else ``model-0000i-of-0000n.safetensors`` shards and the
    ``model.safetensors.index.json`` that maps keys to them (the layout transformers writes and
    `read_state_dict` reads). Safetensors weights already in the directory are replaced.
    Returns the path of the single file or of the index.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    shards = _shards(state, parse_shard_size(max_shard_size))
    for stale in [directory / SAFE_WEIGHTS_NAME, directory / SAFE_WEIGHTS_INDEX_NAME]:
        stale.unlink(missing_ok=True)
    for stale in directory.glob("model-*-of-*.safetensors"):
        stale.unlink()
    if len(shards) == 1:
        path = directory / SAFE_WEIGHTS_NAME
        save_file(state, path, metadata={"format": "pt"})
        return path
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {
        "metadata": {"total_size": sum(t.nbytes for t in state.values())},
        "weight_map": weight_map,
    }
    path = directory / SAFE_WEIGHTS_INDEX_NAME
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
