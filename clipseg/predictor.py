"""Encode an image once, segment it for any number of prompts.

In CLIPSeg the prompt only enters the decoder, so `Predictor.set_image` runs the vision encoder
once (and only up to the deepest block the decoder reads), applies the decoder's prompt-independent
projections (``reduces``) once, and `Predictor.predict` then decodes every prompt against the
cached state, in chunks, broadcasting the one image over the prompts (after `set_images`, images
times prompts are decoded as one batch of pairs when the prompts are few). Prompts are text
(embedding cached per string), conditional embeddings, `Exemplar` images (the paper's visual
prompt) or weighted `Mix`-es of those.

Thread safety: one lock guards the cached image state and the text-embedding cache, and every
public method holds it for its whole call, so one instance can be shared across threads. Calls are
then serialised; ``set_image`` followed by ``predict`` from two threads can interleave, so use
`Predictor.segment` (which does both under one hold of the lock) when threads share an instance.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipseg.decoder import ReducedActivations
from clipseg.modeling import CLIPSegForImageSegmentation
from clipseg.processing import CLIPSegProcessor, load_image
from clipseg.prompts import PROMPT_TEMPLATES, prepare_visual_prompt
from clipseg.tiling import TileMerger, check_tiling
from clipseg.weights import resolve_checkpoint

logger = logging.getLogger(__name__)

# get_*_features returns what the configs ask for (transformers 5 reads the towers' own
# switches, return_dict the model's): the predictor wants the projected pooled output only.
_FEATURES_ONLY = {"output_attentions": False, "output_hidden_states": False, "return_dict": True}

__all__ = ["Exemplar", "Mix", "Predictor", "Prompt", "DEFAULT_TEMPLATES"]

DEFAULT_TEMPLATES: tuple[str, ...] = PROMPT_TEMPLATES


@dataclass(frozen=True)
class Exemplar:
    """An example of the object: an image and, optionally, the object's mask or box in it.

    ``mask``: (H, W) at the image's size (bool, 0/1 or 0-255); ``box``: (x0, y0, x1, y1) pixels.
    Embedded with the paper's visual-prompt treatment (`clipseg.prompts.prepare_visual_prompt`).
    """

    image: Any
    mask: Any = None
    box: Sequence[float] | None = None


@dataclass(frozen=True)
class Mix:
    """A weighted sum of prompt embeddings, e.g. ``Mix([("cat", 0.5), (Exemplar(img, m), 0.5)])``
    (training mixed ``w * text + (1 - w) * visual``)."""

    parts: Sequence[tuple[Any, float]]

    def __post_init__(self) -> None:
        parts = tuple((p, float(w)) for p, w in self.parts)
        if not parts:
            raise ValueError("Mix needs at least one (prompt, weight) pair")
        object.__setattr__(self, "parts", parts)


Prompt = str | torch.Tensor | np.ndarray | Exemplar | Mix


@dataclass
class _EncodedBatch:
    """What a batch of images encoded together contributes to every prompt."""

    reduced: ReducedActivations  # (n, T, R) per tensor: the decoder's prompt-independent part
    sizes: list[tuple[int, int]]  # (H, W) of each original image, after EXIF orientation


def logits_to_probs(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Logits (..., h, w) -> probabilities (..., H, W) at ``size`` = (H, W): the logits are
    resized bilinearly, then the sigmoid (as the reference's usage; in the dtype given)."""
    lead = logits.shape[:-2]
    flat = logits.reshape(-1, 1, *logits.shape[-2:])
    resized = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return torch.sigmoid_(resized).view(*lead, *size)


