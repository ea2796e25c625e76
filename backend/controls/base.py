"""`ControlTag`: what one Label Studio control tag means to the backend.

A tag module (`backend.controls.brush`, ...) subclasses it and says, for its tag:
- whether it matches a control of the label config (`matches`: by the tag's name);
- whether the backend pre-annotates it and how a found region becomes result items (`results`);
- how one of its results becomes a mask at an image's size (`to_mask`);
- which visual prompt one of its regions gives (`exemplar_shape`: a mask or a box, for
  `clipseg.Predictor.embed_exemplar`), when an annotator draws it (an annotation, or a smart
  region of the interactive context).
`backend.controls.registry` lists the tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from backend.formats.regions import Region
from backend.label_config import ControlSpec
from backend.settings import Settings

#: A visual prompt for `Predictor.embed_exemplar`: {"mask": bool (H, W)} or {"box": (x0, y0,
#: x1, y1)} in pixels of the image.
Shape = dict[str, Any]


class ControlTag:
    """One control tag. Class attributes say what it is; instances may hold result options."""

    tag: ClassVar[str]  # as written in a label config: "BrushLabels"
    #: `clipseg-label predict --type` value of a pre-annotated tag; None: not pre-annotated.
    option: ClassVar[str | None] = None
    #: Whether its results hold a region with a mask (COCO export, exemplars of annotations).
    has_mask: ClassVar[bool] = True

    @classmethod
    def kind(cls) -> str:
        """Its results' `type`: the tag in lower case ("brushlabels")."""
        return cls.tag.lower()

    @classmethod
    def predicted(cls) -> bool:
        """Whether the backend pre-annotates controls of this tag."""
        return cls.option is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> ControlTag:
        """The tag with its result options read from the settings (none by default)."""
        return cls()

    def matches(self, control: ControlSpec) -> bool:
        return control.tag.lower() == self.kind()

    def results(self, control: ControlSpec, regions: list[Region]) -> list[dict[str, Any]]:
        """Result items of `regions` for `control` (an empty region gives none)."""
        return [
            item
            for region in regions
            for item in self.region_results(region, from_name=control.name, to_name=control.to_name)
        ]

    def region_results(
        self, region: Region, *, from_name: str, to_name: str
    ) -> list[dict[str, Any]]:
        """Result items of one region, scored with its score, at its mask's size."""
        raise ValueError(f"{self.tag} gets no predictions: a {self.kind()!r} result type")

    def to_mask(
        self, result: Mapping[str, Any], height: int | None, width: int | None
    ) -> np.ndarray:
        """bool (height, width) of one result of this tag (default size: its original size);
        ValueError for a malformed result."""
        raise ValueError(f"a {self.kind()!r} result has no mask")

    def exemplar_shape(self, item: Mapping[str, Any], height: int, width: int) -> Shape | None:
        """The visual prompt of a drawn region at the image's (height, width): its mask by
        default; None when it covers no pixel. ValueError (or another lookup error) for a
        malformed one."""
        mask = self.to_mask(item, height, width)
        return {"mask": mask} if mask.any() else None


def percent_frame(region: Region) -> dict[str, Any]:
    """The size fields of a result of `region`: its mask's size is the original size."""
    height, width = region.mask.shape
    return {"original_width": width, "original_height": height, "score": region.score}


def clip_box(
    x0: float, y0: float, x1: float, y1: float, height: int, width: int
) -> tuple[int, int, int, int] | None:
    """A pixel box (x0, y0, x1, y1) clipped to the image and rounded outward; None when
    nothing of it is inside."""
    x0, x1 = sorted((min(max(x0, 0), width), min(max(x1, 0), width)))
    y0, y1 = sorted((min(max(y0, 0), height), min(max(y1, 0), height)))
    box = (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))
    return box if box[2] > box[0] and box[3] > box[1] else None
