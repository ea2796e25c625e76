"""CLIPSeg configuration as data: the text tower, the vision tower and the whole model.

The field names and defaults are those of `transformers`' `CLIPSegTextConfig`,
`CLIPSegVisionConfig` and `CLIPSegConfig`, so a Hugging Face ``config.json`` reads and writes
without translation. As in transformers, keys that are not fields (the generic fields that
transformers 4.25 dumped into every sub-config, ``architectures``, ``dtype``, ``foo=1`` given to
the constructor, ...) are kept as attributes and written back (``torch_dtype`` becomes ``dtype``;
``model_type`` and ``transformers_version`` are not kept). The legacy ``text_config_dict`` /
``vision_config_dict`` keys are used only when ``text_config`` / ``vision_config`` are absent.

Every config also carries transformers' generic attributes with its defaults (`GENERIC_DEFAULTS`:
``output_hidden_states``, ``output_attentions``, ``return_dict``, ``dtype``, ``id2label`` /
``label2id`` / ``num_labels``, ``problem_type``, ...), in `to_dict` as transformers 5 writes them.
The switches ``output_hidden_states``, ``output_attentions`` and ``return_dict`` (default False,
False, True) are the defaults of the models' ``forward`` arguments, as in transformers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

logger = logging.getLogger(__name__)

__all__ = ["CLIPSegConfig", "CLIPSegTextConfig", "CLIPSegVisionConfig", "CONFIG_NAME"]

CONFIG_NAME = "config.json"

_T = TypeVar("_T", bound="_ConfigBase")


# Keys of a config dict that are not kept: the class says its model_type; a stale version of the
# library that wrote the file would be misleading when written back.
_NOT_KEPT = ("model_type", "transformers_version", "_commit_hash")

# transformers 5's generic config attributes and the values a fresh config has (num_labels 2).
GENERIC_DEFAULTS: dict[str, Any] = {
    "return_dict": True,
    "output_hidden_states": False,
    "output_attentions": False,
    "dtype": None,
    "chunk_size_feed_forward": 0,
    "is_encoder_decoder": False,
    "architectures": None,
    "id2label": {0: "LABEL_0", 1: "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "problem_type": None,
    "_name_or_path": "",
}


class _ConfigBase:
    """What the three configs share: extra attributes, the generic forward switches, dicts, JSON
    and config.json files."""

    model_type: ClassVar[str] = ""
    # transformers' generic attributes that the models read; class-level defaults that an
    # instance overrides (then they are extra attributes, written by to_dict). Not dataclass
    # fields: this base is not a dataclass.
    output_hidden_states: bool = False
    output_attentions: bool = False
    return_dict: bool = True
    dtype: Any = None  # the weights' dtype (a torch.dtype; a name given is converted), if known
    chunk_size_feed_forward: int = 0  # unused by CLIPSeg; kept for transformers' generic API
    is_encoder_decoder: bool = False
    architectures: list[str] | None = None  # the model classes that wrote the checkpoint
    id2label: dict[int, str] | None = None  # set per instance (num_labels 2 by default)
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    _name_or_path: str = ""  # where from_pretrained read it (transformers' name_or_path)
    # name -> class of the nested configs (transformers' ``sub_configs``)
    sub_configs: ClassVar[dict[str, type]] = {}

    # -- extra attributes ----------------------------------------------------------------------

    def _set_extra(self, extra: dict[str, Any]) -> None:
        """Keep keys that are not fields as attributes (transformers does)."""
        extra = dict(extra)
        if "torch_dtype" in extra:  # transformers 5 renamed it; dtype wins when both are given
            legacy = extra.pop("torch_dtype")
            if extra.get("dtype") is None:
                extra["dtype"] = legacy
        for key in _NOT_KEPT:
            extra.pop(key, None)
        if "name_or_path" in extra:
            extra["_name_or_path"] = str(extra.pop("name_or_path"))
        if "attn_implementation" in extra:  # recorded, as transformers does; see from_pretrained
            extra["_attn_implementation"] = extra.pop("attn_implementation")
        num_labels = extra.pop("num_labels", None)
        if isinstance(extra.get("dtype"), str):  # as transformers 5: the torch.dtype, not its name
            named = getattr(torch, extra["dtype"].removeprefix("torch."), None)
            if isinstance(named, torch.dtype):
                extra["dtype"] = named
        if extra.get("id2label") is not None:  # JSON object keys are strings; ids are ints
            extra["id2label"] = {int(k): v for k, v in extra["id2label"].items()}
        else:  # as transformers: no label names means num_labels (default 2) named LABEL_i
            extra.pop("id2label", None)
            extra.pop("label2id", None)
            self.num_labels = 2 if num_labels is None else int(num_labels)
        for key, value in extra.items():
            existing = getattr(type(self), key, None)
            if callable(existing) or isinstance(existing, property):
                logger.warning(
                    "%s: not keeping config key %r, it names a method or property",
                    type(self).__name__,
                    key,
                )
                continue
            setattr(self, key, value)

    def _extra_names(self) -> list[str]:
        fields = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return [
            k
            for k in vars(self)
            if k not in fields and k not in GENERIC_DEFAULTS and not k.startswith("_")
        ]

    def _attribute_names(self) -> set[str]:
        """Names a config dict or an override may set: fields, generic attributes, extras."""
        fields = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        generic = {*GENERIC_DEFAULTS, "num_labels", "name_or_path", "attn_implementation"}
        return fields | generic | set(self._extra_names())

    @property
    def use_return_dict(self) -> bool:
        """Whether the models return output objects by default (transformers' name)."""
        return bool(self.return_dict)

    @property
    def num_labels(self) -> int | None:
        """The number of labels: ``len(id2label)`` (None when id2label is None), as transformers.
        Setting it to a new number resets ``id2label`` / ``label2id`` to LABEL_0, LABEL_1, ..."""
        return None if self.id2label is None else len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if self.id2label is None or len(self.id2label) != value:
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}
            self.label2id = {name: i for i, name in self.id2label.items()}

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: Any) -> None:
        self._name_or_path = str(value)

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> Any:
        """The config of the text tower: ``text_config`` for the whole model (unless only the
        encoder side is asked for, as transformers looks up a "text_encoder"), else self."""
        text = getattr(self, "text_config", None)
        if isinstance(text, _ConfigBase) and (decoder == encoder or decoder):
            return text
        return self

    def default(self, name: str, value: Any) -> Any:
        """``value``, or this config's attribute ``name`` when ``value`` is None (how a forward
        argument such as ``output_hidden_states=None`` takes the config's setting)."""
        return getattr(self, name) if value is None else value

    def updated(self: _T, **changes: Any) -> _T:
        """A copy with ``changes`` applied and validated; TypeError names unknown attributes.

        A dict given for a nested config (``text_config={"vocab_size": 20}``) is merged into
        that config (keys it does not have become extra attributes), as transformers merges it;
        a config object replaces it."""
        unknown = sorted(set(changes) - self._attribute_names())
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no attribute(s) {unknown}: check the spelling; to "
                "add a new attribute, set it on the config object (config.name = value)"
            )
        data = self.to_dict()
        for key, value in changes.items():
            current = getattr(self, key, None)
            if isinstance(current, _ConfigBase) and isinstance(value, dict):
                # the constructor's data, as CLIPSegConfig(text_config={...}): new keys kept
                data[key] = type(current).from_dict({**current.to_dict(), **value})
            else:
                data[key] = value
        if "num_labels" in changes and "id2label" not in changes:
            data.pop("id2label", None)  # the new number of labels, named LABEL_i
            data.pop("label2id", None)
        return type(self).from_dict(data)

    # -- dicts and JSON --------------------------------------------------------------------------

    @classmethod
    def from_dict(cls: type[_T], data: dict[str, Any], **kwargs: Any) -> Any:
        """Build a config from a ``config.json``-style dict; keys that are not fields are kept as
        attributes. ``kwargs`` override attributes (TypeError for names the config does not
        have, unless ``return_unused_kwargs=True``: then ``(config, unused)`` is returned, as
        in transformers)."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        return_unused = kwargs.pop("return_unused_kwargs", False)
        config = cls._from_fields(cls._prepare(data))
        if not kwargs:
            return (config, {}) if return_unused else config
        names = config._attribute_names()
        unused = {k: v for k, v in kwargs.items() if k not in names}
        if unused and not return_unused:
            config.updated(**unused)  # raises the TypeError naming them
        config = config.updated(**{k: v for k, v in kwargs.items() if k in names})
        return (config, unused) if return_unused else config

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook: a dict as read from a file -> the keys of this class (legacy layouts)."""
        return data

    @classmethod
    def _from_fields(cls: type[_T], data: dict[str, Any]) -> _T:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """All fields, the generic attributes (`GENERIC_DEFAULTS`) and extra attributes as plain
        values (a dtype as its name), plus ``model_type``, as transformers 5 writes them (without
        its ``transformers_version``)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        out.update({k: _plain(getattr(self, k)) for k in GENERIC_DEFAULTS})
        out.update({k: _plain(getattr(self, k)) for k in self._extra_names()})
        out["model_type"] = self.model_type
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """`to_dict` without the generic attributes that have their default value and without
        ``_name_or_path`` (nested configs likewise), as transformers' ``to_diff_dict``: what
        ``config.json`` holds. The config's own fields are always written."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            attr = getattr(self, key, None)
            if isinstance(attr, _ConfigBase):
                out[key] = attr.to_diff_dict()
            elif key == "_name_or_path" or GENERIC_DEFAULTS.get(key, _NO_DEFAULT) == value:
                continue
            else:
                out[key] = value
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        """`to_diff_dict` (or, with ``use_diff=False``, `to_dict`) as indented JSON with sorted
        keys, as transformers writes it; `save_pretrained` writes the former."""
        data = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike[str], use_diff: bool = True) -> None:
        """Write `to_json_string` to ``path``."""
        Path(path).write_text(self.to_json_string(use_diff), encoding="utf-8")

    # -- files -----------------------------------------------------------------------------------

    # model_type values of a config.json this class reads (a sub-config also reads a full one)
    _readable_types: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _from_config_json(cls: type[_T], data: dict[str, Any]) -> dict[str, Any]:
        """Hook: the part of a config.json dict this class is built from."""
        return data

    @classmethod
    def _read_json_file(cls, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no {CONFIG_NAME} at {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path} is not valid JSON ({exc}); re-download the checkpoint"
            ) from exc
        model_type = data.get("model_type")
        if model_type not in (None, cls.model_type, *cls._readable_types):
            raise ValueError(
                f"{path} describes a {model_type!r} model, not {cls.model_type!r}: this is not a "
                "CLIPSeg checkpoint"
            )
        return cls._from_config_json(data)

    @classmethod
    def from_json_file(cls: type[_T], path: str | os.PathLike[str]) -> _T:
        """Read a ``config.json`` file (a sub-config takes its part of a full CLIPSeg one)."""
        return cls.from_dict(cls._read_json_file(Path(path)))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        local_files_only: bool = False,
        subfolder: str = "",
        **kwargs: Any,
    ) -> Any:
        """Read ``config.json`` from a checkpoint directory, a hub id or ``"demo"`` (in its
        ``subfolder`` when one is named).

        A sub-config (`CLIPSegTextConfig`, `CLIPSegVisionConfig`) reads its part of a full
        CLIPSeg config.json, as transformers does. ``kwargs`` override attributes (see
        `from_dict`, also for ``return_unused_kwargs``).
        """
        from clipseg.weights import resolve_checkpoint

        directory = resolve_checkpoint(
            name_or_path, local_files_only=local_files_only, subfolder=subfolder
        )
        return cls.from_dict(cls._read_json_file(directory / CONFIG_NAME), **kwargs)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` (current transformers layout) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        self.to_json_file(path)
        return path

    def _check_heads(self) -> None:
        hidden, heads = self.hidden_size, self.num_attention_heads  # type: ignore[attr-defined]
        if heads <= 0 or hidden % heads != 0:
            raise ValueError(
                f"{type(self).__name__}: hidden_size ({hidden}) must be a multiple of "
                f"num_attention_heads ({heads})"
            )


_NO_DEFAULT = object()


def _plain(value: Any) -> Any:
    if isinstance(value, _ConfigBase):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return dict(value)  # a copy: to_dict's caller may change it
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")  # torch.float16 -> "float16", as transformers
    return value


def _keeps_extra_kwargs(cls: type[_T]) -> type[_T]:
    """Let a config dataclass's constructor take keys that are not fields, kept as attributes
    (after the fields are validated), as transformers' configs do."""
    fields_init = cls.__init__
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @functools.wraps(fields_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in names}
        fields_init(self, *args, **kwargs)
        self._set_extra(extra)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def _tower_part(data: dict[str, Any], tower: str) -> dict[str, Any]:
    """A tower's dict in a full CLIPSeg config.json (``text_config`` preferred over the legacy
    ``text_config_dict``), or ``data`` itself when it is a tower's own config.json."""
    keys = (f"{tower}_config", f"{tower}_config_dict")
    if data.get("model_type") != "clipseg" and not any(k in data for k in keys):
        return data
    part = data.get(f"{tower}_config")
    if part is None:
        part = data.get(f"{tower}_config_dict") or {}
    return dict(part)


@_keeps_extra_kwargs
@dataclass
class CLIPSegTextConfig(_ConfigBase):
    """The CLIP text tower (a causal transformer over BPE tokens, pooled at the EOS token)."""

    model_type: ClassVar[str] = "clipseg_text_model"
    _readable_types: ClassVar[tuple[str, ...]] = ("clipseg",)

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

    @classmethod
    def _from_config_json(cls, data: dict[str, Any]) -> dict[str, Any]:
        return _tower_part(data, "text")


@_keeps_extra_kwargs
@dataclass
class CLIPSegVisionConfig(_ConfigBase):
    """The CLIP vision tower (a ViT with a class token and pre-LN blocks)."""

    model_type: ClassVar[str] = "clipseg_vision_model"
    _readable_types: ClassVar[tuple[str, ...]] = ("clipseg",)

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

    @classmethod
    def _from_config_json(cls, data: dict[str, Any]) -> dict[str, Any]:
        return _tower_part(data, "vision")


@_keeps_extra_kwargs
@dataclass
class CLIPSegConfig(_ConfigBase):
    """The whole CLIPSeg model: CLIP towers, projections and the segmentation decoder."""

    model_type: ClassVar[str] = "clipseg"
    sub_configs: ClassVar[dict[str, type]] = {
        "vision_config": CLIPSegVisionConfig,
        "text_config": CLIPSegTextConfig,
    }

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
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``text_config``/``vision_config`` preferred over the legacy ``*_config_dict`` keys
        (transformers 4.25 files may carry both)."""
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
        return data
