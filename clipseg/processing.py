"""`CLIPSegProcessor`: the tokenizer (`clipseg.tokenization`) and the image processor
(`clipseg.image_processing`) behind one call, with the API of `transformers`' `CLIPSegProcessor`.

The names that lived here before the split (the tokenizer, the image processor, `load_image`,
`BatchEncoding`, ...) are re-exported, so ``from clipseg.processing import CLIPTokenizer`` keeps
working.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from clipseg.encoding import BatchEncoding, unexpected_kwargs_message
from clipseg.image_processing import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    CLIPSegImageProcessor,
    load_image,
    tensor_to_numpy,
)
from clipseg.tokenization import TOKENIZER_CALL_KWARGS, CLIPTokenizer
from clipseg.weights import resolve_checkpoint

__all__ = [
    "BatchEncoding",
    "CLIPTokenizer",
    "CLIPSegImageProcessor",
    "CLIPSegProcessor",
    "load_image",
    "tensor_to_numpy",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
]


class CLIPSegProcessor:
    """The tokenizer and the image processor together, as `transformers`' `CLIPSegProcessor`.

    One difference in defaults: ``return_tensors`` is "pt" (transformers: None, which gives
    lists); pass ``return_tensors=None`` for lists or "np" for numpy arrays.
    """

    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor: CLIPSegImageProcessor, tokenizer: CLIPTokenizer) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        image_processor: CLIPSegImageProcessor | None = None,
        tokenizer: CLIPTokenizer | None = None,
        subfolder: str = "",
        **kwargs: Any,
    ) -> CLIPSegProcessor:
        """From a checkpoint directory, "demo" or a hub id (via `clipseg.weights`), in its
        ``subfolder`` when one is named.

        ``image_processor`` / ``tokenizer``: components to use as they are instead of loading
        them (as transformers). ``kwargs`` override saved settings of the loaded components:
        the image processor's `CLIPSegImageProcessor.call_settings` (``size=...``) go to it,
        the rest to the tokenizer (``padding_side="left"``, ...)."""
        for given, expected in (
            (image_processor, CLIPSegImageProcessor),
            (tokenizer, CLIPTokenizer),
        ):
            if given is not None and not isinstance(given, expected):
                raise TypeError(
                    f"CLIPSegProcessor.from_pretrained got a {type(given).__name__} where a "
                    f"{expected.__name__} goes; build one with {expected.__name__}.from_pretrained"
                )
        d = resolve_checkpoint(name_or_path, subfolder=subfolder)
        image_kwargs = {
            k: kwargs.pop(k) for k in list(kwargs) if k in CLIPSegImageProcessor.call_settings
        }
        if image_processor is None:
            image_processor = CLIPSegImageProcessor.from_pretrained(d, **image_kwargs)
        elif image_kwargs:
            raise TypeError(
                f"CLIPSegProcessor.from_pretrained got image_processor= and its settings "
                f"{sorted(image_kwargs)}: set them on the image processor you pass"
            )
        if tokenizer is None:
            tokenizer = CLIPTokenizer.from_pretrained(d, **kwargs)
        elif kwargs:
            raise TypeError(
                f"CLIPSegProcessor.from_pretrained got tokenizer= and the tokenizer settings "
                f"{sorted(kwargs)}: set them on the tokenizer you pass"
            )
        return cls(image_processor, tokenizer)

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write the tokenizer's files and the image processor's preprocessor_config.json;
        returns their paths (transformers returns a list of paths too)."""
        files = [str(p) for p in self.tokenizer.save_pretrained(save_directory)]
        files.append(str(self.image_processor.save_pretrained(save_directory)))
        return files

    def to_dict(self) -> dict[str, Any]:
        """The processor's settings as transformers 5 writes them: the image processor's (the
        tokenizer has files of its own) and the processor class."""
        image_processor = self.image_processor.to_dict()
        image_processor.pop("processor_class", None)  # said once, at the top, as transformers
        return {"image_processor": image_processor, "processor_class": "CLIPSegProcessor"}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @property
    def model_input_names(self) -> list[str]:
        """The inputs the processor makes, in transformers 5's order (images first)."""
        return self.image_processor.model_input_names + self.tokenizer.model_input_names

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Any = None,
        visual_prompt: Any = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Text -> input_ids/attention_mask; images -> pixel_values; visual_prompt ->
        conditional_pixel_values (text and visual_prompt are exclusive), as transformers.

        Keyword arguments are routed as in transformers 5: by name (the image processor's
        `CLIPSegImageProcessor.call_settings` such as ``do_resize`` or ``size`` apply to
        ``images`` and ``visual_prompt``; the tokenizer's (``padding``, ``truncation``,
        ``max_length``, ``padding_side``, ...) to ``text``), or grouped in ``text_kwargs={...}``,
        ``images_kwargs={...}`` and ``common_kwargs={...}`` (for both; a direct keyword wins
        over it). A setting given both directly and in a group raises ValueError; one that
        its part does not implement raises TypeError (transformers ignores some of them).
        ``return_tensors`` defaults to "pt" here (transformers: None); one given in
        ``text_kwargs`` or ``images_kwargs`` applies to that part only.
        """
        text_settings, image_settings = self._route(kwargs)
        if text is None and images is None and visual_prompt is None:
            raise ValueError("You have to specify either text, visual prompt or images.")
        if text is not None and visual_prompt is not None:
            raise ValueError(
                "You have to specify exactly one type of prompt. Either text or visual prompt."
            )
        image_tensors = image_settings.pop("return_tensors")
        image_processor = self.image_processor.with_settings(**image_settings)
        out = BatchEncoding()
        if text is not None:
            out.update(self.tokenizer(text, **text_settings))
        if images is not None:
            out["pixel_values"] = image_processor(images, return_tensors=image_tensors)[
                "pixel_values"
            ]
        if visual_prompt is not None:
            out["conditional_pixel_values"] = image_processor(
                visual_prompt, return_tensors=image_tensors
            )["pixel_values"]
        return out

    def _route(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A call's keyword arguments -> (tokenizer settings, image settings), each with its
        ``return_tensors``; see `__call__`."""
        kwargs = dict(kwargs)
        groups = {name: dict(kwargs.pop(name, None) or {}) for name in _KWARG_GROUPS}
        flat_tensors = kwargs.pop("return_tensors", _UNSET)
        image_names = (*self.image_processor.call_settings, "do_convert_rgb")
        text_settings = {k: kwargs.pop(k) for k in list(kwargs) if k in TOKENIZER_CALL_KWARGS}
        image_settings = {k: kwargs.pop(k) for k in list(kwargs) if k in image_names}
        if kwargs:
            supported = [*TOKENIZER_CALL_KWARGS, *image_names, *_KWARG_GROUPS]
            raise TypeError(unexpected_kwargs_message("CLIPSegProcessor", kwargs, supported))
        common = groups["common_kwargs"]
        unknown = {
            k: v for k, v in common.items() if k not in (*TOKENIZER_CALL_KWARGS, *image_names)
        }
        if unknown:
            raise TypeError(
                unexpected_kwargs_message(
                    "CLIPSegProcessor's common_kwargs",
                    unknown,
                    [*TOKENIZER_CALL_KWARGS, *image_names],
                )
            )
        for group, settings in (("text_kwargs", text_settings), ("images_kwargs", image_settings)):
            for key, value in groups[group].items():
                if key in settings or (key == "return_tensors" and flat_tensors is not _UNSET):
                    raise ValueError(
                        f"Keyword argument {key} was passed two times: in a dictionary for "
                        f"{group} and as a **kwarg; give it once"
                    )
                settings[key] = value
            # return_tensors: the group's, else the call's, else common_kwargs', else "pt"
            if "return_tensors" not in settings:
                settings["return_tensors"] = (
                    flat_tensors
                    if flat_tensors is not _UNSET
                    else common.get("return_tensors", "pt")
                )
        for key, value in common.items():  # the rest of common_kwargs, where not set already
            if key in TOKENIZER_CALL_KWARGS and key != "return_tensors":
                text_settings.setdefault(key, value)
            if key in image_names:
                image_settings.setdefault(key, value)
        return text_settings, image_settings

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def __repr__(self) -> str:
        return f"CLIPSegProcessor(\n  {self.image_processor!r},\n  {self.tokenizer!r}\n)"


# keyword arguments that group the settings of one part (transformers 5's processor kwargs)
_KWARG_GROUPS = ("text_kwargs", "images_kwargs", "common_kwargs")
_UNSET = object()
