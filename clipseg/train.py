"""Train CLIPSeg, or fine-tune a checkpoint's decoder: ``python -m clipseg.train``.

With ``--data demo`` (the only data source so far) scenes from :mod:`clipseg.demo.scenes` are
generated on the fly (seeds below :data:`~clipseg.demo.scenes.TRAIN_SEED_LIMIT`). Every step:

* ``--batch-size`` scenes go through the vision tower once; ``--prompts-per-image`` prompts are
  decoded against each (CLIPSeg's decoder is cheap, the vision tower is not), so a step trains
  ``batch_size * prompts_per_image`` (image, prompt) pairs;
* a pair's prompt is a present prompt (``"<color> <shape>"``, ``"<shape>"``, ``"<color> object"``)
  or, with probability ``--negative-fraction``, an absent one whose target is empty; text prompts
  are wrapped in a random CLIPSeg template half of the time;
* as in the paper, a ``--visual-fraction`` of the pairs is conditioned on
  ``w * text + (1 - w) * visual`` with ``w ~ U(0, 1)``, where ``visual`` is the projected pooled
  vision embedding of an exemplar: :func:`clipseg.prompts.prepare_visual_prompt` of one object
  matching the prompt, cut from another recent scene (or the same scene while no other has one);
  ``--visual-only-fraction`` of those use ``w = 0`` so that exemplars alone work too;
* the loss is the per-pixel binary cross-entropy of the logits against the target masks (plus
  ``--dice-weight`` times a soft Dice loss), plus ``--align-weight`` times an auxiliary CLIP-style
  loss that classifies each exemplar's embedding against the text embeddings of every
  ``"<color> <shape>"`` (cosine logits scaled by the model's ``logit_scale``), which teaches the
  vision tower a pooled embedding that matches the text tower's;
* AdamW with linear warmup then cosine decay; seeds fixed by ``--seed``.

Checkpoints are written with ``save_pretrained`` together with the processor files, so the output
directory loads with ``from_pretrained``. Without ``--init`` a small demo model is built from the
``--image-size``/``--vision-*``/``--text-*`` options and the demo vocabulary
(:mod:`clipseg.demo.vocabulary`); with ``--init DIR_OR_ID`` that checkpoint is loaded, and
``--freeze-encoders`` trains the decoder only (the CLIPSeg recipe).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from clipseg import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor
from clipseg.demo import scenes as demo_scenes
from clipseg.demo.vocabulary import TEMPLATES, write_vocabulary
from clipseg.image_processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from clipseg.prompts import prepare_visual_prompt

logger = logging.getLogger(__name__)

DEMO_NAME = "clipseg-demo"
"""``_name_or_path`` written into a demo checkpoint's config.json (with ``"demo": true``)."""


# ---------------------------------------------------------------------------------------------
# model and processor


