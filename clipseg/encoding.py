"""What the tokenizer, the image processor and the processor return (`BatchEncoding`, a dict
with attribute access and ``.to``), and how all three refuse keyword arguments they do not
implement (a TypeError naming them, never a silent no-op)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["BatchEncoding", "unexpected_kwargs_message"]


class BatchEncoding(dict):
    """A dict with attribute access (``enc.input_ids``) and ``.to(...)`` for tensors."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def to(self, *args: Any, **kwargs: Any) -> BatchEncoding:
        """Move and cast the tensors in place, as `transformers`' ``BatchFeature.to``; returns self.

        The arguments are those of ``torch.Tensor.to`` (``"cuda"``, ``torch.float16``,
        ``("cuda", torch.float16)``, ``device=``, ``dtype=``, ``non_blocking=``). Floating-point
        tensors (pixel values) get all of them; the others (token ids, attention masks) only move
        to the device, never change dtype.
        """
        device = _device_of_to_args(args, kwargs)
        non_blocking = kwargs.get("non_blocking", False)

        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.to(*args, **kwargs)
            if isinstance(value, torch.Tensor) and device is not None:
                return value.to(device=device, non_blocking=non_blocking)
            if isinstance(value, (list, tuple)):
                return type(value)(move(v) for v in value)
            return value

        for key in list(self):
            self[key] = move(self[key])
        return self


def _device_of_to_args(args: tuple, kwargs: dict) -> Any:
    """The device in ``.to(*args, **kwargs)`` arguments, or None when they only name a dtype."""
    if kwargs.get("device") is not None or not args:
        return kwargs.get("device")
    first = args[0]
    if isinstance(first, torch.dtype):
        return None
    if isinstance(first, (str, int, torch.device)):
        return first
    raise ValueError(
        f"BatchEncoding.to got {first!r}; pass a device (e.g. 'cuda'), a torch.dtype, or both"
    )


def unexpected_kwargs_message(
    owner: str, kwargs: Mapping[str, Any], supported: Iterable[str]
) -> str:
    """The TypeError message for keyword arguments ``owner`` does not implement."""
    names = ", ".join(repr(k) for k in sorted(kwargs))
    return (
        f"{owner} got unsupported keyword argument(s) {names}; it takes "
        f"{', '.join(supported)}. Remove the argument (it is not implemented here, and ignoring it "
        "would silently change the result)."
    )
