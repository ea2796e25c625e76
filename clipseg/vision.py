"""The CLIP vision tower: patch embedding, class token, position embeddings, pre-LN blocks.

The position embeddings were trained on a (image_size / patch_size)^2 grid (14 x 14 for the CIDAS
checkpoints); other inputs (352 px -> 22 x 22) use `resample_position_embeddings`, cached per grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipseg.configuration import CLIPSegVisionConfig
from clipseg.layers import Encoder
from clipseg.outputs import BaseModelOutputWithPooling

__all__ = ["resample_position_embeddings", "VisionEmbeddings", "VisionTower"]


def resample_position_embeddings(
    weight: torch.Tensor, grid: tuple[int, int], trained_grid: int
) -> torch.Tensor:
    """Position embeddings for a ``grid`` = (rows, cols) patch grid.

    ``weight`` is the (1 + trained_grid^2, C) table: the class position is kept as is, the
    patch positions are reshaped to their square grid and resized bicubically
    (``align_corners=False``, as the reference). Returns (1, 1 + rows * cols, C).
    """
    dim = weight.shape[-1]
    table = weight.unsqueeze(0)  # (1, 1 + n, C)
    class_pos, patch_pos = table[:, :1], table[:, 1:]
    patch_pos = patch_pos.reshape(1, trained_grid, trained_grid, dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).view(1, -1, dim)  # (1, rows * cols, C)
    return torch.cat((class_pos, patch_pos), dim=1)


class VisionEmbeddings(nn.Module):
    """Pixels (B, 3, H, W) -> tokens (B, 1 + rows * cols, C): class token + patches + positions."""

    def __init__(self, config: CLIPSegVisionConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.trained_grid = config.grid_size
        self.class_embedding = nn.Parameter(torch.empty(self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            self.embed_dim,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            bias=False,
        )
        self.num_positions = self.trained_grid**2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def position_embeddings(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, 1 + rows * cols, C) position embeddings for ``grid``; resampled ones are cached
        per grid size (and invalidated when the table changes), except while gradients flow.

        A table that is an inference tensor (the model was built or moved inside
        ``torch.inference_mode``) has no version counter, so a change made to it in place could
        not be seen: it is resampled on every call (3-16 ms per image) instead of cached.
        `CLIPSegPreTrainedModel.from_pretrained` never makes one, also inside inference_mode.
        """
        weight = self.position_embedding.weight
        if grid == (self.trained_grid, self.trained_grid):
            return weight.unsqueeze(0)
        if (torch.is_grad_enabled() and weight.requires_grad) or weight.is_inference():
            return resample_position_embeddings(weight, grid, self.trained_grid)
        key = (grid, weight.data_ptr(), weight._version, weight.dtype, weight.device)
        cached = self._pos_cache.get(key)
        if cached is None:
            self._pos_cache.clear()
            with torch.no_grad():
                cached = resample_position_embeddings(weight, grid, self.trained_grid)
            self._pos_cache[key] = cached
        return cached

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = True
    ) -> torch.Tensor:
        batch, _, height, width = pixel_values.shape
        if not interpolate_pos_encoding and (height != self.image_size or width != self.image_size):
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match model "
                f"({self.image_size}*{self.image_size}); pass interpolate_pos_encoding=True"
            )
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(
                f"input {height}x{width} is smaller than one {self.patch_size}px patch"
            )
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(dtype=weight.dtype))  # (B, C, rows, cols)
        grid = (patches.shape[2], patches.shape[3])
        patches = patches.flatten(2).transpose(1, 2)  # (B, rows * cols, C)
        class_tokens = self.class_embedding.expand(batch, 1, -1)
        tokens = torch.cat([class_tokens, patches], dim=1)  # (B, 1 + rows * cols, C)
        return tokens + self.position_embeddings(grid)


class VisionTower(nn.Module):
    """The reference's vision model body (names: embeddings, pre_layrnorm, encoder,
    post_layernorm). `clipseg.modeling.CLIPSegVisionModel` adds checkpoint I/O."""

    def __init__(self, config: CLIPSegVisionConfig) -> None:
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.embeddings = VisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(width, eps=config.layer_norm_eps)  # (sic)
        self.encoder = Encoder(
            config.num_hidden_layers,
            width,
            config.num_attention_heads,
            config.intermediate_size,
            config.hidden_act,
            config.layer_norm_eps,
            config.attention_dropout,
        )
        self.post_layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)

    def grid_of(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        """The (rows, cols) patch grid that ``pixel_values`` (B, 3, H, W) produce."""
        patch = self.config.patch_size
        return pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch

    def hidden_states_upto(
        self,
        pixel_values: torch.Tensor,
        layers: list[int],
        interpolate_pos_encoding: bool = True,
    ) -> list[torch.Tensor]:
        """Outputs (B, T, C) of the 0-based blocks ``layers``, running no block past the deepest.

        This is what the segmentation decoder reads; blocks after ``max(layers)``, the
        post-layernorm and the projection are not computed.
        """
        x = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        wanted = set(layers)
        found: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.encoder.layers[: max(layers) + 1]):
            x, _ = layer(x)
            if index in wanted:
                found[index] = x
        return [found[i] for i in layers]

    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = True,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Encode (B, 3, H, W) pixels (H, W multiples of the patch size): last_hidden_state
        (B, 1 + rows * cols, C) and pooler_output = post_layernorm(CLS) (B, C).

        The second positional argument is ``interpolate_pos_encoding`` and the output switches
        are keyword-only, as in transformers 5; None takes this tower's config (its sub-config
        in a composite model, as transformers 5 reads it)."""
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        # None takes the config's setting, as in transformers
        output_attentions = self.config.default("output_attentions", output_attentions)
        output_hidden_states = self.config.default("output_hidden_states", output_hidden_states)
        return_dict = self.config.default("return_dict", return_dict)
        x = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        last, hidden, attentions = self.encoder(
            x, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        pooled = self.post_layernorm(last[:, 0, :])
        out = BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=hidden,
            attentions=attentions,
        )
        return out if return_dict else out.to_tuple()
