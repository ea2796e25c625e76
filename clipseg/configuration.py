"""CLIPSeg configuration as data: the text tower, the vision tower and the whole model.

The field names and defaults are those of `transformers`' `CLIPSegTextConfig`,
`CLIPSegVisionConfig` and `CLIPSegConfig`, so a Hugging Face ``config.json`` reads and writes
without translation. Reading is tolerant: unknown keys (the generic fields that transformers 4.25
dumped into every sub-config, ``architectures``, ``torch_dtype``, ...) are ignored, and the legacy
``text_config_dict`` / ``vision_config_dict`` keys are used only when ``text_config`` /
``vision_config`` are absent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["CLIPSegConfig", "CLIPSegTextConfig", "CLIPSegVisionConfig", "CONFIG_NAME"]

CONFIG_NAME = "config.json"

_T = TypeVar("_T", bound="_ConfigBase")


class _ConfigBase:
    """Dict conversion shared by the three configs (known fields in, unknown keys ignored)."""

    model_type: ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[_T], data: dict[str, Any]) -> _T:
        """Build a config from a ``config.json``-style dict; unknown keys are ignored."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        return cls._from_fields(data)

    @classmethod
    def _from_fields(cls: type[_T], data: dict[str, Any]) -> _T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        known = {k: v for k, v in data.items() if k in names}
        ignored = sorted(set(data) - names)
        if ignored:
            logger.debug("%s: ignoring unknown config keys %s", cls.__name__, ignored)
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able values, plus ``model_type`` (as transformers writes it)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        out["model_type"] = self.model_type
        return out

    def _check_heads(self) -> None:
        hidden, heads = self.hidden_size, self.num_attention_heads  # type: ignore[attr-defined]
        if heads <= 0 or hidden % heads != 0:
            raise ValueError(
                f"{type(self).__name__}: hidden_size ({hidden}) must be a multiple of "
                f"num_attention_heads ({heads})"
            )


def _plain(value: Any) -> Any:
    if isinstance(value, _ConfigBase):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass
class CLIPSegTextConfig(_ConfigBase):
    """The CLIP text tower (a causal transformer over BPE tokens, pooled at the EOS token)."""

    model_type: ClassVar[str] = "clipseg_text_model"

    vocab_size: int = 49408  # CLIP BPE: 256 bytes x 2 + 48,894 merges + 2 specials
    hidden_size: int = 512  # width of the text transformer
    intermediate_size: int = 2048  # MLP width (4 x hidden)
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77  # CLIP's context length
    hidden_act: str = "quick_gelu"  # x * sigmoid(1.702 x)
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02  # std of the normal init (random weights only)
    initializer_factor: float = 1.0  # scales every init std (testing knob in the reference)
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406  # <|startoftext|>
    # <|endoftext|>; checkpoints written before transformers PR #24773 carry a legacy 2, which
    # means "pool at input_ids.argmax(-1)" (the highest token id, which is the EOS token in CLIP).
    eos_token_id: int | None = 49407

    def __post_init__(self) -> None:
        self._check_heads()


@dataclass
class CLIPSegVisionConfig(_ConfigBase):
    """The CLIP vision tower (a ViT with a class token and pre-LN blocks)."""

    model_type: ClassVar[str] = "clipseg_vision_model"

    hidden_size: int = 768  # ViT-B width
    intermediate_size: int = 3072  # MLP width (4 x hidden)
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224  # training resolution: (224 / patch)^2 + 1 position embeddings
    patch_size: int = 32  # the CIDAS checkpoints use 16
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if len(set(value)) != 1:
                    raise ValueError(
                        f"CLIPSegVisionConfig: non-square {name} {value} is unsupported"
                    )
                setattr(self, name, int(value[0]))
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"CLIPSegVisionConfig: image_size ({self.image_size}) must be a multiple of "
                f"patch_size ({self.patch_size})"
            )
        self._check_heads()

    @property
    def grid_size(self) -> int:
        """Side of the trained position-embedding grid (224 / 16 = 14 for the CIDAS models)."""
        return self.image_size // self.patch_size


