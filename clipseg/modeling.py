"""The CLIPSeg models with the reference API of `transformers`.

`CLIPSegTextModel` and `CLIPSegVisionModel` are the CLIP towers, `CLIPSegModel` adds the
projections and the contrastive similarity, and `CLIPSegForImageSegmentation` adds the decoder
(`clipseg.decoder`). Parameter names equal the reference's state-dict keys, so Hugging Face
checkpoints load strictly; every class has ``from_pretrained`` / ``save_pretrained``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from clipseg.configuration import (
    CONFIG_NAME,
    GENERIC_DEFAULTS,
    CLIPSegConfig,
    CLIPSegTextConfig,
    CLIPSegVisionConfig,
)
from clipseg.decoder import CLIPSegDecoder
from clipseg.layers import ATTENTION_IMPLEMENTATIONS, MLP, Attention
from clipseg.outputs import (
    BaseModelOutputWithPooling,
    CLIPSegDecoderOutput,
    CLIPSegImageSegmentationOutput,
    CLIPSegOutput,
)
from clipseg.text import TextEmbeddings, TextTower
from clipseg.vision import VisionEmbeddings, VisionTower
from clipseg.weights import (
    CheckpointError,
    Layout,
    convert_state_dict,
    first_float_dtype,
    foreign_keys,
    fresh_copy,
    load_state_dict_strict,
    read_state_dict,
    resolve_checkpoint,
    save_state_dict,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CLIPSegPreTrainedModel",
    "CLIPSegTextModel",
    "CLIPSegVisionModel",
    "CLIPSegModel",
    "CLIPSegForImageSegmentation",
]

_M = TypeVar("_M", bound="CLIPSegPreTrainedModel")


class CLIPSegPreTrainedModel(nn.Module):
    """Checkpoint I/O and weight initialisation shared by the CLIPSeg model classes."""

    config_class: type = CLIPSegConfig
    layout: Layout = "segmentation"
    base_model_prefix = "clip"  # transformers' names
    main_input_name = "input_ids"

    # -- configs -----------------------------------------------------------------------------

    @classmethod
    def _config_from_dict(cls, data: dict[str, Any]) -> Any:
        """This class's config from a config.json dict (a full CLIPSeg config, or a tower's)."""
        return CLIPSegConfig.from_dict(data)

    @classmethod
    def _read_config(cls, directory: Path, **overrides: Any) -> Any:
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no {CONFIG_NAME} in {directory}: a checkpoint directory needs config.json next "
                "to its weights"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON ({exc}); download it again") from exc
        model_type = data.get("model_type", "clipseg")
        if not str(model_type).startswith("clipseg"):
            raise CheckpointError(
                f"{path} describes a {model_type!r} model, not CLIPSeg; pass a CLIPSeg checkpoint"
            )
        config = cls._config_from_dict(data)
        return config.updated(**overrides) if overrides else config

    # -- loading and saving ------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls: type[_M],
        name_or_path: str | os.PathLike[str] | None,
        *,
        config: Any = None,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        device: str | torch.device | int | None = None,
        dtype: torch.dtype | str | None = "auto",
        torch_dtype: torch.dtype | str | None = None,
        device_map: str | torch.device | int | None = None,
        local_files_only: bool = False,
        subfolder: str = "",
        attn_implementation: str | None = None,
        output_loading_info: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load a checkpoint directory, a hub id or ``"demo"`` (see `resolve_checkpoint`).

        The weights are mapped to this class's keys (`convert_state_dict`: a segmentation
        checkpoint gives `CLIPSegModel` and the towers exactly its ``clip.*`` weights) and loaded
        strictly. Returns the model in eval mode. Its weights are ordinary tensors also when it
        is loaded inside ``torch.inference_mode()`` (as transformers' are), so it can later run
        under ``no_grad`` or be trained.

        Args:
            name_or_path: the checkpoint; None together with ``config`` and ``state_dict``.
            config: a config to use instead of the checkpoint's config.json.
            state_dict: the weights, with ``name_or_path=None`` and ``config`` (any CLIPSeg
                layout; copied, and loaded as strictly).
            device: where the model goes (default: the CPU).
            dtype: a torch.dtype, its name ("float16"), or "auto" (the default, as in
                transformers 5; None means the same): config.json's ``dtype`` (or
                ``torch_dtype``), else the dtype of the checkpoint's first floating-point tensor
                (a CIDAS checkpoint: float32). Pass ``torch.float32`` to load any checkpoint in
                float32.
            torch_dtype: transformers' older name for ``dtype``.
            device_map: a single device ("cpu", "cuda:0", an index), the same as ``device``.
                Accelerate's multi-device maps ("auto", dicts) are not supported.
            local_files_only: resolve a hub id from the local cache only (no network).
            subfolder: the checkpoint lies in this folder of the directory or hub repository.
            attn_implementation: "sdpa" (the default: torch's scaled_dot_product_attention) or
                "eager" (explicit softmax, transformers' eager numbers). The attention weights
                (``output_attentions=True``) are returned with either.
            output_loading_info: also return transformers' loading report, ``(model, info)``:
                ``missing_keys`` and ``mismatched_keys`` are always empty (loading is strict:
                those raise `CheckpointError`), ``unexpected_keys`` are the checkpoint's keys this
                class does not own (a segmentation checkpoint's ``decoder.*`` for `CLIPSegModel`).
            **kwargs: config attributes to override (``output_hidden_states=True``,
                ``text_config={"eos_token_id": 2}``, ...), as in transformers. Anything else
                raises TypeError naming it.
        """
        device = _single_device(device, device_map)
        dtype = _requested_dtype(dtype, torch_dtype)
        implementation = _attention_implementation(attn_implementation)
        if name_or_path is None:
            if config is None or state_dict is None:
                raise ValueError(
                    f"{cls.__name__}.from_pretrained(None, ...) needs both config= and "
                    "state_dict= (there is no checkpoint to read them from); or pass the "
                    "checkpoint's directory"
                )
            directory = None
        elif state_dict is not None:
            raise ValueError(
                f"{cls.__name__}.from_pretrained got a checkpoint ({name_or_path!r}) and a "
                "state_dict: give one source of weights (for a state_dict: name_or_path=None "
                "and config=), as transformers asks"
            )
        else:
            directory = resolve_checkpoint(
                name_or_path, local_files_only=local_files_only, subfolder=subfolder
            )
        if config is None:
            config = cls._read_config(directory, **_config_overrides(cls, kwargs))
        elif kwargs:
            raise TypeError(
                f"{cls.__name__}.from_pretrained got {sorted(kwargs)} together with config=; "
                "set them on the config object instead"
            )
        else:
            config = copy.deepcopy(config)  # the model's config records its dtype: not theirs
        if dtype == "auto":
            dtype = _dtype_from_name(config.dtype) if config.dtype is not None else None
            auto_from_weights = dtype is None
        else:
            auto_from_weights = False
        # Ordinary tensors also inside torch.inference_mode(), as transformers loads them:
        # inference tensors could never take part in autograd nor record in-place changes.
        with torch.inference_mode(False):
            # One copy of the weights at the peak: read tensor by tensor into fresh storage,
            # already in ``dtype`` (read_state_dict), renamed without copying, and made the
            # parameters of a model built on the meta device (assign=True: no second set of
            # parameters to copy into).
            if state_dict is None:
                raw = read_state_dict(directory, dtype=dtype)
            else:  # the caller keeps theirs: the model gets copies in fresh storage
                raw = {k: fresh_copy(v, dtype) for k, v in state_dict.items()}
            unexpected = foreign_keys(raw, cls.layout)
            state = convert_state_dict(raw, cls.layout)
            del raw
            if auto_from_weights:  # the stored dtype; a tensor stored otherwise is converted
                dtype = first_float_dtype(state) or torch.get_default_dtype()
                state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
            with torch.device("meta"):
                model = cls(config)
            load_state_dict_strict(model, state, assign=True)
            del state  # the parameters are the only references left: .to() frees each moved
            model.to(device="cpu" if device is None else device, dtype=dtype)
        config.dtype = dtype
        if name_or_path is not None:
            config.name_or_path = name_or_path
        model.set_attn_implementation(implementation)
        logger.info("loaded %s from %s in %s", cls.__name__, directory or "a state dict", dtype)
        model.eval()
        if output_loading_info:
            info = {
                "missing_keys": set(),
                "unexpected_keys": unexpected,
                "mismatched_keys": set(),
                "error_msgs": [],
            }
            return model, info
        return model

    def _config_dict(self) -> dict[str, Any]:
        data = self.config.to_diff_dict()  # what transformers writes
        data["architectures"] = [type(self).__name__]
        data["dtype"] = str(self.dtype).removeprefix("torch.")  # what `dtype="auto"` reads
        return data

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        safe_serialization: bool = True,
        max_shard_size: int | str = "50GB",
    ) -> Path:
        """Write ``config.json`` and the weights (HF layout) into ``directory``.

        The weights are safetensors only: ``model.safetensors``, or shards of at most
        ``max_shard_size`` ("50GB", transformers' default, holds any CLIPSeg; "200MB", 10**8,
        ...) with their ``model.safetensors.index.json``, as transformers writes them.
        ``safe_serialization=False`` (pickled pytorch_model.bin) is refused.
        """
        if not safe_serialization:
            raise ValueError(
                "safe_serialization=False asks for a pickled pytorch_model.bin, which clipseg "
                "does not write (it only reads one); save as safetensors (the default), which "
                "transformers and clipseg both load"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(
            json.dumps(self._config_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        save_state_dict(self, directory, max_shard_size=max_shard_size)
        return directory

    # -- transformers' generic model API -------------------------------------------------------

    @property
    def base_model(self) -> nn.Module:
        """The module named `base_model_prefix` ("clip"), else the model itself."""
        return getattr(self, self.base_model_prefix, self)

    @property
    def name_or_path(self) -> str:
        return self.config.name_or_path

    def set_attn_implementation(self, attn_implementation: str | None) -> None:
        """Run every attention layer as "sdpa" or "eager" (see `from_pretrained`); recorded in
        the configs' ``_attn_implementation``, as transformers records it."""
        name = _attention_implementation(attn_implementation)
        for module in self.modules():
            if isinstance(module, Attention):
                module.implementation = name
        configs = [self.config, *(getattr(self.config, k) for k in self.config.sub_configs)]
        for config in configs:
            config._attn_implementation = name

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The number of parameters; only those that require gradients with
        ``only_trainable``; without the ``nn.Embedding`` tables with ``exclude_embeddings``."""
        embeddings = {
            id(p)
            for m in self.modules()
            if isinstance(m, nn.Embedding)
            for p in m.parameters(recurse=False)
        }
        return sum(
            p.numel()
            for p in self.parameters()
            if (p.requires_grad or not only_trainable)
            and not (exclude_embeddings and id(p) in embeddings)
        )

    def get_input_embeddings(self) -> nn.Module:
        """The module that embeds this model's main input; composite models have two inputs
        and raise NotImplementedError, as in transformers."""
        raise NotImplementedError(
            f"{type(self).__name__} takes text and images: ask its tower, e.g. "
            "model.text_model.get_input_embeddings() (CLIPSegForImageSegmentation: "
            "model.clip.text_model)"
        )

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.get_input_embeddings()  # raises for the composite models
        raise NotImplementedError  # pragma: no cover - the towers override both

    # -- random initialisation (the reference's scheme; only for models built from a config) --

    def _init_module(self, module: nn.Module, factor: float, std: float) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, TextEmbeddings):
            nn.init.normal_(module.token_embedding.weight, std=factor * 0.02)
            nn.init.normal_(module.position_embedding.weight, std=factor * 0.02)
        elif isinstance(module, VisionEmbeddings):
            nn.init.normal_(module.class_embedding, std=module.embed_dim**-0.5 * factor)
            nn.init.normal_(module.patch_embedding.weight, std=std * factor)
            nn.init.normal_(module.position_embedding.weight, std=std * factor)

    def init_weights(self) -> None:
        """Random weights as the reference initialises them (normal, scaled by depth)."""
        for tower, tower_config in self._tower_configs():
            factor = tower_config.initializer_factor
            std = tower_config.initializer_range
            depth = tower_config.num_hidden_layers
            for module in tower.modules():
                self._init_module(module, factor, std)
                if isinstance(module, Attention):
                    width = module.embed_dim
                    for proj in (module.q_proj, module.k_proj, module.v_proj):
                        nn.init.normal_(proj.weight, std=width**-0.5 * (2 * depth) ** -0.5 * factor)
                    nn.init.normal_(module.out_proj.weight, std=width**-0.5 * factor)
                elif isinstance(module, MLP):
                    width = module.fc1.in_features
                    nn.init.normal_(module.fc1.weight, std=(2 * width) ** -0.5 * factor)
                    nn.init.normal_(
                        module.fc2.weight, std=width**-0.5 * (2 * depth) ** -0.5 * factor
                    )

    def _tower_configs(self) -> list[tuple[nn.Module, Any]]:
        return []

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


# Multi-device dispatch (accelerate) is not implemented: a device map must name one device.
_MULTI_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _single_device(
    device: str | torch.device | int | None, device_map: Any
) -> str | torch.device | int | None:
    """``device`` and transformers' ``device_map`` reduced to one device (or None: the CPU)."""
    if device_map is None:
        return device
    if isinstance(device_map, dict) or device_map in _MULTI_DEVICE_MAPS:
        raise ValueError(
            f"device_map={device_map!r} spreads a model over devices (accelerate), which clipseg "
            "does not do; pass one device instead, e.g. device='cuda' (CLIPSeg fits on one GPU)"
        )
    if not isinstance(device_map, (str, int, torch.device)):
        raise TypeError(f"device_map must name one device, got {type(device_map).__name__}")
    if device is not None and torch.device(device) != torch.device(device_map):
        raise ValueError(f"device={device!r} and device_map={device_map!r} disagree; give one")
    return device_map


def _requested_dtype(dtype: Any, torch_dtype: Any) -> torch.dtype | str:
    """``dtype`` or its older name ``torch_dtype`` as a torch.dtype, or "auto" when neither names
    one (transformers 5 reads None as "auto" too)."""
    named = {_dtype_from_name(d) for d in (dtype, torch_dtype) if d is not None and d != "auto"}
    if len(named) > 1:
        raise ValueError(
            f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; give only dtype "
            "(torch_dtype is its older name)"
        )
    return named.pop() if named else "auto"


def _dtype_from_name(dtype: Any) -> torch.dtype:
    """A floating-point torch.dtype from itself or its name ("float16", "torch.bfloat16")."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype must be a floating-point torch.dtype, its name (e.g. 'float16') or 'auto', "
            f"got {dtype!r}"
        )
    return dtype


def _config_overrides(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that name config attributes (overrides, as in
    transformers); TypeError naming the rest, which would otherwise be ignored."""
    known = {f.name for f in dataclasses.fields(cls.config_class)}
    known |= {*GENERIC_DEFAULTS, "num_labels"}
    unsupported = sorted(set(kwargs) - known)
    if unsupported:
        raise TypeError(
            f"{cls.__name__}.from_pretrained got unsupported keyword argument(s) {unsupported}. "
            "It takes config, state_dict, device, dtype (or torch_dtype), device_map (one "
            "device), local_files_only, subfolder, attn_implementation, output_loading_info, "
            "and config attributes to override; remove the others"
        )
    return kwargs


def _attention_implementation(name: str | None) -> str:
    """transformers' ``attn_implementation`` checked: "sdpa" (None) or "eager"."""
    name = "sdpa" if name is None else name
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={name!r} is not supported; use 'sdpa' (the default, torch's "
            "scaled_dot_product_attention, which picks flash or memory-efficient kernels itself "
            "on a GPU) or 'eager'. Attention weights are returned with either"
        )
    return name


def _selected(
    states: tuple[torch.Tensor, ...], indices: set[int] | None
) -> tuple[torch.Tensor | None, ...]:
    """``states`` with those not at ``indices`` replaced by None (all kept for None)."""
    if indices is None:
        return states
    return tuple(state if i in indices else None for i, state in enumerate(states))


def _vector_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over the last axis, keepdim, computed as the reference does (bitwise equal)."""
    return torch.pow(torch.sum(torch.pow(x, 2), dim=-1, keepdim=True), 0.5)


def _contrastive_loss(similarity: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of a (B, B) text x image similarity matrix (CLIP's loss)."""
    targets = torch.arange(len(similarity), device=similarity.device)
    caption = nn.functional.cross_entropy(similarity, targets)
    image = nn.functional.cross_entropy(similarity.t(), targets)
    return (caption + image) / 2.0


class CLIPSegTextModel(TextTower, CLIPSegPreTrainedModel):
    """The CLIP text tower without projection: ``forward(input_ids, attention_mask=None,
    position_ids=None, *, output_attentions=None, output_hidden_states=None, return_dict=None)``
    (None: the config's setting)."""

    config_class = CLIPSegTextConfig
    layout: Layout = "text"
    main_input_name = "input_ids"

    def __init__(self, config: CLIPSegTextConfig) -> None:
        super().__init__(config)
        if not _on_meta(self):
            self.init_weights()
        self.set_attn_implementation(_configured_implementation(config))

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding table (vocab_size, hidden_size)."""
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.token_embedding = value

    @classmethod
    def _config_from_dict(cls, data: dict[str, Any]) -> CLIPSegTextConfig:
        if data.get("model_type", "clipseg") == "clipseg" or "text_config" in data:
            return CLIPSegConfig.from_dict(data).text_config
        return CLIPSegTextConfig.from_dict(data)

    def _tower_configs(self) -> list[tuple[nn.Module, Any]]:
        return [(self, self.config)]


class CLIPSegVisionModel(VisionTower, CLIPSegPreTrainedModel):
    """The CLIP vision tower without projection: ``forward(pixel_values,
    interpolate_pos_encoding=True, *, output_attentions=None, output_hidden_states=None,
    return_dict=None)`` (None: the config's setting)."""

    config_class = CLIPSegVisionConfig
    layout: Layout = "vision"
    main_input_name = "pixel_values"

    def __init__(self, config: CLIPSegVisionConfig) -> None:
        super().__init__(config)
        if not _on_meta(self):
            self.init_weights()
        self.set_attn_implementation(_configured_implementation(config))

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding (a convolution over patch_size x patch_size pixels)."""
        return self.embeddings.patch_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.patch_embedding = value

    @classmethod
    def _config_from_dict(cls, data: dict[str, Any]) -> CLIPSegVisionConfig:
        if data.get("model_type", "clipseg") == "clipseg" or "vision_config" in data:
            return CLIPSegConfig.from_dict(data).vision_config
        return CLIPSegVisionConfig.from_dict(data)

    def _tower_configs(self) -> list[tuple[nn.Module, Any]]:
        return [(self, self.config)]


def _on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def _configured_implementation(config: Any) -> str | None:
    """The attention implementation a config asks for (``attn_implementation=`` given to it)."""
    return getattr(config, "_attn_implementation", None)


class CLIPSegModel(CLIPSegPreTrainedModel):
    """CLIP: both towers, their projections to ``projection_dim`` and the learned temperature."""

    layout: Layout = "clip"

    def __init__(self, config: CLIPSegConfig) -> None:
        super().__init__()
        self.config = config
        self.projection_dim = config.projection_dim
        self.text_embed_dim = config.text_config.hidden_size
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_model = CLIPSegTextModel(config.text_config)
        self.vision_model = CLIPSegVisionModel(config.vision_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        if not _on_meta(self):
            self._init_projections()
        self.set_attn_implementation(_configured_implementation(config))

    def _init_projections(self) -> None:
        factor = self.config.initializer_factor
        nn.init.normal_(self.text_projection.weight, std=self.text_embed_dim**-0.5 * factor)
        nn.init.normal_(self.visual_projection.weight, std=self.vision_embed_dim**-0.5 * factor)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """The text tower's output with ``pooler_output`` replaced by its projection (B, D)
        (as `transformers` 5 returns it; v4 returned the (B, D) tensor itself).

        The output switches default (None) to the text tower's config (``config.text_config``),
        ``return_dict`` to this model's config, as in transformers 5."""
        out = self.text_model(
            input_ids,
            attention_mask,
            position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        out.pooler_output = self.text_projection(out.pooler_output)
        return out if self.config.default("return_dict", return_dict) else out.to_tuple()

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = True,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """The vision tower's output with ``pooler_output`` = visual_projection(post_layernorm
        (CLS)) (B, D). The switches default as `get_text_features`' (to ``config.vision_config``
        and, for ``return_dict``, this model's config)."""
        out = self.vision_model(
            pixel_values,
            interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        out.pooler_output = self.visual_projection(out.pooler_output)
        return out if self.config.default("return_dict", return_dict) else out.to_tuple()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = True,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CLIPSegOutput | tuple:
        """Image-text similarity: logits_per_image (B_image, B_text) = scale * cos; with
        ``return_loss`` the symmetric contrastive loss (needs B_image == B_text).

        ``output_attentions`` and ``output_hidden_states`` default (None) to each tower's own
        config (``config.vision_config`` / ``config.text_config``), as transformers 5 reads
        them; ``return_dict`` to this model's config."""
        return_dict = self.config.default("return_dict", return_dict)
        switches = {
            "output_attentions": output_attentions,
            "output_hidden_states": output_hidden_states,
            "return_dict": True,
        }
        vision = self.get_image_features(pixel_values, interpolate_pos_encoding, **switches)
        text = self.get_text_features(input_ids, attention_mask, position_ids, **switches)
        image_embeds = vision.pooler_output / _vector_norm(vision.pooler_output)
        text_embeds = text.pooler_output / _vector_norm(text.pooler_output)
        logits_per_text = torch.matmul(text_embeds, image_embeds.t().to(text_embeds.device))
        logits_per_text = logits_per_text * self.logit_scale.exp().to(text_embeds.device)
        logits_per_image = logits_per_text.t()
        loss = _contrastive_loss(logits_per_text) if return_loss else None
        out = CLIPSegOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text,
            vision_model_output=vision,
        )
        return out if return_dict else out.to_tuple()


class CLIPSegForImageSegmentation(CLIPSegPreTrainedModel):
    """CLIPSeg: the frozen CLIP model (``clip``) and the segmentation decoder (``decoder``).

    ``forward`` segments each query image (B, 3, H, W) for its own condition: ``input_ids``
    (B, T) text, ``conditional_pixel_values`` (B, 3, h, w) example images, or
    ``conditional_embeddings`` (B, D). Logits are (B, H, W), also for B = 1.
    """

    layout: Layout = "segmentation"

    def __init__(self, config: CLIPSegConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = CLIPSegModel(config)
        self.extract_layers = list(config.extract_layers)
        self.decoder = CLIPSegDecoder(config)
        if not _on_meta(self):
            self._init_decoder()
        self.set_attn_implementation(_configured_implementation(config))

    def _init_decoder(self) -> None:
        std = self.config.vision_config.initializer_range
        for module in self.decoder.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_conditional_embeddings(
        self,
        batch_size: int | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        conditional_pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, D) conditional vectors: projected text (EOS) or projected image (CLS) embeddings,
        computed without gradients (the CLIP towers are frozen)."""
        if input_ids is not None:
            if batch_size is not None and len(input_ids) != batch_size:
                raise ValueError("Make sure to pass as many prompt texts as there are query images")
            with torch.no_grad():
                return self.clip.get_text_features(
                    input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    output_attentions=False,
                    output_hidden_states=False,
                    return_dict=True,
                ).pooler_output
        if conditional_pixel_values is not None:
            if batch_size is not None and len(conditional_pixel_values) != batch_size:
                raise ValueError(
                    "Make sure to pass as many prompt images as there are query images"
                )
            with torch.no_grad():
                return self.clip.get_image_features(
                    conditional_pixel_values,
                    output_attentions=False,
                    output_hidden_states=False,
                    return_dict=True,
                ).pooler_output
        raise ValueError(
            "Invalid conditional, should be either provided as `input_ids` or "
            "`conditional_pixel_values`"
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        conditional_pixel_values: torch.Tensor | None = None,
        conditional_embeddings: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = True,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CLIPSegImageSegmentationOutput | tuple:
        """Segment ``pixel_values`` (B, 3, H, W); ``labels`` (B, H, W) in [0, 1] add the mean
        BCE-with-logits loss. Gradients flow only into the decoder, as in the reference.

        The output switches are keyword-only and read as transformers 5.24 reads them:

        - ``output_hidden_states=True`` returns every hidden state. Otherwise (None, False; no
          config consulted) the vision output holds the hidden states the decoder reads, at
          indices ``i + 1`` for ``i`` in ``extract_layers``, the others None, and the decoder
          output its own hidden states at those same indices, the others None (the output
          tuples have transformers 5.24's lengths).
        - ``output_attentions``: the argument, else ``config.vision_config``'s for the vision
          tower and this config's for the decoder.
        - ``return_dict``: the argument, else this config's.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values (the query images)")
        return_dict = self.config.default("return_dict", return_dict)
        decoder_attentions = self.config.default("output_attentions", output_attentions)
        read = None if output_hidden_states else {i + 1 for i in self.extract_layers}
        with torch.no_grad():
            vision = self.clip.get_image_features(
                pixel_values,
                interpolate_pos_encoding,
                output_attentions=output_attentions,
                output_hidden_states=True,
                return_dict=True,
            )
            activations = [vision.hidden_states[i + 1] for i in self.extract_layers]
            vision.hidden_states = _selected(vision.hidden_states, read)

        batch = pixel_values.shape[0]
        if conditional_embeddings is None:
            conditional_embeddings = self.get_conditional_embeddings(
                batch_size=batch,
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                conditional_pixel_values=conditional_pixel_values,
            )
        else:
            if conditional_embeddings.shape[0] != batch:
                raise ValueError(
                    "Make sure to pass as many conditional embeddings as there are query images "
                    "in the batch"
                )
            if conditional_embeddings.shape[1] != self.config.projection_dim:
                raise ValueError(
                    "Make sure that the feature dimension of the conditional embeddings matches"
                    f" `config.projection_dim` ({self.config.projection_dim})."
                )

        decoder_output: CLIPSegDecoderOutput = self.decoder(
            activations,
            conditional_embeddings,
            grid=self.clip.vision_model.grid_of(pixel_values),
            output_attentions=decoder_attentions,
            output_hidden_states=True,
        )
        decoder_output.hidden_states = _selected(decoder_output.hidden_states, read)
        logits = decoder_output.logits
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.device))
        out = CLIPSegImageSegmentationOutput(
            loss=loss,
            logits=logits,
            conditional_embeddings=conditional_embeddings,
            pooled_output=vision.pooler_output,
            vision_model_output=vision,
            decoder_output=decoder_output,
        )
        return out if return_dict else out.to_tuple()
