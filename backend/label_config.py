"""Label config -> the controls the backend answers, their labels, prompts and thresholds.

Parsed with label-studio-sdk's `LabelInterface`. Every labels control (BrushLabels, PolygonLabels,
RectangleLabels, ...) pointing at an `<Image>` becomes a `ControlSpec`; which control types get
results is the control tags' decision (`backend.controls`). Attributes honoured:

- on `<Label>`: `prompt="a photo of a car"` (the text prompt; default: the label's value, also
  when results carry its `alias`) and
  `predicted_values="car, automobile"` (extra prompts; their probabilities are averaged);
- on the control: `model_score_threshold="0.4"` (probability threshold; default CLIPSEG_THRESHOLD),
  `model_tile_size="512"` (tiled prediction with tiles of 512 original px, 0 for the whole image;
  default CLIPSEG_TILE_SIZE) and `model_skip="true"` (no predictions for this control).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from label_studio_sdk.label_interface import LabelInterface

from backend.errors import LabelConfigError

__all__ = [
    "PROMPT_FIELD",
    "ControlSpec",
    "LabelConfigError",  # server.py imports it from here
    "LabelSpec",
    "image_names",
    "parse_label_config",
    "prompt_fields",
]

logger = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class LabelSpec:
    """One `<Label>`: its value (what results carry) and the prompts that segment it."""

    value: str
    prompts: tuple[str, ...]  # the main prompt first, then the `predicted_values`


@dataclass(frozen=True)
class ControlSpec:
    """One labels control on one `<Image>`."""

    name: str  # from_name
    tag: str  # "BrushLabels", "PolygonLabels", ...
    to_name: str  # the Image's name
    value_key: str  # the task data key of the image ("image" for value="$image")
    labels: tuple[LabelSpec, ...]
    threshold: float
    attrs: tuple[tuple[str, str], ...] = ()  # the control's attributes as written
    tile_size: int | None = None  # model_tile_size; None: CLIPSEG_TILE_SIZE

    def attr(self, name: str, default: str | None = None) -> str | None:
        return dict(self.attrs).get(name, default)

    def label(self, value: str) -> LabelSpec | None:
        return next((lab for lab in self.labels if lab.value == value), None)


def _prompts(attr: dict[str, str], value: str) -> tuple[str, ...]:
    """`prompt`, else the label's `value` as written (results carry its `alias` when it has
    one, which is what `value` is here), then the `predicted_values`."""
    main = (attr.get("prompt") or "").strip() or (attr.get("value") or "").strip() or value
    extra = [p.strip() for p in (attr.get("predicted_values") or "").split(",")]
    out = [main]
    for p in extra:
        if p and p not in out:
            out.append(p)
    return tuple(out)


def _threshold(attr: dict[str, str], control: str, default: float) -> float:
    raw = attr.get("model_score_threshold")
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        logger.warning(
            "control %r: model_score_threshold=%r is not a number in [0, 1]; using %s",
            control,
            raw,
            default,
        )
        return default
    return value


def _tile_size(attr: dict[str, str], control: str) -> int | None:
    """`model_tile_size`: None when absent; a bad value is an error of the config (it would
    otherwise silently predict small objects at the whole image's scale)."""
    raw = attr.get("model_tile_size")
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise LabelConfigError(
            f"control {control!r}: model_tile_size={raw!r} is not a whole number of pixels "
            "(0 turns tiling off)"
        )
    return value


@lru_cache(maxsize=64)
def parse_label_config(config: str, default_threshold: float) -> tuple[ControlSpec, ...]:
    """Every labels control on an `<Image>` of `config`, in config order (model_skip ones left out).

    Cached: Label Studio sends the same config with every request.
    """
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises assorted lxml / parsing errors
        raise LabelConfigError(f"cannot parse the label config: {exc}") from exc
    images = {obj.name: obj for obj in interface.objects if obj.tag.lower() == "image"}
    specs: list[ControlSpec] = []
    for control in interface.controls:
        attr = dict(control.attr or {})
        labels_attrs = getattr(control, "labels_attrs", None) or {}
        if not labels_attrs:
            continue  # not a labels control (TextArea, Choices, plain Rectangle, ...)
        if (attr.get("model_skip") or "").strip().lower() in _TRUE:
            logger.debug("control %r has model_skip; no predictions for it", control.name)
            continue
        labels = tuple(
            LabelSpec(value=value, prompts=_prompts(dict(lab.attr or {}), value))
            for value, lab in labels_attrs.items()
        )
        threshold = _threshold(attr, control.name, default_threshold)
        tile_size = _tile_size(attr, control.name)
        for to_name in control.to_name or []:
            image = images.get(to_name)
            if image is None:
                continue
            specs.append(
                ControlSpec(
                    name=control.name,
                    tag=control.tag,
                    to_name=to_name,
                    value_key=image.value_name,
                    labels=labels,
                    threshold=threshold,
                    attrs=tuple(sorted(attr.items())),
                    tile_size=tile_size,
                )
            )
    return tuple(specs)


@lru_cache(maxsize=64)
def image_names(config: str) -> frozenset[str]:
    """The names of the `<Image>` tags of `config`, whether or not a control the backend answers
    points at them (what an interactive context's items name in `to_name`). An unparseable config
    has none (`parse_label_config` reports the error)."""
    try:
        interface = LabelInterface(config)
    except Exception:  # the SDK raises assorted lxml / parsing errors
        return frozenset()
    return frozenset(obj.name for obj in interface.objects if obj.tag.lower() == "image")


#: The name of the TextArea whose text is a prompt without any marking (Label Studio's own
#: text-prompted examples call it so).
PROMPT_FIELD = "prompt"


@lru_cache(maxsize=64)
def prompt_fields(config: str) -> frozenset[str]:
    """The names of the TextAreas whose submitted text is a prompt (`backend.interactive`): the
    one named "prompt" and any marked `model_prompt="true"`, unless `perRegion` (a per-region
    TextArea describes its region: a transcription, a note). Other TextAreas (comments) are
    not prompts. An unparseable config gives just "prompt"."""
    try:
        interface = LabelInterface(config)
    except Exception:  # parse_label_config reports the error
        return frozenset({PROMPT_FIELD})
    fields = {PROMPT_FIELD}
    for control in interface.controls:
        if control.tag.lower() != "textarea":
            continue
        attr = dict(control.attr or {})
        if (attr.get("perRegion") or "").strip().lower() in _TRUE:
            fields.discard(control.name)
        elif (attr.get("model_prompt") or "").strip().lower() in _TRUE:
            fields.add(control.name)
    return frozenset(fields)