@dataclass
class CLIPSegConfig(_ConfigBase):
    """The whole CLIPSeg model: CLIP towers, projections and the segmentation decoder."""

    model_type: ClassVar[str] = "clipseg"

    text_config: CLIPSegTextConfig = field(default_factory=CLIPSegTextConfig)
    vision_config: CLIPSegVisionConfig = field(default_factory=CLIPSegVisionConfig)
    projection_dim: int = 512  # shared text/image embedding size (the conditional vector)
    logit_scale_init_value: float = 2.6592  # log(1 / 0.07), CLIP's temperature
    initializer_factor: float = 1.0
    extract_layers: list[int] = field(default_factory=lambda: [3, 6, 9])  # 0-based vision blocks
    reduce_dim: int = 64  # decoder width (rd64 / rd16)
    decoder_num_attention_heads: int = 4
    decoder_attention_dropout: float = 0.0
    # Kept for file compatibility: the reference decoder always uses ReLU, whatever this says.
    decoder_hidden_act: str = "quick_gelu"
    decoder_intermediate_size: int = 2048
    conditional_layer: int = 0  # FiLM is applied before this decoder layer
    use_complex_transposed_convolution: bool = False  # True: the "refined" upsampler

    def __post_init__(self) -> None:
        if self.text_config is None:
            self.text_config = CLIPSegTextConfig()
        elif isinstance(self.text_config, dict):
            self.text_config = CLIPSegTextConfig.from_dict(self.text_config)
        if self.vision_config is None:
            self.vision_config = CLIPSegVisionConfig()
        elif isinstance(self.vision_config, dict):
            self.vision_config = CLIPSegVisionConfig.from_dict(self.vision_config)
        self.extract_layers = [int(i) for i in self.extract_layers]
        depth = self.vision_config.num_hidden_layers
        if not self.extract_layers or any(not 0 <= i < depth for i in self.extract_layers):
            raise ValueError(
                f"CLIPSegConfig: extract_layers {self.extract_layers} must be non-empty indices of "
                f"the {depth} vision blocks (0-based)"
            )
        if not 0 <= self.conditional_layer < len(self.extract_layers):
            raise ValueError(
                f"CLIPSegConfig: conditional_layer ({self.conditional_layer}) must index one of "
                f"the {len(self.extract_layers)} decoder layers"
            )
        if self.reduce_dim % self.decoder_num_attention_heads != 0:
            raise ValueError(
                f"CLIPSegConfig: reduce_dim ({self.reduce_dim}) must be a multiple of "
                f"decoder_num_attention_heads ({self.decoder_num_attention_heads})"
            )
        if self.use_complex_transposed_convolution and self.vision_config.patch_size % 4 != 0:
            raise ValueError(
                "CLIPSegConfig: use_complex_transposed_convolution needs a patch_size divisible by "
                f"4 (two stride-patch/4 upsamplings), got {self.vision_config.patch_size}"
            )

    @classmethod
    def from_text_vision_configs(
        cls,
        text_config: CLIPSegTextConfig,
        vision_config: CLIPSegVisionConfig,
        **kwargs: Any,
    ) -> CLIPSegConfig:
        """Compose a config from tower configs; ``kwargs`` set the top-level fields."""
        return cls(text_config=text_config, vision_config=vision_config, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLIPSegConfig:
        """Read a ``config.json`` dict: ``text_config``/``vision_config`` preferred over the legacy
        ``*_config_dict`` keys (transformers 4.25 files may carry both)."""
        if not isinstance(data, dict):
            raise TypeError(f"CLIPSegConfig.from_dict expects a dict, got {type(data).__name__}")
        data = dict(data)
        for tower in ("text", "vision"):
            legacy = data.pop(f"{tower}_config_dict", None)
            current = data.get(f"{tower}_config")
            if current is None and legacy is not None:
                data[f"{tower}_config"] = legacy
            elif current is not None and legacy is not None:
                logger.debug(
                    "config: both %s_config and %s_config_dict; using the former", tower, tower
                )
        return cls._from_fields(data)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["architectures"] = ["CLIPSegForImageSegmentation"]
        return out

    # -- files -------------------------------------------------------------------------------

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> CLIPSegConfig:
        """Read a ``config.json`` file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no {CONFIG_NAME} at {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path} is not valid JSON ({exc}); re-download the checkpoint"
            ) from exc
        model_type = data.get("model_type")
        if model_type not in (None, cls.model_type):
            raise ValueError(
                f"{path} describes a {model_type!r} model, not {cls.model_type!r}: this is not a "
                "CLIPSeg checkpoint"
            )
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str]) -> CLIPSegConfig:
        """Read ``config.json`` from a checkpoint directory, a hub id or ``"demo"``."""
        from clipseg.weights import resolve_checkpoint

        return cls.from_json_file(resolve_checkpoint(name_or_path) / CONFIG_NAME)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` (current transformers layout) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        path.write_text(
            json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        return path
