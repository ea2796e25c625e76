"""Fixtures of the clipseg-label tests: small demo scenes written to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import SEEDS, ThresholdAnnotator, oracle_backend, write_scenes

from backend.model import CLIPSegBackend
from clipseg.demo.scenes import Scene


@pytest.fixture
def scene_dir(tmp_path: Path) -> tuple[Path, list[tuple[Path, Scene]]]:
    folder = tmp_path / "images"
    return folder, write_scenes(folder, [1, 2, 3])


@pytest.fixture
def fake_annotator() -> ThresholdAnnotator:
    return ThresholdAnnotator()


@pytest.fixture
def scenes(tmp_path):
    return write_scenes(tmp_path / "images", SEEDS)


@pytest.fixture
def oracle(monkeypatch, scenes, tmp_path):
    """Makes `CLIPSegBackend.load(settings)` return an oracle backend with those settings; the
    returned list holds every backend made (the predictor counts the images it encoded)."""
    made = []

    def load(cls, settings, words=None):
        made.append(oracle_backend([s for _, s in scenes], settings))
        return made[-1]

    monkeypatch.setattr(CLIPSegBackend, "load", classmethod(load))
    return made
