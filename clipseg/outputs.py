"""Model output containers: dataclasses that are also ordered dicts, as `transformers`'
``ModelOutput``.

The dict holds the fields that are not None, in declaration order: ``"logits" in out``,
``out["logits"]`` (KeyError for a None field), ``out.keys() / values() / items() / get()``,
iteration over the keys and ``dict(out)`` / ``**out`` all see only those. ``out[i]`` and
``out[a:b]`` index ``to_tuple()``: the set fields in order, nested outputs as tuples too (what
transformers' CLIPSeg outputs do). Setting a field (``out.loss = x``) adds it to the dict (at the
end, as in transformers). One deliberate difference: setting a field to None removes it from the
dict (transformers keeps the old value under the key while the attribute reads None).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ModelOutput",
    "BaseModelOutputWithPooling",
    "CLIPSegOutput",
    "CLIPSegDecoderOutput",
    "CLIPSegImageSegmentationOutput",
]


class ModelOutput(OrderedDict):
    """A dataclass whose non-None fields are also its dict items (see the module docstring)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._field_names():
            if value is None:
                super().pop(name, None)
            else:
                super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def _field_names(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_tuple(self) -> tuple[Any, ...]:
        """The set fields in order; nested outputs become tuples too."""
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())

    def __reduce__(self):  # pickle / deepcopy through the dataclass constructor
        args = tuple(getattr(self, f.name) for f in dataclasses.fields(self))  # type: ignore[arg-type]
        return type(self), args

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{type(self).__name__} fields cannot be removed or bulk-updated; set them as "
            "attributes (out.logits = ...), or copy to a dict first (dict(out))"
        )

    __delitem__ = pop = popitem = update = setdefault = clear = _refuse  # type: ignore[assignment]


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """Tower output.

    last_hidden_state: (B, T, C) output of the last block (before any final norm for the vision
    tower; after ``final_layer_norm`` for the text tower). pooler_output: (B, C) pooled state
    (vision: post_layernorm(CLS); text: the EOS token), or its projection (B, D) from
    ``get_*_features``. hidden_states: the first block's input then every block's output.
    attentions: per block (B, heads, T, T).
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CLIPSegOutput(ModelOutput):
    """`CLIPSegModel` output: similarity logits (image x text) and the normalised embeddings."""

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None  # (B_image, B_text)
    logits_per_text: torch.Tensor | None = None  # (B_text, B_image)
    text_embeds: torch.Tensor | None = None  # (B_text, D), unit norm
    image_embeds: torch.Tensor | None = None  # (B_image, D), unit norm
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


@dataclass
class CLIPSegDecoderOutput(ModelOutput):
    """Decoder output: logits (B, H, W); hidden_states: the first decoder layer's input (after
    FiLM) then each layer's output, (B, T, reduce_dim); attentions per layer."""

    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CLIPSegImageSegmentationOutput(ModelOutput):
    """`CLIPSegForImageSegmentation` output.

    loss: BCE-with-logits against ``labels``; logits: (B, H, W) always (also for B = 1);
    conditional_embeddings: (B, D); pooled_output: (B, D) projected image embedding.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    conditional_embeddings: torch.Tensor | None = None
    pooled_output: torch.Tensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    decoder_output: CLIPSegDecoderOutput | None = None
