"""Images for CLIPSeg: `load_image` (any image-like input -> RGB PIL) and
`CLIPSegImageProcessor`, with the API (and the numbers) of `transformers`' `ViTImageProcessorPil`.

The image processor resizes with PIL exactly as `transformers`' PIL backend does. Nothing here
imports `transformers`.

Deliberate differences from `transformers` (each documented where it happens):

- the image processor applies EXIF orientation (`transformers` ignores it) and always converts to
  RGB (alpha composited onto white, exactly as `transformers`' ``do_convert_rgb=True``).
- a float image with values in [0, 1] holds intensities: it is rescaled once, whatever
  ``do_rescale`` says (`transformers` multiplies it by ``rescale_factor`` a second time unless
  ``do_rescale=False``, and warns about "already rescaled images"). Float images are quantized to
  8 bits on loading (PIL resizes uint8), also with ``do_resize=False``.
- keyword arguments the image processor does not implement raise TypeError.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from clipseg.encoding import BatchEncoding, unexpected_kwargs_message
from clipseg.weights import resolve_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "CLIPSegImageProcessor",
    "load_image",
    "image_to_rgb",
    "tensor_to_numpy",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
]

PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"  # transformers 5 nests the image settings here
# threads that preprocess one batch of images, at most (fewer when torch is given fewer)
_MAX_PREPROCESS_THREADS = 8

IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _array_to_pil(arr: np.ndarray, what: str) -> Image.Image:
    """(H, W), (H, W, C) or (C, H, W) with C in 1/3/4 -> PIL (L/RGB/RGBA, uint8)."""
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channels first (a torch tensor's layout)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise ValueError(
            f"{what} must have shape (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; "
            f"got {arr.shape} (a 4-D batch goes to the image processor, not load_image)"
        )
    if arr.size == 0 or 0 in arr.shape:
        raise ValueError(f"{what} is empty (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = _float_to_uint8(arr, what)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.dtype != np.uint8:
            if arr.min() < 0 or arr.max() > 255:
                raise ValueError(
                    f"{what} has dtype {arr.dtype} with values outside [0, 255]; "
                    "scale it to uint8 first"
                )
            arr = arr.astype(np.uint8)
    else:
        raise ValueError(f"{what} has unsupported dtype {arr.dtype}; use uint8, or float in [0, 1]")
    if arr.ndim == 3 and arr.shape[-1] == 4:
        # composite onto white exactly as transformers' convert_to_rgb does for arrays
        alpha = arr[..., 3:4] / 255
        arr = np.round(alpha * arr[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


@functools.lru_cache(maxsize=16)
def _level_table(
    scale: float | None, normalize: tuple[tuple[float, ...], tuple[float, ...]] | None
) -> np.ndarray:
    """(3, 256) float32: what rescaling by ``scale`` and normalizing by (mean, std) make of each
    uint8 level, per channel. The steps are transformers': upcast to float64, scale, down to
    float32, then (x - mean) / std in float32. Each output value depends only on its level and
    channel, so applying the same steps to the 256 levels gives a table that is bitwise what the
    steps give on a whole image, at the cost of one lookup per value (3-4x faster)."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)  # (256, 3): HWC-like
    if scale is not None:
        values = (levels.astype(np.float64) * scale).astype(np.float32)
    else:
        values = levels.astype(np.float32)
    if normalize is not None:
        mean, std = (np.asarray(v, dtype=np.float32) for v in normalize)
        values = (values - mean) / std
    table = np.ascontiguousarray(values.T)
    table.flags.writeable = False  # shared by every call with these settings
    return table


def _is_unit_float(obj: Any) -> bool:
    """Whether ``obj`` is a float array or tensor with every value in [0, 1] (intensities)."""
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point() or obj.numel() == 0:
            return False
        return bool((obj.min() >= 0) & (obj.max() <= 1))
    if isinstance(obj, np.ndarray) and np.issubdtype(obj.dtype, np.floating) and obj.size:
        return bool(obj.min() >= 0.0 and obj.max() <= 1.0)
    return False