def _pixels_key(image: Image.Image) -> bytes:
    """A digest of an RGB image's size and pixels: equal for the same picture, whatever object
    or format it came in. SHA-256, because CPUs hash it in hardware: 4 ms for the 6 MB of a
    1920x1080 image where blake2b took 12 (2-vCPU AMD EPYC VM)."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:{image.mode}".encode())
    digest.update(image.tobytes())
    return digest.digest()


def _default_chunk_size(device: torch.device) -> int:
    """32 on the CPU; 256 on a GPU (a few GB in fp16), where fewer, larger calls keep it busy."""
    return 32 if device.type == "cpu" else 256


def _auto_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """Segment one image (or a few) for many prompts with a `CLIPSegForImageSegmentation`.

    Args:
        model: the segmentation model; the predictor follows its device and dtype, also when
            it is moved later (``predictor.model.to("cuda")``): what was cached or encoded for
            the old ones is then dropped, and the image must be set again.
        processor: the matching `CLIPSegProcessor` (tokenizer and image processor).
        chunk_size: images per encoder call and (image, prompt) pairs per decoder call (bounds
            memory for long lists of images or prompts); by default 32 on the CPU and 256 on a
            GPU (a few GB in fp16), where fewer, larger calls keep the device busy.
        text_cache_size: text embeddings kept (least recently used are dropped).
        image_cache_size: encoded images kept by `set_image`, keyed by their pixels (least
            recently used are dropped; 0 turns it off): setting an image seen recently skips the
            vision encoder, as when an annotator asks about the same image again and again.
            An entry is the decoder's reduced activations, a few hundred KB; `reset_image`
            empties the cache (do so after changing the model's weights in place).
    """

    def __init__(
        self,
        model: CLIPSegForImageSegmentation,
        processor: CLIPSegProcessor,
        *,
        chunk_size: int | None = None,
        text_cache_size: int = 4096,
        image_cache_size: int = 16,
    ) -> None:
        if not isinstance(model, CLIPSegForImageSegmentation):
            raise TypeError(
                f"Predictor needs a CLIPSegForImageSegmentation, got {type(model).__name__}"
            )
        self._auto_chunk_size = chunk_size is None
        if chunk_size is None:
            chunk_size = _default_chunk_size(model.device)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.model = model.eval()
        self.processor = processor
        self.chunk_size = int(chunk_size)
        self._lock = threading.RLock()
        self._states: list[_EncodedBatch] | None = None
        self._batched = False
        self._text_cache: OrderedDict[tuple[str, tuple[str, ...] | None], torch.Tensor] = (
            OrderedDict()
        )
        self._text_cache_size = int(text_cache_size)
        self._image_cache: OrderedDict[bytes, list[_EncodedBatch]] = OrderedDict()
        self.image_cache_size = int(image_cache_size)
        self._placement = (model.device, model.dtype)  # what the caches and states were made on
        self._image_dropped_by_move = False

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = "auto",
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Model and processor from a checkpoint directory, hub id or ``"demo"``.

        ``device="auto"`` picks CUDA when available. ``dtype`` defaults to float32 on the CPU and
        float16 on CUDA (sigmoid and resizing always run in float32).
        """
        directory = resolve_checkpoint(name_or_path)
        target = _auto_device(device)
        if dtype is None:
            dtype = torch.float16 if target.type == "cuda" else torch.float32
        model = CLIPSegForImageSegmentation.from_pretrained(directory, device=target, dtype=dtype)
        processor = CLIPSegProcessor.from_pretrained(directory)
        return cls(model, processor, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def is_image_set(self) -> bool:
        with self._lock:
            self._follow_model()
            return self._states is not None

    def _follow_model(self) -> None:
        """Forget what was computed on another device or in another dtype: the model has been
        moved (``model.to(...)``) since. Called with the lock held, before any cache is read."""
        placement = (self.model.device, self.model.dtype)
        if placement == self._placement:
            return
        self._placement = placement
        self._text_cache.clear()
        self._image_cache.clear()
        if self._states is not None:
            self._states = None
            self._image_dropped_by_move = True
        if self._auto_chunk_size:
            self.chunk_size = _default_chunk_size(self.model.device)

    # -- images --------------------------------------------------------------------------------

    def _pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return pixels.to(device=self.device, dtype=self.dtype)  # (N, 3, S, S)

    @torch.inference_mode()
    def _encode_pixels(self, pixels: torch.Tensor, sizes: list[tuple[int, int]]) -> _EncodedBatch:
        """Vision blocks 0..max(extract_layers) and the decoder's reduces for (n, 3, S, S)."""
        vision = self.model.clip.vision_model
        activations = vision.hidden_states_upto(pixels, self.model.extract_layers)  # (n, T, C)
        return _EncodedBatch(self.model.decoder.reduce(activations, vision.grid_of(pixels)), sizes)

    def _encode(self, pils: Sequence[Image.Image]) -> list[_EncodedBatch]:
        """PIL path: RGB images (from `load_image`) resized like the reference, chunk_size at a
        time."""
        batches = []
        for start in range(0, len(pils), self.chunk_size):
            chunk = pils[start : start + self.chunk_size]
            pixels = self._pixel_values(chunk)
            batches.append(self._encode_pixels(pixels, [(p.height, p.width) for p in chunk]))
        return batches

    @torch.inference_mode()
    def _encode_tensor(self, images: torch.Tensor) -> list[_EncodedBatch]:
        """Tensor path: a (B, 3, H, W) batch resized and normalized on the model's device."""
        size = (int(images.shape[-2]), int(images.shape[-1]))
        batches = []
        for start in range(0, len(images), self.chunk_size):
            chunk = images[start : start + self.chunk_size].to(self.device, non_blocking=True)
            pixels = self.processor.image_processor.preprocess_tensor(chunk).to(self.dtype)
            batches.append(self._encode_pixels(pixels, [size] * len(chunk)))
        return batches

    def set_image(self, image: Any) -> None:
        """Encode ``image`` (PIL image, or numpy (H, W) / (H, W, C) uint8 or float in [0, 1])
        for the following `predict` calls; raises ValueError for anything that is not an image.
        An image with the same pixels as one of the last ``image_cache_size`` is not encoded
        again."""
        with self._lock:
            self._follow_model()
            self._states = None
            self._image_dropped_by_move = False
            pil = load_image(image)
            key = _pixels_key(pil) if self.image_cache_size > 0 else None
            states = self._image_cache.get(key) if key is not None else None
            if states is None:
                states = self._encode([pil])
                if key is not None:
                    self._image_cache[key] = states
                    while len(self._image_cache) > self.image_cache_size:
                        self._image_cache.popitem(last=False)
            else:
                self._image_cache.move_to_end(key)
            self._states = states
            self._batched = False

    def set_images(self, images: Sequence[Any] | torch.Tensor) -> None:
        """Encode several images (batched through the encoder); `predict` then returns a list
        with one (K, H_i, W_i) result per image.

        ``images``: a list of images (anything `set_image` takes; resized with PIL, as the
        reference), or one (B, 3, H, W) RGB tensor, uint8 or float in [0, 1], on any device:
        resized and normalized on the model's device (`CLIPSegImageProcessor.preprocess_tensor`,
        within one gray level of PIL), the path for throughput on a GPU. A host tensor is copied
        without waiting, and ``predict(output="torch")`` does not wait either: before refilling
        a pinned host buffer, synchronise the stream (or an event recorded after the call).
        """
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise TypeError(
                    "set_images takes a list of images or a (B, 3, H, W) tensor batch, got a "
                    f"tensor of shape {tuple(images.shape)}; use set_image for one image"
                )
            encode = self._encode_tensor
        else:
            if isinstance(images, (str, bytes, Image.Image, np.ndarray)):
                raise TypeError("set_images takes a list of images; use set_image for one image")
            images = [load_image(image) for image in images]
            encode = self._encode
        if len(images) == 0:
            raise ValueError("set_images needs at least one image")
        with self._lock:
            self._follow_model()
            self._states = None
            self._image_dropped_by_move = False
            self._states = encode(images)
            self._batched = True

    def reset_image(self) -> None:
        """Drop the current image state and the cache of encoded images (frees their memory)."""
        with self._lock:
            self._states = None
            self._image_dropped_by_move = False
            self._image_cache.clear()

    # -- prompt embeddings ---------------------------------------------------------------------

    @torch.inference_mode()
    def embed_text(
        self, texts: Sequence[str], templates: Sequence[str] | None = None
    ) -> torch.Tensor:
        """(K, D) conditional embeddings of ``texts`` (projected EOS states), cached per string.

        With ``templates`` (e.g. `DEFAULT_TEMPLATES`, each with one ``{}``) each text's embedding
        is the mean over the templates filled with it. Like every embedding the Predictor returns,
        it is an inference tensor: ``.clone()`` it before using it in a graph that needs gradients.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("embed_text needs at least one text")
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__}")
        key_templates = tuple(templates) if templates is not None else None
        if key_templates is not None:
            if not key_templates or any("{}" not in t for t in key_templates):
                raise ValueError("templates must be a non-empty list of strings containing '{}'")
        with self._lock:
            self._follow_model()
            missing = list(
                dict.fromkeys(t for t in texts if (t, key_templates) not in self._text_cache)
            )
            if missing:
                if key_templates is None:
                    strings = missing
                else:
                    strings = [tpl.format(t) for t in missing for tpl in key_templates]
                embeddings = self._text_features(strings)  # (len(strings), D)
                if key_templates is not None:
                    embeddings = embeddings.view(len(missing), len(key_templates), -1).mean(1)
                for text, embedding in zip(missing, embeddings, strict=True):
                    self._remember(text, key_templates, embedding)
            out = []
            for text in texts:
                key = (text, key_templates)
                self._text_cache.move_to_end(key)
                out.append(self._text_cache[key])
            return torch.stack(out)

    def _text_features(self, strings: list[str]) -> torch.Tensor:
        """(len(strings), D) projected text features, ``chunk_size`` strings per call.

        No attention mask is passed, and that is exact: the text tower is causal and the tokens
        are padded on the right (whatever the tokenizer's own ``padding_side``), so the pooled
        (EOS) state never attends to padding. It also keeps this free of
        host-device syncs (a mask on the GPU would be read back to see whether it pads at all),
        so on a GPU the text tower is queued behind the vision encoder instead of waiting for it.
        """
        chunks = []
        for start in range(0, len(strings), self.chunk_size):
            tokens = self.processor.tokenizer(
                strings[start : start + self.chunk_size],
                padding=True,
                padding_side="right",
                return_tensors="pt",
            )
            input_ids = tokens["input_ids"].to(self.device, non_blocking=True)
            chunks.append(
                self.model.clip.get_text_features(input_ids, **_FEATURES_ONLY).pooler_output
            )
        return torch.cat(chunks)

    def _remember(
        self, text: str, templates: tuple[str, ...] | None, embedding: torch.Tensor
    ) -> None:
        self._text_cache[(text, templates)] = embedding.clone()
        while len(self._text_cache) > self._text_cache_size:
            self._text_cache.popitem(last=False)

    @torch.inference_mode()
    def embed_exemplar(
        self, image: Any, mask: Any = None, box: Sequence[float] | None = None
    ) -> torch.Tensor:
        """(D,) embedding of an example: `prepare_visual_prompt` (crop with context, background
        darkened and blurred), then the full vision tower's projected CLS state, like the
        reference's ``conditional_pixel_values``. The prepared square has the image processor's
        side, so that it is resized once (a model with another input size than 352 included)."""
        prepared = prepare_visual_prompt(image, mask=mask, box=box, size=self._exemplar_side())
        with self._lock:
            pixels = self._pixel_values([prepared])
            return self.model.clip.get_image_features(pixels, **_FEATURES_ONLY).pooler_output[0]

    def _exemplar_side(self) -> int:
        """Side of a prepared exemplar: the image processor's input size (the larger side of a
        non-square one, which it then resizes to)."""
        image_processor = self.processor.image_processor
        return max(image_processor.height, image_processor.width)

    def _embedding(self, prompt: Any, templates: Sequence[str] | None) -> torch.Tensor:
        """One prompt -> (D,) on the model's device and dtype."""
        dim = self.model.config.projection_dim
        if isinstance(prompt, str):
            return self.embed_text([prompt], templates)[0]
        if isinstance(prompt, Exemplar):
            return self.embed_exemplar(prompt.image, prompt.mask, prompt.box)
        if isinstance(prompt, Mix):
            total = None
            for part, weight in prompt.parts:
                term = self._embedding(part, templates).float() * weight
                total = term if total is None else total + term
            return total.to(self.dtype)
        if isinstance(prompt, (torch.Tensor, np.ndarray)):
            emb = torch.as_tensor(prompt)
            if emb.shape != (dim,):
                raise ValueError(
                    f"an embedding prompt must have shape ({dim},) (projection_dim), got "
                    f"{tuple(emb.shape)}"
                )
            if not emb.is_floating_point():
                raise ValueError(f"an embedding prompt must be floating point, got {emb.dtype}")
            return emb.to(device=self.device, dtype=self.dtype)
        raise TypeError(
            f"unsupported prompt type {type(prompt).__name__}: use a str, a ({dim},) embedding, "
            "an Exemplar or a Mix"
        )

    def embed_prompts(
        self, prompts: Sequence[Prompt], templates: Sequence[str] | None = None
    ) -> torch.Tensor:
        """(K, D) embeddings of mixed prompts (texts embedded together in one batch)."""
        if isinstance(prompts, (str, Exemplar, Mix)):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty: give at least one prompt")
        with self._lock:
            texts = [p for p in prompts if isinstance(p, str)]
            if texts:
                self.embed_text(texts, templates)  # one batch for all uncached texts
            with torch.inference_mode():
                return torch.stack([self._embedding(p, templates) for p in prompts])

    # -- decoding ------------------------------------------------------------------------------

    def _require_image(self) -> list[_EncodedBatch]:
        self._follow_model()
        if self._states is None and self._image_dropped_by_move:
            raise RuntimeError(
                f"the model was moved to {self.device} / {self.dtype} after the image was set: "
                "call set_image (or set_images) again"
            )
        if self._states is None:
            raise RuntimeError(
                "no image is set: call set_image(image) (or set_images(images)) first, then predict"
            )
        return self._states

    def _decode_prompts(self, state: ReducedActivations, embeddings: torch.Tensor) -> torch.Tensor:
        """One image's ``state`` against (K, D) embeddings, ``chunk_size`` at a time: (K, h, w)."""
        return torch.cat(
            [
                self.model.decoder.decode(state, embeddings[j : j + self.chunk_size]).logits
                for j in range(0, len(embeddings), self.chunk_size)
            ]
        )

    @torch.inference_mode()
    def _decode_logits(self, batch: _EncodedBatch, embeddings: torch.Tensor) -> torch.Tensor:
        """Every image of ``batch`` against every (K, D) embedding, up to ``chunk_size``
        (image, prompt) pairs per decoder call: float32 logits (n, K, h, w) at the model's output
        size, on the model's device."""
        n, k = len(batch.sizes), len(embeddings)
        if n == 1 or 2 * k > self.chunk_size:
            # few images, many prompts: one image broadcast over a chunk of prompts
            logits = torch.stack(
                [self._decode_prompts(batch.reduced.select(i), embeddings) for i in range(n)]
            )
        else:
            # many images, few prompts: images x prompts as one batch of pairs
            images_per_call = self.chunk_size // k
            calls = []
            for i in range(0, n, images_per_call):
                state = batch.reduced.slice(i, i + images_per_call).repeat_interleave(k)
                out = self.model.decoder.decode(
                    state, embeddings.repeat(len(state.prefix) // k, 1)
                ).logits
                calls.append(out.view(-1, k, *out.shape[-2:]))
            logits = torch.cat(calls)
        return logits.float()

    def _decode(
        self, batch: _EncodedBatch, embeddings: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`_decode_logits`, then per image float32 probabilities (K, H, W) at the image's size,
        and the logits (K, h, w); both on the model's device."""
        logits = self._decode_logits(batch, embeddings)  # (n, K, h, w)
        if len(set(batch.sizes)) == 1:
            # one size (always so for a tensor batch): one resize for the whole batch
            probs = logits_to_probs(logits, batch.sizes[0]).unbind(0)
        else:
            probs = [
                logits_to_probs(raw, size) for raw, size in zip(logits, batch.sizes, strict=True)
            ]
        return list(probs), list(logits.unbind(0))

    def predict_embeddings(
        self,
        embeddings: torch.Tensor | np.ndarray,
        *,
        return_logits: bool = False,
        output: str = "numpy",
    ) -> Any:
        """Segment the current image(s) for (K, D) conditional embeddings.

        Returns float32 probabilities (K, H, W) at the image's size (a list of them after
        `set_images`); with ``return_logits`` a ``(probs, logits)`` pair, logits (K, h, w) at
        the model's output size. ``output="numpy"`` gives numpy arrays on the host,
        ``output="torch"`` float32 tensors on the model's device (no copy to the host).
        """
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        emb = torch.as_tensor(embeddings)
        dim = self.model.config.projection_dim
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise ValueError(f"embeddings must have shape (K, {dim}), got {tuple(emb.shape)}")
        if emb.shape[0] == 0:
            raise ValueError("embeddings is empty: give at least one prompt embedding")
        emb = emb.to(device=self.device, dtype=self.dtype)
        with self._lock:
            probs, logits = [], []
            for batch in self._require_image():
                p, lg = self._decode(batch, emb)
                probs += p
                logits += lg
            batched = self._batched
        if output == "numpy":
            probs = [p.cpu().numpy() for p in probs]
            if return_logits:  # copied to the host only when asked for
                logits = [lg.cpu().numpy() for lg in logits]
        outputs = list(zip(probs, logits, strict=True)) if return_logits else probs
        return outputs if batched else outputs[0]

    def predict(
        self,
        prompts: Sequence[Prompt] | Prompt,
        *,
        return_logits: bool = False,
        templates: Sequence[str] | None = None,
        output: str = "numpy",
    ) -> Any:
        """Segment the current image for each prompt.

        Args:
            prompts: each a str, a (D,) embedding (torch or numpy), an `Exemplar` or a `Mix`.
            return_logits: also return the raw logits (K, h, w) (float32 numpy).
            templates: average each text prompt's embedding over these templates
                (e.g. `DEFAULT_TEMPLATES`).
            output: ``"numpy"`` (host arrays) or ``"torch"`` (float32 tensors on the model's
                device, no copy to the host).

        Returns:
            float32 probabilities (K, H, W) in [0, 1] at the image's size (logits resized
            bilinearly, then the sigmoid), or ``(probs, logits)``; after `set_images` a list with
            one such result per image.
        """
        with self._lock:
            self._require_image()
            embeddings = self.embed_prompts(prompts, templates)
            return self.predict_embeddings(embeddings, return_logits=return_logits, output=output)

    def segment(
        self,
        image: Any,
        prompts: Sequence[Prompt] | Prompt,
        *,
        return_logits: bool = False,
        templates: Sequence[str] | None = None,
        output: str = "numpy",
    ) -> Any:
        """`set_image` then `predict` under one hold of the lock (safe with shared instances)."""
        with self._lock:
            self.set_image(image)
            return self.predict(
                prompts, return_logits=return_logits, templates=templates, output=output
            )

    def segment_tiled(
        self,
        image: Any,
        prompts: Sequence[Prompt] | Prompt | torch.Tensor | np.ndarray,
        *,
        tile_size: int,
        tile_overlap: float = 0.25,
        templates: Sequence[str] | None = None,
        found_threshold: float = 0.3,
    ) -> np.ndarray:
        """Like `segment`, for small objects in large images: float32 probabilities (K, H, W).

        The image is cut into overlapping square tiles of ``tile_size`` original pixels (adjacent
        tiles share at least ``tile_overlap`` of a tile), each tile goes through the vision
        encoder as an image of its own (``chunk_size`` tiles per call), and the maps are merged
        with the whole image's, seen at the model's size (`clipseg.tiling.TileMerger` gives the
        rule: tiles add only what the whole view did not find above ``found_threshold``; use the
        threshold the regions are cut at). The prompts (or a (K, D) tensor of their embeddings)
        are embedded once for all tiles. ``tile_size=0``, or an image that fits in one tile, is
        exactly `segment`. Afterwards the whole image is the current one, as after `set_image`.

        Memory: the (K, H, W) result and one weight map at the image's size, plus one tile's
        (K, tile, tile) maps at a time.
        """
        check_tiling(tile_size, tile_overlap, self.model.config.vision_config.patch_size)
        with self._lock:
            pil = load_image(image)
            if isinstance(prompts, (torch.Tensor, np.ndarray)) and prompts.ndim == 2:
                embeddings = torch.as_tensor(prompts).to(device=self.device, dtype=self.dtype)
            else:
                embeddings = self.embed_prompts(prompts, templates)
            width, height = pil.size
            if tile_size == 0 or (width <= tile_size and height <= tile_size):
                self.set_image(pil)
                return self.predict_embeddings(embeddings)
            merger = TileMerger(
                len(embeddings), height, width, tile_size, tile_overlap, found_threshold
            )
            boxes = merger.boxes()
            for start in range(0, len(boxes), self.chunk_size):
                group = boxes[start : start + self.chunk_size]
                sizes = [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in group]
                pixels = self._pixel_values([pil.crop(box) for box in group])
                logits = self._decode_logits(self._encode_pixels(pixels, sizes), embeddings)
                for box, size, tile_logits in zip(group, sizes, logits, strict=True):
                    merger.add(box, logits_to_probs(tile_logits, size).cpu().numpy())
            self.set_image(pil)  # the whole-image view, and the current image from now on
            whole_logits = self._decode_logits(self._states[0], embeddings)[0]  # (K, h, w)

            def whole(k: int) -> np.ndarray:  # one full-size map at a time
                return logits_to_probs(whole_logits[k], (height, width)).cpu().numpy()

            return merger.result(whole)
