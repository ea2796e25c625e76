"""Label Studio tasks with annotations -> training examples (`backend.learning.trainer.Example`).

A task's accepted annotation (the latest one that was not cancelled) is drawn at its image's size
with the control tags' own converters (`backend.batch.evaluate.draw`: brush RLE, polygons and
rectangles alike). A result that cannot be drawn (garbage RLE, points out of range, a label the
config does not have) is reported and left out; the task's other regions still count. A task
whose image cannot be read is reported and left out of the run.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np

from backend.batch.evaluate import Problem, Side, TaskRegions, draw, load_file
from backend.errors import SourceError
from backend.learning.trainer import Example


def read_annotated(path: str | Path, image_key: str | None = None) -> Side:
    """The accepted annotation of every task of a Label Studio JSON export."""
    side = load_file(path, "annotations", image_key=image_key)
    if side.kind != "labelstudio":
        raise SourceError(f"{path}: learning needs a Label Studio JSON export, not COCO")
    return side


def to_examples(
    tasks: Sequence[TaskRegions],
    read_image: Callable[[TaskRegions], np.ndarray],
    labels: Collection[str],
    origin: str,
) -> tuple[list[Example], list[Problem]]:
    """Examples of ``tasks`` (``read_image``: a task -> its (H, W, 3) uint8 image, raising
    `backend.images.ImageError` or OSError when it cannot), and the problems met."""
    from backend.images import ImageError

    examples: list[Example] = []
    problems: list[Problem] = []
    for task in tasks:
        try:
            image = read_image(task)
        except (ImageError, OSError) as exc:
            problems.append(Problem(origin, task.name, None, f"image not read: {exc}"))
            continue
        height, width = image.shape[:2]
        truth, bad = draw(task, height, width, file=origin, labels=labels)
        problems.extend(bad)
        examples.append(Example(task.task_id, image, tuple(truth), task.annotation_id))
    return examples, problems
