"""Building blocks whose fast paths must not change their results."""

from __future__ import annotations

import pytest
import torch

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


def test_reference_arithmetic_never_blocks() -> None:
    """Inside `reference_arithmetic` (every transformers-API forward) the feed-forward is one
    pass, bitwise: blocks change the last bits of a BLAS product."""
    from clipseg.layers import reference_arithmetic

    torch.manual_seed(0)
    mlp = MLP(32, 37, "relu")  # widths at which blocks do change the last bits
    x = torch.randn(3, 226, 32)
    with torch.no_grad():
        one_pass = mlp.fc2(mlp.activation_fn(mlp.fc1(x)))
        with reference_arithmetic():
            assert torch.equal(mlp(x), one_pass)
