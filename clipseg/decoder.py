"""CLIPSeg's segmentation decoder: reduce, FiLM-condition, attend, upsample.

For the extracted vision activations (deepest first) the decoder computes
``out = reduce_i(activation_i) (+ out)``, applies FiLM with the conditional vector before layer
``conditional_layer``, runs a post-LN transformer layer, and finally upsamples the patch tokens to
pixels with transposed convolutions. Everything up to the FiLM depends only on the image, so the
decoder is split into `CLIPSegDecoder.reduce` (per image) and `CLIPSegDecoder.decode` (per prompt,
broadcasting one image over many prompts); `forward` composes them like the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clipseg.configuration import CLIPSegConfig
from clipseg.layers import DecoderLayer
from clipseg.outputs import CLIPSegDecoderOutput

__all__ = ["CLIPSegDecoder", "ReducedActivations"]


class ReducedActivations:
    """The prompt-independent part of a decoder pass for a batch of images.

    ``reduced[i]``: reduce_i applied to the i-th activation (deepest first), (B, T, R).
    ``prefix``: the decoder state just before FiLM (the reduced sum through the decoder layers
    that precede ``conditional_layer``), (B, T, R). ``grid``: the (rows, cols) patch grid.
    """

    def __init__(self, reduced: list[torch.Tensor], prefix: torch.Tensor, grid: tuple[int, int]):
        self.reduced = reduced
        self.prefix = prefix
        self.grid = grid

    def select(self, index: int) -> ReducedActivations:
        """The same state for image ``index`` only (batch of one)."""
        return self.slice(index, index + 1)

    def slice(self, start: int, stop: int) -> ReducedActivations:
        """The same state for images ``start:stop``."""
        return ReducedActivations(
            [r[start:stop] for r in self.reduced], self.prefix[start:stop], self.grid
        )

    def repeat_interleave(self, repeats: int) -> ReducedActivations:
        """Each image repeated ``repeats`` times in a row (B * repeats, T, R), to be decoded
        against ``repeats`` prompts per image in one call."""
        return ReducedActivations(
            [r.repeat_interleave(repeats, dim=0) for r in self.reduced],
            self.prefix.repeat_interleave(repeats, dim=0),
            self.grid,
        )


class CLIPSegDecoder(nn.Module):
    """Parameter names as the reference: film_mul, film_add, reduces.N, layers.N,
    transposed_convolution."""

    def __init__(self, config: CLIPSegConfig) -> None:
        super().__init__()
        vision = config.vision_config
        self.conditional_layer = config.conditional_layer
        self.film_mul = nn.Linear(config.projection_dim, config.reduce_dim)
        self.film_add = nn.Linear(config.projection_dim, config.reduce_dim)
        patch, width = vision.patch_size, config.reduce_dim
        if config.use_complex_transposed_convolution:
            kernel = patch // 4
            self.transposed_convolution: nn.Module = nn.Sequential(
                nn.Conv2d(width, width, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.ConvTranspose2d(width, width // 2, kernel_size=kernel, stride=kernel),
                nn.ReLU(),
                nn.ConvTranspose2d(width // 2, 1, kernel_size=kernel, stride=kernel),
            )
        else:
            self.transposed_convolution = nn.ConvTranspose2d(width, 1, patch, stride=patch)
        depth = len(config.extract_layers)
        self.reduces = nn.ModuleList([nn.Linear(vision.hidden_size, width) for _ in range(depth)])
        # The reference builds these from a copy of the vision config: its layer_norm_eps and
        # attention_dropout, and ReLU whatever decoder_hidden_act says.
        self.layers = nn.ModuleList(
            [
                DecoderLayer(
                    width,
                    config.decoder_num_attention_heads,
                    config.decoder_intermediate_size,
                    "relu",
                    vision.layer_norm_eps,
                    vision.attention_dropout,
                )
                for _ in range(depth)
            ]
        )

    def reduce(
        self, activations: Sequence[torch.Tensor], grid: tuple[int, int]
    ) -> ReducedActivations:
        """Project the extracted activations (in ``extract_layers`` order, each (B, T, C)) and run
        the decoder layers that come before FiLM (none for ``conditional_layer`` 0)."""
        reduced = [reduce(a) for a, reduce in zip(activations[::-1], self.reduces, strict=True)]
        out = None
        for i in range(self.conditional_layer):
            out = reduced[i] if out is None else reduced[i] + out
            out, _ = self.layers[i](out)
        prefix = (
            reduced[self.conditional_layer]
            if out is None
            else (reduced[self.conditional_layer] + out)
        )
        return ReducedActivations(reduced, prefix, grid)

    def decode(
        self,
        state: ReducedActivations,
        conditional_embeddings: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> CLIPSegDecoderOutput:
        """Condition ``state`` on (K, D) embeddings and upsample to logits (K, H, W).

        ``state`` holds either K images (one prompt each) or one image broadcast over K prompts.
        """
        c = conditional_embeddings
        hidden: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        # FiLM over (T, B, R) so the (K, R) scale and shift broadcast over tokens, as the reference
        out = self.film_mul(c) * state.prefix.permute(1, 0, 2) + self.film_add(c)
        out = out.permute(1, 0, 2)  # (K, T, R)
        if output_hidden_states:
            hidden.append(out)  # the first layer's input, then every layer's output
        for i in range(self.conditional_layer, len(self.layers)):
            if i > self.conditional_layer:
                out = state.reduced[i] + out
            out, weights = self.layers[i](out, output_attentions=output_attentions)
            if output_hidden_states:
                hidden.append(out)
            if output_attentions:
                attentions.append(weights)
        out = out[:, 1:, :].transpose(1, 2)  # drop CLS: (K, R, rows * cols), not contiguous
        out = out.view(out.shape[0], out.shape[1], *state.grid)  # (K, R, rows, cols)
        logits = self.transposed_convolution(out).squeeze(1)  # (K, H, W)
        return CLIPSegDecoderOutput(
            logits=logits,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )

    def forward(
        self,
        hidden_states: Sequence[torch.Tensor],
        conditional_embeddings: torch.Tensor,
        grid: tuple[int, int] | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> CLIPSegDecoderOutput:
        """The reference's decoder call: ``hidden_states`` are the extracted activations in
        ``extract_layers`` order, (B, 1 + rows * cols, C); ``grid`` defaults to a square one."""
        if grid is None:
            side = int((hidden_states[0].shape[1] - 1) ** 0.5)
            grid = (side, side)
        state = self.reduce(hidden_states, grid)
        return self.decode(state, conditional_embeddings, output_attentions, output_hidden_states)
