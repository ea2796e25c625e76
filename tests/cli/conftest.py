"""Fixtures of the clipseg-label tests: small demo scenes written to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import ThresholdAnnotator, write_scenes

from clipseg.demo.scenes import Scene


@pytest.fixture
def scene_dir(tmp_path: Path) -> tuple[Path, list[tuple[Path, Scene]]]:
    folder = tmp_path / "images"
    return folder, write_scenes(folder, [1, 2, 3])


@pytest.fixture
def fake_annotator() -> ThresholdAnnotator:
    return ThresholdAnnotator()