def _float_to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    """A float image -> uint8 levels.

    Values in [0, 1] are intensities (times 255, rounded). Otherwise whole numbers in [0, 255] are
    pixel levels already, as `transformers` reads them (equal to the same uint8 image). Anything
    else is refused, as `transformers` refuses it when it resizes (it cannot be made uint8 for PIL).
    """
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.round(arr.astype(np.float64) * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0 and np.allclose(arr, np.round(arr)):
        return np.round(arr).astype(np.uint8)
    raise ValueError(
        f"{what} is a float array with values in [{lo}, {hi}] that are neither intensities in "
        "[0, 1] nor whole pixel levels in [0, 255]; scale it to [0, 1] or round it to uint8 "
        "(transformers refuses such an image too when it resizes)"
    )


# Grey modes with more than 8 bits per pixel that hold 16-bit data (PNG and TIFF decode to
# I;16*; "I" is PIL's 32-bit container, which older Pillows used for 16-bit PNGs).
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def image_to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image of any mode -> RGB, as Label Studio's browser shows it: the model sees
    what the annotator sees. The one conversion clipseg and the backend both use.

    - 16-bit grey: the high byte of each value, ``v >> 8`` (what browsers show for a 16-bit
      PNG, which they decode to 8 bits; PIL itself keeps the high byte of 16-bit RGB PNGs).
      Neither clipped to [0, 255] (PIL's convert: a typical 16-bit image turns almost all
      white) nor stretched from its minimum to its maximum (a display no browser makes).
      "I" (32-bit) images must hold values in [0, 65535] and are read as 16-bit.
    - 32-bit float grey ("F"): intensities in [0, 1] times 255, or whole levels in [0, 255];
      anything else raises ValueError (there is no display to follow).
    - alpha (and palette or colour-key transparency): composited onto white, exactly as
      transformers' ``convert_to_rgb``.
    - any other mode: PIL's conversion; ValueError for a mode PIL cannot convert.
    """
    mode = image.mode
    if mode in _WIDE_GREY_MODES:
        levels = np.asarray(image)
        if levels.size and (int(levels.min()) < 0 or int(levels.max()) > 0xFFFF):
            raise ValueError(
                f"a {mode} image with values in [{int(levels.min())}, {int(levels.max())}], "
                "outside 16 bits; save it as 8- or 16-bit grey"
            )
        grey = (levels.astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(image), "a float (F) image")).convert(
            "RGB"
        )
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"image mode {mode!r} cannot be converted to RGB ({exc})") from exc


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a numpy array; bfloat16, which numpy lacks, as float32 (exact)."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def load_image(obj: Any) -> Image.Image:
    """Any image-like input -> an RGB PIL image with EXIF orientation applied.

    Accepts a PIL image (any mode; converted by `image_to_rgb`, so 16-bit grey as a browser
    shows it), a numpy array or torch tensor ((H, W), (H, W, 1|3|4) or
    (C, H, W); uint8, bool, or float in [0, 1]), encoded bytes, or a file path. Alpha is composited
    onto white (what transformers does). Raises ValueError naming the problem otherwise.
    """
    if isinstance(obj, Image.Image):
        image = obj
    elif isinstance(obj, torch.Tensor):
        image = _array_to_pil(tensor_to_numpy(obj), "image tensor")
    elif isinstance(obj, np.ndarray):
        image = _array_to_pil(obj, "image array")
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        if len(obj) == 0:
            raise ValueError("image bytes are empty")
        image = _open_image(io.BytesIO(bytes(obj)), "image bytes")
    elif isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"No image file at {path}")
        image = _open_image(path, f"image file {path}")
    else:
        raise ValueError(
            f"Cannot read an image from a {type(obj).__name__}; give a PIL image, a numpy array, "
            "a torch tensor, encoded bytes or a file path"
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image is empty ({image.width}x{image.height})")
    image = ImageOps.exif_transpose(image)
    return image_to_rgb(image)


def _open_image(src: Any, what: str) -> Image.Image:
    try:
        image = Image.open(src)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} could not be decoded as an image: {e}") from e
    return image


def _square_size(size: Any) -> tuple[int, int]:
    """(height, width) from {"height", "width"}, {"shortest_edge"}, {"longest_edge"} or an int.

    CLIPSeg needs a square input (its decoder reshapes tokens to a square grid), so an edge
    length means a square of that side."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(size, Mapping):
        if size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
        for key in ("shortest_edge", "longest_edge"):
            if size.get(key):
                return int(size[key]), int(size[key])
    raise ValueError(
        f"size must be {{'height': H, 'width': W}}, {{'shortest_edge': S}} or an int, got {size!r}"
    )


class CLIPSegImageProcessor:
    """Resize (exactly, no crop), rescale and normalize images as CIDAS' preprocessor_config.json
    says; numbers equal `transformers`' PIL-backend ViT image processor.

    Args:
        do_resize, size, resample: resize to ``size`` (height x width) with this PIL filter
            (2 = bilinear).
        do_rescale, rescale_factor: multiply by 1/255.
        do_normalize, image_mean, image_std: (x - mean) / std per channel.
        **kwargs: other keys of preprocessor_config.json, kept and written back.

    Each of these settings can also be given to a single call (``processor(images,
    do_resize=False)``), as in `transformers`.
    """

    model_input_names = ["pixel_values"]
    # `preprocess_tensor` converts at most this many input values to float32 at a time (256 MB)
    tensor_slice_values = 2**26
    # the settings a call may override (transformers' ImagesKwargs that this processor implements)
    call_settings = (
        "do_resize",
        "size",
        "resample",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
    )

    def __init__(
        self,
        do_resize: bool = True,
        size: Any = None,
        resample: int = 2,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] | float | None = None,
        image_std: Sequence[float] | float | None = None,
        **kwargs: Any,
    ) -> None:
        self.do_resize = do_resize
        if size is None:
            size = {"height": 352, "width": 352}
        elif not isinstance(size, Mapping):
            h, w = _square_size(size)
            size = {"height": h, "width": w}
        self.size = dict(size)
        self.height, self.width = _square_size(self.size)
        self.resample = int(resample)
        self.do_rescale = do_rescale
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = do_normalize
        self.image_mean = _three(image_mean if image_mean is not None else IMAGENET_DEFAULT_MEAN)
        self.image_std = _three(image_std if image_std is not None else IMAGENET_DEFAULT_STD)
        kwargs.pop("do_convert_rgb", None)  # always RGB
        self.extra = kwargs

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, **kwargs: Any
    ) -> CLIPSegImageProcessor:
        """Settings from ``processor_config.json``'s ``"image_processor"`` (what transformers 5's
        ``save_pretrained`` writes), else ``preprocessor_config.json`` (earlier versions, CIDAS),
        the order transformers 5 reads them in; ``kwargs`` override them."""
        d = resolve_checkpoint(name_or_path)
        config = _read_image_processor_config(d)
        if config is None:
            logger.warning(
                "No %s (nor %s with an image_processor entry) in %s; using CLIPSeg's defaults",
                PREPROCESSOR_CONFIG_FILE,
                PROCESSOR_CONFIG_FILE,
                d,
            )
            config = {}
        config.update(kwargs)
        return cls(**config)

    def with_settings(self, **settings: Any) -> CLIPSegImageProcessor:
        """This processor with some of `call_settings` changed; self when none is given.
        TypeError names unknown settings; None is refused (transformers 5 reads
        ``do_resize=None`` as False and a None size or mean as an error, transformers 4 as the
        processor's own setting: leave the argument out for that)."""
        unknown = {k: v for k, v in settings.items() if k not in self.call_settings}
        convert_rgb = unknown.pop("do_convert_rgb", None)
        if unknown:
            raise TypeError(
                unexpected_kwargs_message("CLIPSegImageProcessor", unknown, self.call_settings)
            )
        if convert_rgb is False:
            raise ValueError(
                "do_convert_rgb=False is not supported: CLIPSeg's vision tower takes 3 channels, "
                "so every image is converted to RGB; leave do_convert_rgb out"
            )
        changed = {k: v for k, v in settings.items() if k in self.call_settings}
        unset = sorted(k for k, v in changed.items() if v is None)
        if unset:
            raise ValueError(
                f"{', '.join(unset)}=None is ambiguous (transformers 5 turns a None do_* switch "
                "off, transformers 4 used the processor's setting); pass a value, or leave the "
                "argument out to use the processor's setting"
            )
        if not changed:
            return self
        return type(self)(**{**self.to_dict(), **changed})

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": self.extra.get("image_processor_type", "ViTImageProcessor"),
            "image_std": list(self.image_std),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": dict(self.size),
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / PREPROCESSOR_CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    def preprocess_one(self, image: Any) -> np.ndarray:
        """One image -> float32 (3, H, W).

        A float image in [0, 1] is rescaled once whatever ``do_rescale`` says: with
        ``do_rescale=False`` its values stay in [0, 1] (transformers' numbers), with True they are
        not divided by 255 a second time (transformers would; see the module docstring)."""
        pil = load_image(image)
        if self.do_resize:
            pil = pil.resize((self.width, self.height), resample=self.resample)
        arr = np.asarray(pil)  # (H, W, 3) uint8
        scale = self.rescale_factor if self.do_rescale else None
        if scale is None and _is_unit_float(image):
            scale = 1 / 255  # back to the input's own [0, 1] scale, as transformers returns it
        normalize = (tuple(self.image_mean), tuple(self.image_std)) if self.do_normalize else None
        table = _level_table(scale, normalize)  # (3, 256)
        out = np.empty((3, *arr.shape[:2]), dtype=np.float32)
        for channel in range(3):
            # mode="clip" writes straight into `out` ("raise" buffers it); uint8 levels are
            # always in the table's range, so it clips nothing
            np.take(table[channel], arr[..., channel], out=out[channel], mode="clip")
        return out

    def preprocess_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """A (B, 3, H, W) RGB batch (uint8, or float in [0, 1]) -> float32 pixel values
        (B, 3, S, S) on the batch's own device: the throughput path for images already on a GPU.

        Resizing is torch's antialiased bilinear filter, rounded to uint8 levels like PIL's, so
        pixel values differ from `__call__`'s (PIL) by at most a few gray levels; use `__call__`
        for the reference's exact numbers. No EXIF, alpha or mode handling: that is the loader's.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must be a (B, 3, H, W) RGB tensor, got {shape}")
        if 0 in images.shape:
            raise ValueError(f"images is empty: shape {tuple(images.shape)}")
        per_slice = max(1, self.tensor_slice_values // images[0].numel())
        if len(images) > per_slice:
            # the float32 copy at the input's resolution is this method's peak: 256 images of
            # 1920x1080 would take 6.4 GB at once, so large batches are converted in slices
            return torch.cat(
                [
                    self.preprocess_tensor(images[start : start + per_slice])
                    for start in range(0, len(images), per_slice)
                ]
            )
        if images.dtype == torch.uint8:
            x = images.float()
        elif images.is_floating_point():
            x = images.float().clamp(0, 1) * 255
        else:
            raise ValueError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
        if self.do_resize and tuple(x.shape[-2:]) != (self.height, self.width):
            if self.resample != 2:  # PIL.Image.BILINEAR
                raise ValueError(
                    f"preprocess_tensor resizes bilinearly; this processor's resample is "
                    f"{self.resample}: use __call__"
                )
            x = F.interpolate(
                x,
                size=(self.height, self.width),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            x = x.round_().clamp_(0, 255)  # PIL hands back uint8
        # rescale and normalize as one affine map per channel, x * scale + shift; its two (3,)
        # tensors are built on the host and copied without blocking (a blocking copy to a GPU
        # would wait for all work queued before it)
        scale = torch.full((3,), self.rescale_factor if self.do_rescale else 1.0)
        shift = torch.zeros(3)
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=torch.float32)
            std = torch.tensor(self.image_std, dtype=torch.float32)
            scale, shift = scale / std, -mean / std
        scale = scale.to(x.device, non_blocking=True).view(1, 3, 1, 1)
        shift = shift.to(x.device, non_blocking=True).view(1, 3, 1, 1)
        return torch.addcmul(shift, x, scale)

    def __call__(
        self, images: Any, return_tensors: str | None = "pt", **settings: Any
    ) -> BatchEncoding:
        """Images -> ``pixel_values`` (B, 3, H, W) float32 ("pt" or "np"), or a list of
        (3, H, W) arrays with ``return_tensors=None``.

        Args:
            images: one image (anything `load_image` reads), a list of them, or a batch as one
                4-D array: numpy (B, H, W, C) or torch (B, C, H, W) (the channel axis is found
                per image as `load_image` does). A list may hold such batches too.
            return_tensors: "pt" (default; transformers' default is None), "np" or None.
            **settings: per-call `call_settings` (``do_resize=False``, ``size=...``, ...), as in
                transformers; any other keyword raises TypeError.
        """
        proc = self.with_settings(**settings)
        batch = _image_batch(images)
        # each object once: the reference's usage repeats one image per prompt ([image] * K), and
        # one lazily opened PIL image must not be loaded by several threads at the same time
        unique = list({id(image): image for image in batch}.values())
        workers = min(len(unique), torch.get_num_threads(), _MAX_PREPROCESS_THREADS)
        if workers > 1 and not any(isinstance(image, torch.Tensor) for image in unique):
            # decoding and resizing release the GIL: a batch uses the cores torch would use
            with ThreadPoolExecutor(workers, thread_name_prefix="clipseg-preprocess") as pool:
                done = list(pool.map(proc.preprocess_one, unique))
        else:
            done = [proc.preprocess_one(image) for image in unique]
        by_id = {id(image): array for image, array in zip(unique, done, strict=True)}
        if return_tensors is None:
            seen: set[int] = set()
            arrays = []
            for image in batch:  # a repeated image gets its own copy: the list is the caller's
                array = by_id[id(image)]
                arrays.append(array.copy() if id(image) in seen else array)
                seen.add(id(image))
            return BatchEncoding(pixel_values=arrays)
        arrays = [by_id[id(image)] for image in batch]
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(
                "Cannot stack images of different sizes into one tensor (do_resize=False keeps "
                f"each image's size: {sorted({a.shape[1:] for a in arrays})}); resize them, pass "
                "them one at a time, or use return_tensors=None for a list"
            )
        stacked = np.stack(arrays)
        if return_tensors == "np":
            return BatchEncoding(pixel_values=stacked)
        if return_tensors == "pt":
            return BatchEncoding(pixel_values=torch.from_numpy(stacked))
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")

    preprocess = __call__

    def __repr__(self) -> str:
        return f"CLIPSegImageProcessor({json.dumps(self.to_dict(), sort_keys=True)})"


def _read_image_processor_config(directory: Path) -> dict[str, Any] | None:
    """The image processor's settings saved in ``directory``, in transformers 5's order:
    processor_config.json's nested ``"image_processor"``, then preprocessor_config.json."""
    nested = directory / PROCESSOR_CONFIG_FILE
    if nested.is_file():
        entry = _read_json(nested).get("image_processor")
        if isinstance(entry, Mapping):
            return dict(entry)
    legacy = directory / PREPROCESSOR_CONFIG_FILE
    return _read_json(legacy) if legacy.is_file() else None


def _image_batch(images: Any) -> list[Any]:
    """The images of a call as a flat list: a 4-D array or tensor is a batch of images, a list or
    tuple holds images or such batches, anything else is one image."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("images is an empty list")
    batch: list[Any] = []
    for item in items:
        if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
            if len(item) == 0:
                raise ValueError(f"images is an empty batch (shape {tuple(item.shape)})")
            batch.extend(item)
        else:
            batch.append(item)
    return batch


def _three(v: Sequence[float] | float) -> list[float]:
    if isinstance(v, (int, float)):
        return [float(v)] * 3
    v = [float(x) for x in v]
    if len(v) != 3:
        raise ValueError(f"image_mean/image_std must have 3 values (RGB), got {v}")
    return v
