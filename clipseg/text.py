"""The CLIP text tower: token + position embeddings, causal pre-LN blocks, pooled at EOS."""

from __future__ import annotations

import torch
from torch import nn

from clipseg.configuration import CLIPSegTextConfig
from clipseg.layers import Encoder
from clipseg.outputs import BaseModelOutputWithPooling

__all__ = ["TextEmbeddings", "TextTower", "eos_positions", "LEGACY_EOS_TOKEN_ID"]

# Configs written before transformers PR #24773 say eos_token_id 2; the reference then pools at the
# highest token id of each row (CLIP's <|endoftext|> is the largest id in its vocabulary).
LEGACY_EOS_TOKEN_ID = 2


def eos_positions(input_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """(B,) index of the token each row is pooled at, as the reference computes it.

    Legacy ``eos_token_id == 2``: ``input_ids.argmax(-1)``; otherwise the first position of
    ``eos_token_id`` (padding may repeat the EOS id, so the first one is the real end).
    """
    ids = input_ids.to(dtype=torch.int)
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


class TextEmbeddings(nn.Module):
    """Token ids (B, T) -> (B, T, C): token embedding + learned absolute position embedding."""

    def __init__(self, config: CLIPSegTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        length = input_ids.shape[-1]
        limit = self.position_embedding.weight.shape[0]
        if length > limit:
            raise ValueError(
                f"Sequence length must be less than max_position_embeddings (got `sequence "
                f"length`: {length} and max_position_embeddings: {limit}); truncate the prompt"
            )
        if position_ids is None:
            position_ids = torch.arange(length, device=input_ids.device).unsqueeze(0)
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


class TextTower(nn.Module):
    """The reference's text model body (names: embeddings, encoder, final_layer_norm).
    `clipseg.modeling.CLIPSegTextModel` adds checkpoint I/O."""

    def __init__(self, config: CLIPSegTextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(
            config.num_hidden_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            config.hidden_act,
            config.layer_norm_eps,
            config.attention_dropout,
        )
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def eos_token_id(self) -> int | None:
        return self.config.eos_token_id

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Encode (B, T) token ids (``attention_mask`` (B, T): 1 = token, 0 = padding).

        The output switches are keyword-only, as in transformers 5; None takes this tower's
        config (its sub-config in a composite model, as transformers 5 reads it).

        last_hidden_state (B, T, C) is after ``final_layer_norm``; pooler_output (B, C) is the
        state at the EOS token (see `eos_positions`); hidden_states[-1] is before the final norm.
        """
        if input_ids is None:
            raise ValueError("You have to specify input_ids")
        # None takes the config's setting, as in transformers
        output_attentions = self.config.default("output_attentions", output_attentions)
        output_hidden_states = self.config.default("output_hidden_states", output_hidden_states)
        return_dict = self.config.default("return_dict", return_dict)
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        x = self.embeddings(input_ids, position_ids)  # (B, T, C)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # causal AND key-is-a-token, (B, 1, T, T), True = attend (as the reference builds it)
            length = x.shape[1]
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            keys = attention_mask.to(device=x.device, dtype=torch.bool)[:, None, None, :]
            mask = causal[None, None] & keys
        last, hidden, attentions = self.encoder(
            x,
            attention_mask=mask,
            is_causal=True,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        last = self.final_layer_norm(last)
        rows = torch.arange(last.shape[0], device=last.device)
        pooled = last[rows, eos_positions(input_ids, self.eos_token_id).to(last.device)]
        out = BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=hidden,
            attentions=attentions,
        )
        return out if return_dict else out.to_tuple()
