"""Shared fixtures: checkpoints written by `transformers` (the oracle) with random weights.

- ``tiny_checkpoint``: a small CLIPSeg (fast tests) with the demo tokenizer files and a 64 px image
  processor, saved once per session by transformers' ``save_pretrained``.
- ``reference_checkpoint(name)``: the exact CIDAS shapes ("rd64-refined", "rd64", "rd16"), built
  once per session on first use (about 600 MB each in the session's temporary directory).

Nothing is downloaded: the weights are random and the tokenizer is the demo vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from model_fixtures import (  # noqa: E402
    REFERENCE_SHAPES,
    TINY_CONFIG,
    TINY_IMAGE_SIZE,
    build_reference,
    write_processor_files,
)


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(transformers model, its checkpoint directory) for the small config."""
    directory = tmp_path_factory.mktemp("tiny-checkpoint")
    model = build_reference(TINY_CONFIG, directory)
    write_processor_files(directory, TINY_IMAGE_SIZE)
    return model, directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_reference: tuple[Any, Path]) -> Path:
    return tiny_reference[1]


@pytest.fixture(scope="session")
def reference_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], tuple[Any, Path]]:
    """``get(name)`` -> (transformers model, directory) at a CIDAS shape, built once each."""
    built: dict[str, tuple[Any, Path]] = {}

    def get(name: str) -> tuple[Any, Path]:
        if name not in built:
            directory = tmp_path_factory.mktemp(f"reference-{name}")
            built[name] = (build_reference(REFERENCE_SHAPES[name], directory), directory)
        return built[name]

    return get


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: full-size (CIDAS-shape) parity tests; deselect with -m 'not slow'"
    )