def demo_config(args: argparse.Namespace, vocab_size: int) -> CLIPSegConfig:
    """The small demo architecture from the command line options."""
    n = args.vision_layers
    extract = list(range(n - 3, n)) if args.extract_layers is None else args.extract_layers
    text = {
        "vocab_size": vocab_size,
        "hidden_size": args.text_hidden,
        "intermediate_size": 4 * args.text_hidden,
        "num_hidden_layers": args.text_layers,
        "num_attention_heads": max(1, args.text_hidden // 32),
        "max_position_embeddings": 77,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
    }
    vision = {
        "hidden_size": args.vision_hidden,
        "intermediate_size": 4 * args.vision_hidden,
        "num_hidden_layers": n,
        "num_attention_heads": max(1, args.vision_hidden // 32),
        "image_size": args.image_size,
        "patch_size": args.patch_size,
    }
    return CLIPSegConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=args.projection_dim,
        extract_layers=extract,
        reduce_dim=args.reduce_dim,
        decoder_num_attention_heads=max(1, args.reduce_dim // 16),
        decoder_intermediate_size=args.decoder_intermediate_size,
        conditional_layer=0,
        use_complex_transposed_convolution=(
            args.upsampler == "refined" if args.upsampler else args.patch_size == 16
        ),
    )


def init_film_identity(model: CLIPSegForImageSegmentation) -> None:
    """Start FiLM as the identity (scale 1, shift 0, whatever the conditional).

    With the reference's random initialization FiLM scales the image features by ~0 at first, so
    a model trained from scratch learns to ignore the conditional and segment every object
    through the unconditioned decoder inputs (measured: text prompts had no effect after 200
    steps). Starting from the identity keeps the image features and lets the conditional's
    influence grow from there."""
    decoder = model.decoder
    with torch.no_grad():
        decoder.film_mul.weight.zero_()
        decoder.film_mul.bias.fill_(1.0)
        decoder.film_add.weight.zero_()
        decoder.film_add.bias.zero_()


def init_position_sincos(model: CLIPSegForImageSegmentation, scale: float = 0.2) -> None:
    """Start the vision tower's patch position embeddings as 2-D sine-cosine ones (as MAE's),
    times ``scale``; the class position starts at zero. They stay trainable.

    A ViT trained from scratch with random position embeddings learns the image's 2-D layout
    slowly: with them the demo model told colors apart within 200 steps but not shapes (its
    exemplar embeddings classified shapes at chance after 800 steps)."""
    table = model.clip.vision_model.embeddings.position_embedding.weight  # (1 + g * g, C)
    grid = int(round((table.shape[0] - 1) ** 0.5))
    dim = table.shape[1]
    if dim % 4 != 0:
        raise ValueError(f"vision hidden size {dim} must be a multiple of 4 for sin-cos positions")
    freqs = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for axis in (yy.flatten(), xx.flatten()):
        angles = axis[:, None] * freqs[None, :]  # (g * g, C / 4)
        parts += [angles.sin(), angles.cos()]
    with torch.no_grad():
        table[0].zero_()
        table[1:] = scale * torch.cat(parts, dim=1)


TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def copy_vocabulary(source: Path, out: Path) -> int:
    """Copy a checkpoint's tokenizer files (:data:`TOKENIZER_FILES`) into ``out``; returns the
    vocabulary size. A rebuilt vocabulary may number equally frequent merges differently
    (clipseg.demo.vocabulary), so a retrained demo model reuses the shipped files and every
    token id a test or a stored exemplar relies on stays the same."""
    for name in TOKENIZER_FILES:
        if not (source / name).is_file():
            raise FileNotFoundError(f"--vocab-from {source}: {name} is missing there")
        if (source / name).resolve() != (out / name).resolve():
            shutil.copyfile(source / name, out / name)
    return len(json.loads((out / "vocab.json").read_text(encoding="utf-8")))


def write_demo_processor(out: Path, image_size: int, vocab_from: Path | None = None) -> int:
    """Write the demo tokenizer files (copied from ``vocab_from``, or built anew when it is
    None) and a preprocessor_config.json (resize to ``image_size`` square, ImageNet
    normalization, as CIDAS's) into ``out``; returns the vocabulary size."""
    vocab_size = write_vocabulary(out) if vocab_from is None else copy_vocabulary(vocab_from, out)
    pre = {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD,
        "image_processor_type": "ViTImageProcessor",
        "processor_class": "CLIPSegProcessor",
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": image_size, "width": image_size},
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    return vocab_size


def processor_image_size(processor: CLIPSegProcessor) -> int:
    """The square input size the processor resizes to."""
    size = processor.image_processor.size
    if isinstance(size, int):
        return size
    height = size["height"] if "height" in size else size["shortest_edge"]
    return int(height)


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Batch:
    """One training step's tensors. P = number of (image, prompt) pairs, E = exemplars."""

    pixel_values: torch.Tensor  # (B, 3, S, S)
    pair_image: torch.Tensor  # (P,) index into the B images
    texts: list[str]  # P prompts, possibly templated
    targets: torch.Tensor  # (P, S, S) float {0, 1}
    exemplar_pixels: torch.Tensor  # (E, 3, S, S)
    exemplar_pair: torch.Tensor  # (E,) which pair each exemplar conditions
    exemplar_class: torch.Tensor  # (E,) index into DemoData.class_names
    mix_weight: torch.Tensor  # (E,) w of w * text + (1 - w) * visual
    patch_shapes: torch.Tensor  # (B, g, g) per patch: 0 background, 1 + index in SHAPES
    discriminative: torch.Tensor  # (P,) bool: only the shape word gets this pair right

    def to(self, device: torch.device) -> Batch:
        """The same batch with every tensor on ``device``."""
        moved = {
            name: value.to(device) if isinstance(value, torch.Tensor) else value
            for name, value in vars(self).items()
        }
        return Batch(**moved)


class DemoData:
    """Batches of synthetic demo scenes with prompts, targets and exemplars.

    Exemplars come from a rolling pool of recent scenes' objects (per ``"<color> <shape>"``), so
    an exemplar usually shows the object class in a different scene than the one segmented.
    """

    def __init__(
        self,
        processor: CLIPSegProcessor,
        *,
        seed: int,
        prompts_per_image: int,
        negative_fraction: float,
        visual_fraction: float,
        visual_only_fraction: float,
        same_color_fraction: float = 0.0,
        patch_size: int = 8,
        template_fraction: float = 0.5,
        pool_per_class: int = 8,
        scene_style: str = "classic",
        hard_negative_fraction: float = 0.5,
        name_prompt_fraction: float = 0.5,
        shape_prompt_fraction: float = 0.25,
    ) -> None:
        self.processor = processor
        self.size = processor_image_size(processor)
        self.rng = random.Random(seed)
        self.prompts_per_image = prompts_per_image
        self.negative_fraction = negative_fraction
        self.visual_fraction = visual_fraction
        self.visual_only_fraction = visual_only_fraction
        self.template_fraction = template_fraction
        self.same_color_fraction = same_color_fraction
        self.patch_size = patch_size
        self.scene_style = scene_style
        self.hard_negative_fraction = hard_negative_fraction
        if name_prompt_fraction + shape_prompt_fraction > 1:
            raise ValueError(
                "--name-prompt-fraction + --shape-prompt-fraction must be at most 1 (the rest "
                "are '<color> object' prompts)"
            )
        self.name_prompt_fraction = name_prompt_fraction
        self.shape_prompt_fraction = shape_prompt_fraction
        self.class_names = [f"{c} {s}" for c in demo_scenes.COLORS for s in demo_scenes.SHAPES]
        self.class_index = {n: i for i, n in enumerate(self.class_names)}
        self.pool: dict[str, deque] = defaultdict(lambda: deque(maxlen=pool_per_class))
        mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
        std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
        self._mean, self._std = mean, std

    def _pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 (S, S, 3) images already at the input size -> normalized (N, 3, S, S)."""
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        return (x - self._mean) / self._std

    def _exemplar(self, prompt: str, scene: demo_scenes.Scene) -> tuple[np.ndarray, str] | None:
        """A visual prompt for ``prompt``: one matching object from the pool (another scene) or,
        failing that, from ``scene``; None when neither has one."""
        candidates = [
            (name, item)
            for name, items in self.pool.items()
            if items and _name_matches(prompt, name)
            for item in items
        ]
        if not candidates:
            own = scene.matches(prompt)
            if not own:
                return None
            obj = own[self.rng.randrange(len(own))]
            candidates = [(obj.name, (scene.image, obj.mask))]
        name, (image, mask) = candidates[self.rng.randrange(len(candidates))]
        crop = prepare_visual_prompt(image, mask=mask, size=self.size)
        return np.asarray(crop.convert("RGB"), dtype=np.uint8), name

    def batch(self, batch_size: int) -> Batch:
        images, pair_image, texts, targets = [], [], [], []
        ex_images, ex_pair, ex_class, ex_w = [], [], [], []
        patch_shapes = []
        discriminative = []
        new_objects = []
        for b in range(batch_size):
            seed = self.rng.randrange(demo_scenes.TRAIN_SEED_LIMIT)
            same_color = self.rng.random() < self.same_color_fraction
            scene = demo_scenes.make_scene(
                seed, size=self.size, same_color=same_color, style=self.scene_style
            )
            images.append(scene.image)
            patch_shapes.append(self._patch_shapes(scene))
            absent = scene.absent_prompts(3)
            names = sorted({o.name for o in scene.objects})
            same_color_hard, same_shape_hard = hard_negatives(scene)
            shapes = sorted({o.shape for o in scene.objects})
            colors = sorted({f"{o.color} object" for o in scene.objects})
            for _ in range(self.prompts_per_image):
                r = self.rng.random()
                if r < self.negative_fraction:
                    # a share of the negatives is hard: the color of an object present with
                    # another shape (70 % of them: only the shape word rules it out), or its
                    # shape in another color
                    pool = absent
                    if self.rng.random() < self.hard_negative_fraction:
                        first, second = same_color_hard, same_shape_hard
                        if self.rng.random() >= 0.7:
                            first, second = second, first
                        pool = first or second or absent
                    prompt = self.rng.choice(pool)
                else:
                    r = self.rng.random()
                    name_cut = self.name_prompt_fraction
                    shape_cut = name_cut + self.shape_prompt_fraction
                    pool = names if r < name_cut else shapes if r < shape_cut else colors
                    prompt = self.rng.choice(pool)
                pair = len(texts)
                pair_image.append(b)
                targets.append(scene.target(prompt))
                discriminative.append(shape_discriminates(prompt, scene))
                if self.rng.random() < self.template_fraction:
                    texts.append(self.rng.choice(TEMPLATES).format(prompt))
                else:
                    texts.append(prompt)
                if self.rng.random() < self.visual_fraction:
                    found = self._exemplar(prompt, scene)
                    if found is not None:
                        ex_images.append(found[0])
                        ex_pair.append(pair)
                        ex_class.append(self.class_index[found[1]])
                        w = 0.0 if self.rng.random() < self.visual_only_fraction else None
                        ex_w.append(self.rng.random() if w is None else w)
            new_objects += [(o.name, (scene.image, o.mask)) for o in scene.objects]
        for name, item in new_objects:  # after the batch: exemplars come from earlier scenes
            if item[1].sum() >= 16:
                self.pool[name].append(item)
        s = self.size
        return Batch(
            pixel_values=self._pixels(images),
            pair_image=torch.tensor(pair_image),
            texts=texts,
            targets=torch.from_numpy(np.stack(targets)).float(),
            exemplar_pixels=self._pixels(ex_images) if ex_images else torch.zeros(0, 3, s, s),
            exemplar_pair=torch.tensor(ex_pair, dtype=torch.long),
            exemplar_class=torch.tensor(ex_class, dtype=torch.long),
            mix_weight=torch.tensor(ex_w, dtype=torch.float32),
            patch_shapes=torch.from_numpy(np.stack(patch_shapes)),
            discriminative=torch.tensor(discriminative, dtype=torch.bool),
        )

    def _patch_shapes(self, scene: demo_scenes.Scene) -> np.ndarray:
        """(g, g) int64: the shape most of each patch's pixels show (1 + index in SHAPES), or 0
        where background is the most."""
        p = self.patch_size
        g = self.size // p
        labels = np.zeros((self.size, self.size), dtype=np.int64)
        for obj in scene.objects:
            labels[obj.mask] = 1 + demo_scenes.SHAPES.index(obj.shape)
        one_hot = np.eye(1 + len(demo_scenes.SHAPES), dtype=np.int32)[labels[: g * p, : g * p]]
        counts = one_hot.reshape(g, p, g, p, -1).sum(axis=(1, 3))  # (g, g, classes)
        return counts.argmax(-1)


def hard_negatives(scene: demo_scenes.Scene) -> tuple[list[str], list[str]]:
    """Absent ``"<color> <shape>"`` prompts that share the color (first list) or the shape
    (second) of an object present: they teach the model to check both words."""
    names = {o.name for o in scene.objects}
    same_color, same_shape = set(), set()
    for o in scene.objects:
        same_color.update(f"{o.color} {s}" for s in demo_scenes.SHAPES)
        same_shape.update(f"{c} {o.shape}" for c in demo_scenes.COLORS)
    return sorted(same_color - names), sorted(same_shape - names)


def shape_discriminates(prompt: str, scene: demo_scenes.Scene) -> bool:
    """Whether the prompt names a shape and the scene holds an object that the prompt's color
    (any color for ``"<shape>"``) would match but its shape rules out: a pair that color alone
    gets wrong."""
    color, shape = demo_scenes.parse_prompt(prompt)
    if shape is None:
        return False
    return any((color is None or o.color == color) and o.shape != shape for o in scene.objects)


def _name_matches(prompt: str, name: str) -> bool:
    """Whether the object class ``name`` ("<color> <shape>") is one that ``prompt`` names."""
    color, shape = demo_scenes.parse_prompt(prompt)
    c, s = name.split(" ")
    return (color is None or color == c) and (shape is None or shape == s)


# ---------------------------------------------------------------------------------------------
# the training step


def text_embeddings(
    model: CLIPSegForImageSegmentation, processor: CLIPSegProcessor, texts: list[str]
) -> torch.Tensor:
    """(K, projection_dim) projected pooled text embeddings, with gradients."""
    enc = processor.tokenizer(texts, padding=True, return_tensors="pt")
    device = model.device
    out = model.clip.text_model(
        input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
    )
    return model.clip.text_projection(out.pooler_output)


def segmentation_logits(
    model: CLIPSegForImageSegmentation,
    pixel_values: torch.Tensor,
    pair_image: torch.Tensor,
    conditionals: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (P, S, S) for P (image, conditional) pairs: the vision tower runs once per image,
    the decoder once per pair. Also the deepest extracted activation (B, T, C), for the
    auxiliary patch-shape loss."""
    vision = model.clip.vision_model(pixel_values=pixel_values, output_hidden_states=True)
    deepest = vision.hidden_states[max(model.config.extract_layers) + 1]
    activations = [vision.hidden_states[i + 1][pair_image] for i in model.config.extract_layers]
    return model.decoder(activations, conditionals).logits, deepest


class ShapeHeads(torch.nn.Module):
    """Training-only linear probes (never saved): the shape under each patch from the deepest
    extracted activation, and an exemplar's shape from its projected embedding.

    Without them, training from scratch settles where color alone explains most targets: the
    vision tower never tells shapes apart, so the text tower learns to ignore the shape word
    ("red circle" and "red square" got the same embedding) and the contrastive loss stays at
    ln 6 -- a symmetry that no gradient breaks. These give shape a direct signal.
    """

    def __init__(self, vision_hidden: int, projection_dim: int, n_shapes: int) -> None:
        super().__init__()
        self.patch = torch.nn.Linear(vision_hidden, n_shapes + 1)  # + background
        self.exemplar = torch.nn.Linear(projection_dim, n_shapes)


def soft_dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """1 - soft Dice per pair, averaged (weighted by ``weights`` (P,) when given); empty targets
    count through their false positives."""
    probs = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    inter = (probs * t).sum(1)
    per_pair = 1 - (2 * inter + 1) / (probs.sum(1) + t.sum(1) + 1)
    return _weighted_mean(per_pair, weights)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of (P,) ``values``, weighted by (P,) ``weights`` when given."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum()


def training_step(
    model: CLIPSegForImageSegmentation,
    processor: CLIPSegProcessor,
    batch: Batch,
    class_names: list[str],
    *,
    dice_weight: float,
    align_weight: float,
    shape_heads: ShapeHeads | None = None,
    shape_weight: float = 0.0,
    discriminative_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch and its parts (for the progress bar). Pairs that only the shape word
    gets right (``batch.discriminative``) weigh ``discriminative_weight`` in the mask losses,
    the others 1."""
    n_pairs = len(batch.texts)
    # one text-tower pass for the pairs' prompts and every "<color> <shape>" class name
    with_classes = align_weight > 0 and len(batch.exemplar_pair) > 0
    all_texts = batch.texts + (class_names if with_classes else [])
    text_emb = text_embeddings(model, processor, all_texts)
    cond = text_emb[:n_pairs]
    parts: dict[str, float] = {}
    align = torch.zeros((), device=cond.device)
    shape = torch.zeros((), device=cond.device)
    use_shape = shape_heads is not None and shape_weight > 0
    if len(batch.exemplar_pair) > 0:
        ex = model.clip.vision_model(pixel_values=batch.exemplar_pixels)
        visual = model.clip.visual_projection(ex.pooler_output)  # (E, D)
        w = batch.mix_weight[:, None]
        mixed = w * cond[batch.exemplar_pair] + (1 - w) * visual
        cond = cond.index_copy(0, batch.exemplar_pair, mixed)
        if with_classes:
            classes = F.normalize(text_emb[n_pairs:], dim=-1)
            scale = model.clip.logit_scale.exp().clamp(max=100)
            logits = scale * F.normalize(visual, dim=-1) @ classes.T
            align = F.cross_entropy(logits, batch.exemplar_class)
            parts["align"] = float(align.detach())
        if use_shape:
            n_shapes = shape_heads.exemplar.out_features
            shape = F.cross_entropy(shape_heads.exemplar(visual), batch.exemplar_class % n_shapes)
    logits, deepest = segmentation_logits(model, batch.pixel_values, batch.pair_image, cond)
    if logits.shape[-2:] != batch.targets.shape[-2:]:  # an upsampler that stops short of S
        logits = F.interpolate(
            logits[:, None], size=batch.targets.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]
    weights = None
    if discriminative_weight != 1.0:
        weights = 1.0 + (discriminative_weight - 1.0) * batch.discriminative.float()
    per_pair_bce = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none")
    bce = _weighted_mean(per_pair_bce.flatten(1).mean(1), weights)
    loss = bce + align_weight * align
    if use_shape:
        patch_logits = shape_heads.patch(deepest[:, 1:])  # (B, g * g, shapes + 1), CLS dropped
        shape = shape + F.cross_entropy(patch_logits.flatten(0, 1), batch.patch_shapes.flatten())
        loss = loss + shape_weight * shape
        parts["shape"] = float(shape.detach())
    parts["bce"] = float(bce.detach())
    if dice_weight > 0:
        dice = soft_dice_loss(logits, batch.targets, weights)
        loss = loss + dice_weight * dice
        parts["dice"] = float(dice.detach())
    return loss, parts


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float = 0.05) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def save_checkpoint(
    model: CLIPSegForImageSegmentation, processor_dir: Path, out: Path, demo: bool
) -> None:
    """``save_pretrained`` the model into ``out`` and copy the processor files beside it."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in sorted(processor_dir.iterdir()):
        if f.is_file() and f.name not in ("config.json", "model.safetensors"):
            if f.resolve() != (out / f.name).resolve():
                shutil.copyfile(f, out / f.name)
    if demo:  # mark the checkpoint as the demo model (see docs/demo-model.md)
        path = out / "config.json"
        config = json.loads(path.read_text())
        config["_name_or_path"] = DEMO_NAME
        config["demo"] = True
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clipseg.train",
        description="Train a CLIPSeg model on synthetic demo scenes, or fine-tune a checkpoint's "
        "decoder. Writes a from_pretrained-loadable checkpoint (model + processor files).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", choices=["demo"], default="demo", help="training data source")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint directory")
    p.add_argument(
        "--init",
        default=None,
        help="checkpoint to start from (directory, hub id or 'demo'); default: a new demo model",
    )
    p.add_argument(
        "--freeze-encoders",
        action="store_true",
        help="train the decoder only (the text and vision towers stay fixed)",
    )
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="scenes per step")
    p.add_argument("--prompts-per-image", type=int, default=4, help="prompts decoded per scene")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default 5%% of steps)")
    p.add_argument(
        "--same-color-fraction",
        type=float,
        default=0.0,
        help="scenes whose objects all share one color, so that only shape tells them apart",
    )
    p.add_argument(
        "--shape-weight",
        type=float,
        default=0.0,
        help="weight of the training-only shape probes (per patch and per exemplar; 0: off)",
    )
    p.add_argument("--negative-fraction", type=float, default=0.3, help="absent-prompt pairs")
    p.add_argument(
        "--hard-negative-fraction",
        type=float,
        default=0.5,
        help="of the absent prompts, those sharing an object's color (70 %%) or shape (30 %%)",
    )
    p.add_argument(
        "--name-prompt-fraction",
        type=float,
        default=0.5,
        help="of the present prompts, the '<color> <shape>' ones",
    )
    p.add_argument(
        "--shape-prompt-fraction",
        type=float,
        default=0.25,
        help="of the present prompts, the '<shape>' ones (the rest: '<color> object')",
    )
    p.add_argument(
        "--discriminative-weight",
        type=float,
        default=1.0,
        help="mask-loss weight of pairs that only the shape word gets right (a '<shape>' or "
        "'<color> <shape>' prompt, present or absent, in a scene with an object of that color "
        "and another shape)",
    )
    p.add_argument(
        "--scene-style",
        choices=demo_scenes.STYLES,
        default="classic",
        help="training scene style (clipseg.demo.scenes): the pinned classic one or the "
        "varied one (more backgrounds, sizes, edges, same-color groups)",
    )
    p.add_argument(
        "--visual-fraction",
        type=float,
        default=0.5,
        help="pairs conditioned on w * text + (1 - w) * exemplar, w ~ U(0, 1)",
    )
    p.add_argument(
        "--visual-only-fraction",
        type=float,
        default=0.3,
        help="of those visual pairs, the fraction with w = 0 (exemplar only)",
    )
    p.add_argument("--dice-weight", type=float, default=0.5, help="soft Dice loss weight")
    p.add_argument(
        "--align-weight",
        type=float,
        default=0.5,
        help="weight of the exemplar-to-class-text contrastive loss (0: off)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (data and initialization)")
    p.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--save-every", type=int, default=500, help="write the checkpoint every N steps (0: end)"
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="stop (and save) after this many minutes, whatever --steps says",
    )
    p.add_argument(
        "--anneal-by-time",
        action="store_true",
        help="with --time-limit: the cosine schedule follows the larger of the step and time "
        "fractions done, so that a run cut by the time limit still ends annealed",
    )
    p.add_argument(
        "--keep-steps",
        action="store_true",
        help="write each --save-every checkpoint into its own OUT/step-N directory (to "
        "evaluate them while training goes on) as well as the final one into OUT",
    )
    g = p.add_argument_group("demo architecture (without --init)")
    g.add_argument("--image-size", type=int, default=128, help="input size in pixels")
    g.add_argument(
        "--vocab-from",
        type=Path,
        default=Path(__file__).resolve().parent / "demo" / "checkpoint",
        help="checkpoint directory whose tokenizer files the new model uses (the shipped demo "
        "checkpoint's by default, so token ids stay valid); 'none' builds a new vocabulary",
    )
    g.add_argument("--patch-size", type=int, default=8, help="vision patch size in pixels")
    g.add_argument(
        "--upsampler",
        choices=["plain", "refined"],
        default=None,
        help="decoder upsampler: one transposed convolution (k = s = patch) or the refined one "
        "(3x3 convolution, two transposed convolutions of patch / 4: a 16 px patch comes back at "
        "full size, an 8 px one at half size, resized bilinearly like at inference); default: "
        "refined for patch 16, else plain",
    )
    g.add_argument("--vision-hidden", type=int, default=128)
    g.add_argument("--vision-layers", type=int, default=4)
    g.add_argument(
        "--extract-layers",
        type=int,
        nargs="+",
        default=None,
        help="vision blocks the decoder reads (default: the last three)",
    )
    g.add_argument("--text-hidden", type=int, default=64)
    g.add_argument("--text-layers", type=int, default=2)
    g.add_argument("--projection-dim", type=int, default=64)
    g.add_argument("--reduce-dim", type=int, default=64)
    g.add_argument("--decoder-intermediate-size", type=int, default=256)
    return p


