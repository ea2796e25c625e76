"""Helpers of the clipseg-label tests (a unique module name: tests/*/ folders share sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clipseg.demo.scenes import Scene, make_scene

SCENE_SIZE = 64


def write_scenes(
    folder: Path, seeds: list[int], size: int = SCENE_SIZE
) -> list[tuple[Path, Scene]]:
    """Write the scenes of ``seeds`` as PNGs named scene-<seed>.png; returns (path, scene) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in seeds:
        scene = make_scene(seed, size=size)
        path = folder / f"scene-{seed}.png"
        Image.fromarray(scene.image).save(path)
        out.append((path, scene))
    return out


class ThresholdAnnotator:
    """A stand-in for the model: 'light' = grey > 180, 'dark' = grey < 60, one region per label.

    Counts the images it was given, so tests can see what a resumed run redid.
    """

    labels = ("light", "dark")
    model_version = "fake-1"

    def __init__(self) -> None:
        self.seen = 0

    def annotate(self, images):
        from backend.controls import Region
        from backend.model import ImagePrediction

        outcomes = []
        for image in images:
            self.seen += 1
            grey = image.mean(axis=2)
            regions = []
            for label, mask in (("light", grey > 180), ("dark", grey < 60)):
                if mask.any():
                    regions.append(Region(label=label, mask=mask, score=0.75))
            results = [
                {
                    "from_name": "tag",
                    "to_name": "image",
                    "type": "brushlabels",
                    "original_width": int(image.shape[1]),
                    "original_height": int(image.shape[0]),
                    "value": {"format": "rle", "rle": [0], "brushlabels": [r.label]},
                    "score": r.score,
                }
                for r in regions
            ]
            outcomes.append(
                ImagePrediction(
                    results=results,
                    regions=regions,
                    uncertainty=float(np.mean(grey > 128)),
                    confidence=0.75,
                    labels={r.label: {"regions": 1} for r in regions},
                )
            )
        return outcomes
