"""`CLIPSegProcessor`: the tokenizer (`clipseg.tokenization`) and the image processor
(`clipseg.image_processing`) behind one call, with the API of `transformers`' `CLIPSegProcessor`.

The names that lived here before the split (the tokenizer, the image processor, `load_image`,
`BatchEncoding`, ...) are re-exported, so ``from clipseg.processing import CLIPTokenizer`` keeps
working.
"""

from __future__ import annotations

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

    def __init__(self, image_processor: CLIPSegImageProcessor, tokenizer: CLIPTokenizer) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> CLIPSegProcessor:
        """From a checkpoint directory, "demo" or a hub id (via `clipseg.weights`). ``kwargs``
        override saved settings: the image processor's `CLIPSegImageProcessor.call_settings`
        (``size=...``) go to it, the rest to the tokenizer (``padding_side="left"``, ...)."""
        d = resolve_checkpoint(name_or_path)
        image_kwargs = {
            k: kwargs.pop(k) for k in list(kwargs) if k in CLIPSegImageProcessor.call_settings
        }
        return cls(
            CLIPSegImageProcessor.from_pretrained(d, **image_kwargs),
            CLIPTokenizer.from_pretrained(d, **kwargs),
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(save_directory)
        self.image_processor.save_pretrained(save_directory)

    @property
    def model_input_names(self) -> list[str]:
        return self.tokenizer.model_input_names + self.image_processor.model_input_names

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Any = None,
        visual_prompt: Any = None,
        *,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchEncoding:
        """Text -> input_ids/attention_mask; images -> pixel_values; visual_prompt ->
        conditional_pixel_values (text and visual_prompt are exclusive), as transformers.

        ``kwargs`` are routed by name as in transformers: the image processor's
        `CLIPSegImageProcessor.call_settings` (``do_resize``, ``size``, ``image_mean``, ...) apply
        to ``images`` and ``visual_prompt``, the tokenizer's arguments (``padding_side``,
        ``add_special_tokens``, ...) to ``text``. Any other keyword raises TypeError.
        ``return_tensors`` defaults to "pt" here (transformers: None).
        """
        image_settings = {
            k: kwargs.pop(k) for k in list(kwargs) if k in self.image_processor.call_settings
        }
        if "do_convert_rgb" in kwargs:  # a transformers images kwarg; validated by the processor
            image_settings["do_convert_rgb"] = kwargs.pop("do_convert_rgb")
        unknown = {k: v for k, v in kwargs.items() if k not in TOKENIZER_CALL_KWARGS}
        if unknown:
            raise TypeError(
                unexpected_kwargs_message(
                    "CLIPSegProcessor",
                    unknown,
                    [*TOKENIZER_CALL_KWARGS, *self.image_processor.call_settings],
                )
            )
        image_processor = self.image_processor.with_settings(**image_settings)
        if text is None and images is None and visual_prompt is None:
            raise ValueError("You have to specify either text, visual prompt or images.")
        if text is not None and visual_prompt is not None:
            raise ValueError(
                "You have to specify exactly one type of prompt. Either text or visual prompt."
            )
        out = BatchEncoding()
        if text is not None:
            out.update(
                self.tokenizer(
                    text,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length,
                    return_tensors=return_tensors,
                    **kwargs,
                )
            )
        if images is not None:
            out["pixel_values"] = image_processor(images, return_tensors=return_tensors)[
                "pixel_values"
            ]
        if visual_prompt is not None:
            out["conditional_pixel_values"] = image_processor(
                visual_prompt, return_tensors=return_tensors
            )["pixel_values"]
        return out

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def __repr__(self) -> str:
        return f"CLIPSegProcessor(\n  {self.image_processor!r},\n  {self.tokenizer!r}\n)"
