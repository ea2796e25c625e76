"""Label Studio's interactive context: what the annotator just drew or typed on a task.

With "Interactive preannotations" on, Label Studio sends `/predict` one task and
`params.context = {"result": [...]}`: the result items the annotator just made. Two kinds
steer CLIPSeg:

- **smart regions** (items of the control tags, `backend.controls.SMART_REGION_TYPES`:
  brushlabels, polygonlabels, rectanglelabels, keypointlabels) on the image: each is an
  exemplar (visual prompt) of its labels for this answer;
- **typed prompts** (`textarea` items of a prompt field, `backend.label_config.prompt_fields`:
  `<TextArea name="prompt" toName="image"/>` or one marked `model_prompt="true"`) on the image:
  each line of text is a text prompt for the label it names (`labels_named`), used in place of
  that label's configured prompts for this answer. Other TextAreas (a comment field submitted
  with Auto-Annotation on) ask for an interactive answer but prompt nothing.

Only the labels named this way are answered: a context that holds such items for the image,
even unusable ones (a negative keypoint, `is_positive: false`; an item without labels; blank
text), asks for an interactive answer, which may then be empty; never for every label. Items
on other images, and anything malformed (not a dict, labels not a list of strings), are left out.

Whether a request is interactive at all is `is_interactive`, the same rule over the config's
`<Image>` names: a context whose items point at no image of the config asks for an ordinary
prediction. This module only reads the context; it does not embed or predict anything.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.controls import SMART_REGION_TYPES

__all__ = [
    "Interaction",
    "SmartRegion",
    "is_interactive",
    "labels_named",
    "normalize",
    "parse_context",
]


@dataclass(frozen=True)
class SmartRegion:
    """One region the annotator drew: its result item (percent coordinates, as Label Studio
    sent it), its type (`item["type"]` in lower case) and its labels."""

    item: dict[str, Any]
    kind: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Interaction:
    """What the context asks of one image: exemplar regions and typed prompts, in order, and
    how many smart-region or TextArea items pointed at the image (usable or not)."""

    regions: tuple[SmartRegion, ...] = ()
    prompts: tuple[str, ...] = ()
    items: int = 0

    def __bool__(self) -> bool:
        """True when the annotator interacted with the image: answer interactively."""
        return self.items > 0


def parse_context(
    context: Any, to_names: Collection[str], prompt_fields: Collection[str] = ("prompt",)
) -> Interaction:
    """The smart regions and typed prompts of `context` that point at one of `to_names` (the
    names of the `<Image>` tags being predicted); only the TextAreas named in `prompt_fields`
    give prompts. Anything else is ignored, so a context without such items (or no context at
    all) asks for an ordinary prediction."""
    if not isinstance(context, Mapping):
        return Interaction()
    items = context.get("result")
    if not isinstance(items, list):
        return Interaction()
    regions: list[SmartRegion] = []
    prompts: list[str] = []
    count = 0
    for item in items:
        if not isinstance(item, Mapping):
            continue
        to_name, kind = item.get("to_name"), item.get("type")
        if not isinstance(to_name, str) or to_name not in to_names or not isinstance(kind, str):
            continue
        kind = kind.lower()
        if kind != "textarea" and kind not in SMART_REGION_TYPES:
            continue
        count += 1
        value = item.get("value")
        if not isinstance(value, Mapping):
            continue
        if kind == "textarea":
            if item.get("from_name") in prompt_fields:
                prompts.extend(_texts(value.get("text")))
        elif value.get("is_positive") is not False:
            names = value.get(kind)
            labels = (
                tuple(n for n in names if isinstance(n, str) and n)
                if isinstance(names, list)
                else ()
            )
            if labels:
                regions.append(SmartRegion(dict(item), kind, labels))
    return Interaction(tuple(regions), tuple(dict.fromkeys(prompts)), count)


def is_interactive(context: Any, image_names: Collection[str]) -> bool:
    """Whether `context` asks for an interactive answer (shown in the editor, never stored): it
    holds a smart-region or TextArea item on one of `image_names` (the label config's `<Image>`
    names, `backend.label_config.image_names`; usable or not, as `parse_context` counts them).

    The one rule for a whole /predict: its answers, and those of its tasks that fail, which then
    carry an empty `result` for the editor (`backend.model._failed`). A project whose config has
    no control the backend answers still gets interactive answers for its images."""
    return bool(parse_context(context, image_names))


def _texts(text: Any) -> list[str]:
    """The non-blank lines of a TextArea value (a list of submissions, or one string)."""
    lines = [text] if isinstance(text, str) else text if isinstance(text, list) else []
    return [
        part.strip()
        for line in lines
        if isinstance(line, str)
        for part in line.splitlines()
        if part.strip()
    ]


def normalize(text: str) -> str:
    """Case-folded, with runs of white space made one space: how typed text is compared."""
    return " ".join(text.casefold().split())


def labels_named(prompt: str, labels: Mapping[str, Sequence[str]]) -> list[str]:
    """The labels a typed prompt names, among `labels` (label value -> its configured prompts).

    A label is named by its value or one of its prompts (compared after `normalize`):
    1. a label whose name equals the whole prompt ("Cat" names the label "cat");
    2. else the labels whose name occurs in the prompt as whole words, leaving out those found
       only inside a longer name of another label ("the black cat" names "black cat", not
       also "cat"). Several left ("the dog next to the person") are all returned, in `labels`'
       order, for the caller to decide between.
    Returns [] when the prompt names no label; the caller then decides among all of them.
    """
    text = normalize(prompt)
    names = {
        label: {normalize(n) for n in (label, *prompts) if n.strip()}
        for label, prompts in labels.items()
    }
    exact = [label for label, ns in names.items() if text in ns]
    if exact:
        return exact[:1]
    spans: dict[str, list[tuple[int, int]]] = {}  # label -> where its names occur
    for label, ns in names.items():
        for n in ns:
            for m in re.finditer(rf"(?<!\w){re.escape(n)}(?!\w)", text):
                spans.setdefault(label, []).append(m.span())

    def inside_another(label: str, span: tuple[int, int]) -> bool:
        start, end = span
        return any(
            s <= start and end <= e and (e - s) > (end - start)
            for other, found in spans.items()
            if other != label
            for s, e in found
        )

    return [
        label
        for label, found in spans.items()
        if any(not inside_another(label, span) for span in found)
    ]
