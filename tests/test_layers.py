"""Building blocks whose fast paths must not change their results."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from clipseg.configuration import CLIPSegConfig
from clipseg.decoder import CLIPSegDecoder, is_patch_expansion, patch_expansion
from clipseg.layers import MLP


@pytest.mark.parametrize("act", ["relu", "quick_gelu"])
def test_mlp_in_row_blocks_equals_one_pass(act: str) -> None:
    """On the CPU without gradients large inputs run in row blocks (a partial last one here)."""
    torch.manual_seed(0)
    mlp = MLP(16, 64, act)
    x = torch.randn(3, MLP.cpu_block_rows - 7, 16)  # 3 * 505 rows: 2 full blocks and a partial
    with torch.enable_grad():
        one_pass = mlp(x).detach()  # gradients enabled: the plain path
    with torch.inference_mode():
        blocked = mlp(x)
    assert blocked.shape == one_pass.shape == (3, MLP.cpu_block_rows - 7, 16)
    torch.testing.assert_close(blocked, one_pass, atol=1e-6, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(mlp(x[:1]), one_pass[:1], atol=1e-6, rtol=1e-5)  # below a block


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    channels=st.integers(1, 6),
    out_channels=st.integers(1, 4),
    rows=st.integers(1, 5),
    cols=st.integers(1, 5),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    bias=st.booleans(),
)
def test_patch_expansion_equals_the_transposed_convolution(
    n: int,
    channels: int,
    out_channels: int,
    rows: int,
    cols: int,
    kernel: tuple[int, int],
    bias: bool,
) -> None:
    """The GPU upsampler's matrix product gives the module's result, block by block."""
    torch.manual_seed(n * 1000 + channels * 100 + rows * 10 + cols)
    conv = nn.ConvTranspose2d(
        channels, out_channels, kernel_size=kernel, stride=kernel, bias=bias
    ).double()
    x = torch.randn(n, channels, rows, cols, dtype=torch.float64)
    assert is_patch_expansion(conv)
    with torch.no_grad():
        expected = conv(x)
        got = patch_expansion(x, conv)
    assert got.shape == expected.shape == (n, out_channels, rows * kernel[0], cols * kernel[1])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "conv",
    [
        nn.ConvTranspose2d(4, 2, kernel_size=4, stride=2),  # overlapping blocks
        nn.ConvTranspose2d(4, 2, kernel_size=2, stride=2, padding=1),
        nn.ConvTranspose2d(4, 2, kernel_size=2, stride=2, groups=2),
        nn.ConvTranspose2d(4, 2, kernel_size=2, stride=2, dilation=2),
        nn.Conv2d(4, 2, kernel_size=2, stride=2),
    ],
)
def test_only_non_overlapping_transposed_convolutions_are_patch_expansions(conv) -> None:
    assert not is_patch_expansion(conv)


@pytest.mark.parametrize("complex_upsampler", [True, False])
def test_decoder_upsamples_the_same_with_matmuls(complex_upsampler: bool) -> None:
    """ "always" (what a GPU gets) gives the modules' logits; the CPU default runs the modules."""
    config = CLIPSegConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 100},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                       "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
        projection_dim=16,
        reduce_dim=16,
        extract_layers=[1, 2],
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        use_complex_transposed_convolution=complex_upsampler,
    )  # fmt: skip
    torch.manual_seed(0)
    decoder = CLIPSegDecoder(config).eval()
    activations = [torch.randn(2, 17, 32) for _ in config.extract_layers]
    prompts = torch.randn(2, 16)
    with torch.inference_mode():
        by_modules = decoder(activations, prompts).logits
        assert decoder.upsample_with_matmul == "gpu"
        decoder.upsample_with_matmul = "always"
        by_matmuls = decoder(activations, prompts).logits
        decoder.upsample_with_matmul = "sometimes"
        with pytest.raises(ValueError, match="upsample_with_matmul"):
            decoder(activations, prompts)
    assert by_modules.shape == by_matmuls.shape == (2, 64, 64)  # 4 x 4 patches of 16
    torch.testing.assert_close(by_matmuls, by_modules, rtol=1e-5, atol=1e-5)
    assert not torch.equal(by_matmuls, torch.zeros_like(by_matmuls))
