"""Model output containers: dataclasses with attribute access, as in `transformers`.

Like `transformers`' ``ModelOutput``, ``output[i]`` indexes the fields that are not None (in
declaration order), ``output["logits"]`` reads a field by name and ``to_tuple()`` gives the
non-None fields as a tuple.
"""

from __future__ import annotations

import dataclasses
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


class ModelOutput:
    """Tuple-like access to a dataclass's non-None fields."""

    def keys(self) -> list[str]:
        """Names of the fields that are set (not None)."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]  # type: ignore[arg-type]

    def to_tuple(self) -> tuple[Any, ...]:
        """The set fields in order; nested outputs become tuples too."""
        return tuple(
            v.to_tuple() if isinstance(v, ModelOutput) else v
            for v in (getattr(self, k) for k in self.keys())
        )

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return tuple(getattr(self, k) for k in self.keys())[key]

    def __iter__(self):  # iterate like a tuple of the set fields
        return iter(getattr(self, k) for k in self.keys())

    def __len__(self) -> int:
        return len(self.keys())


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