def train(args: argparse.Namespace) -> Path:
    """Run the training described by ``args``; returns the checkpoint directory."""
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    demo = args.init is None
    if demo:
        vocab_from = None if str(args.vocab_from).lower() == "none" else args.vocab_from
        vocab_size = write_demo_processor(out, args.image_size, vocab_from)
        processor_dir = out
        model = CLIPSegForImageSegmentation(demo_config(args, vocab_size))
        init_film_identity(model)
        init_position_sincos(model)
    else:
        # float32 master weights whatever dtype the checkpoint stores
        model = CLIPSegForImageSegmentation.from_pretrained(args.init, dtype=torch.float32)
        processor_dir = _resolve_dir(args.init)
    processor = CLIPSegProcessor.from_pretrained(processor_dir)
    device = torch.device(args.device)
    model.to(device)
    model.train()
    if args.freeze_encoders:
        for p in model.clip.parameters():
            p.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    shape_heads = None
    if args.shape_weight > 0 and not args.freeze_encoders:
        cfg = model.config
        shape_heads = ShapeHeads(
            cfg.vision_config.hidden_size, cfg.projection_dim, len(demo_scenes.SHAPES)
        ).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if shape_heads is not None:
        params += list(shape_heads.parameters())
    logger.info("model: %.2f M parameters, %d trainable tensors", n_params / 1e6, len(params))

    data = DemoData(
        processor,
        seed=args.seed,
        prompts_per_image=args.prompts_per_image,
        negative_fraction=args.negative_fraction,
        visual_fraction=args.visual_fraction,
        visual_only_fraction=args.visual_only_fraction,
        same_color_fraction=args.same_color_fraction,
        patch_size=model.config.vision_config.patch_size,
        scene_style=args.scene_style,
        hard_negative_fraction=args.hard_negative_fraction,
        name_prompt_fraction=args.name_prompt_fraction,
        shape_prompt_fraction=args.shape_prompt_fraction,
    )
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
    )
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 20)
    started = time.monotonic()
    limit_s = 60 * args.time_limit if args.time_limit is not None else None

    def schedule(step: int) -> float:
        if args.anneal_by_time and limit_s is not None and step >= warmup:
            # the step count that the time fraction done corresponds to
            by_time = warmup + (args.steps - warmup) * (time.monotonic() - started) / limit_s
            step = max(step, min(int(by_time), args.steps))
        return lr_lambda(step, warmup, args.steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    align_weight = 0.0 if args.freeze_encoders else args.align_weight
    bar = tqdm(range(args.steps), desc="train", unit="step", dynamic_ncols=True)
    for step in bar:
        batch = data.batch(args.batch_size).to(device)
        loss, parts = training_step(
            model,
            processor,
            batch,
            data.class_names,
            dice_weight=args.dice_weight,
            align_weight=align_weight,
            shape_heads=shape_heads,
            shape_weight=args.shape_weight,
            discriminative_weight=args.discriminative_weight,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        done = step + 1
        if args.save_every and done % args.save_every == 0 and done < args.steps:
            target = out / f"step-{done}" if args.keep_steps else out
            save_checkpoint(model, processor_dir, target, demo)
            logger.info(
                "step %d: checkpoint written to %s (%.1f min)",
                done,
                target,
                (time.monotonic() - started) / 60,
            )
        if args.time_limit is not None and time.monotonic() - started > 60 * args.time_limit:
            logger.warning("time limit reached after %d steps; saving", done)
            break
    bar.close()
    model.eval()
    save_checkpoint(model, processor_dir, out, demo)
    minutes = (time.monotonic() - started) / 60
    print(f"trained {done} steps in {minutes:.1f} min; checkpoint written to {out}")
    return out


def _resolve_dir(name_or_path: str) -> Path:
    from clipseg.weights import resolve_checkpoint

    return Path(resolve_checkpoint(name_or_path))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
