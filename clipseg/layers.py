"""Transformer building blocks shared by the text tower, the vision tower and the decoder.

Parameter names (``self_attn.q_proj``, ``mlp.fc1``, ``layer_norm1``, ...) are those of the
`transformers` CLIPSeg state dict. The arithmetic follows the reference operation by operation
(same reshapes, same order), so that with scaled-dot-product attention the results are bitwise equal
to `transformers` 5 on CPU. Attention weights are computed explicitly ("eager") when they are
requested, or always once `Attention.implementation` is "eager" (transformers'
``attn_implementation="eager"``, whose numbers that path equals).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "QuickGELU",
    "activation",
    "Attention",
    "ATTENTION_IMPLEMENTATIONS",
    "MLP",
    "EncoderLayer",
    "DecoderLayer",
    "Encoder",
]


class QuickGELU(nn.Module):
    """CLIP's GELU approximation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "quick_gelu": QuickGELU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
}


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` in a config (``quick_gelu``, ``relu``, ``gelu``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; supported: {sorted(_ACTIVATIONS)}"
        ) from None


ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


class Attention(nn.Module):
    """Multi-head self-attention (q, k, v and output projections, all with bias).

    ``implementation``: "sdpa" (torch's scaled_dot_product_attention; eager math only when the
    weights are asked for) or "eager" (always the explicit softmax, as transformers' eager).
    """

    implementation: str = "sdpa"

    def __init__(self, width: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % num_heads != 0:
            raise ValueError(f"attention width {width} is not a multiple of {num_heads} heads")
        self.embed_dim = width
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend over (B, T, C) ``hidden_states``.

        ``attention_mask``: a boolean (B, 1, T, T) mask (True = attend) or None; ``is_causal``
        adds the causal pattern when no mask is given. Returns the (B, T, C) output and, with
        ``output_attentions``, the (B, heads, T, T) softmax weights.
        """
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if output_attentions or self.implementation == "eager":
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, nh, T, T)
            mask = attention_mask
            if mask is None and is_causal:
                t = q.shape[2]
                mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()[None, None]
            if mask is not None:
                additive = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
                additive = additive.masked_fill(~mask, torch.finfo(scores.dtype).min)
                scores = scores + additive
            weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            weights = F.dropout(weights, p=dropout, training=self.training)
            out = torch.matmul(weights, v).transpose(1, 2).contiguous()  # (B, T, nh, hs)
            if not output_attentions:
                weights = None
        else:
            causal = is_causal and attention_mask is None and q.shape[2] > 1
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attention_mask,
                dropout_p=dropout,
                scale=self.scale,
                is_causal=causal,
            )  # (B, nh, T, hs)
            out = (
                out.reshape(out.shape[0], -1, q.shape[2], v.shape[-1]).transpose(1, 2).contiguous()
            )
        out = out.reshape(*input_shape, -1).contiguous()  # (B, T, C)
        return self.out_proj(out), weights


class MLP(nn.Module):
    """Two linear layers with an activation between them."""

    # On the CPU, without gradients, inputs of more rows (tokens) than this run in blocks of this
    # many: the (rows, hidden) intermediate then stays small enough for the allocator to reuse
    # (larger blocks are mapped fresh and page-faulted on every call) and for the caches. The
    # decoder's 2,048-wide feed-forward over 20 prompts x 485 tokens runs ~1.7x faster so.
    cpu_block_rows = 512

    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.activation_fn = activation(act)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if (
            x.device.type != "cpu"
            or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu")  # blocks would be written back in x's dtype
            or rows <= self.cpu_block_rows
        ):
            return self.fc2(self.activation_fn(self.fc1(x)))
        flat = x.reshape(rows, x.shape[-1])
        out = flat.new_empty(rows, self.fc2.out_features)
        for start in range(0, rows, self.cpu_block_rows):
            block = slice(start, start + self.cpu_block_rows)
            out[block] = self.fc2(self.activation_fn(self.fc1(flat[block])))
        return out.view(*x.shape[:-1], -1)


class EncoderLayer(nn.Module):
    """Pre-LN transformer block (CLIP's towers): x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(
        self, width: int, heads: int, hidden: int, act: str, eps: float, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.embed_dim = width
        self.self_attn = Attention(width, heads, dropout)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, hidden, act)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, weights = self.self_attn(
            self.layer_norm1(x), attention_mask, is_causal, output_attentions
        )
        x = x + attn
        x = x + self.mlp(self.layer_norm2(x))
        return x, weights


class DecoderLayer(EncoderLayer):
    """Post-LN transformer block (CLIPSeg's decoder): ln1(x + attn(x)), then ln2(x + mlp(x))."""

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, weights = self.self_attn(x, attention_mask, is_causal, output_attentions)
        x = self.layer_norm1(x + attn)
        x = self.layer_norm2(x + self.mlp(x))
        return x, weights


class Encoder(nn.Module):
    """A stack of pre-LN blocks under ``layers`` (the reference's ``encoder.layers.N``)."""

    def __init__(
        self,
        depth: int,
        width: int,
        heads: int,
        hidden: int,
        act: str,
        eps: float,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [EncoderLayer(width, heads, hidden, act, eps, dropout) for _ in range(depth)]
        )

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        num_layers: int | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """Run the first ``num_layers`` blocks (all by default) over (B, T, C) ``x``.

        Returns the last output, the hidden states (the input, then each block's output) and the
        attention weights of each block, the latter two only when requested.
        """
        hidden: list[torch.Tensor] = [x] if output_hidden_states else []
        attentions: list[torch.Tensor] = []
        for layer in self.layers[:num_layers]:
            x, weights = layer(x, attention_mask, is_causal, output_attentions)
            if output_hidden_states:
                hidden.append(x)
            if output_attentions:
                attentions.append(weights)
        return (
            x,
            tuple(hidden) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )
