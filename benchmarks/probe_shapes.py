"""Can a demo architecture's vision tower learn shapes at all? A learning curve, not a model.

The demo model tells colors apart but hardly shapes (docs/demo-model.md). This probe asks the
question without the text tower, the decoder and the prompt mixing: the vision tower alone, with
the trainer's architecture and initialization (`clipseg.train.demo_config`, sin-cos positions),
plus one linear layer classifies the shape under every patch of generated scenes, with the
shape given directly as the target. When even this stays at chance, no mask loss through the
decoder will teach the tower shapes in the same number of steps.

    python benchmarks/probe_shapes.py --image-size 128 --minutes 20 --threads 1
    python benchmarks/probe_shapes.py --image-size 64 --minutes 20 --threads 1

Targets per patch (``g x g`` of them, ``g = image_size / patch_size``): the shape most of the
patch's pixels show, or background. Loss: cross-entropy over the 6 shapes on object patches,
plus object-versus-background (so that background, most of the patches, cannot hide a shape
head at chance). Reported every ``--every`` steps on ``--eval-scenes`` held-out scenes (seeds
from `clipseg.demo.scenes.EVAL_SEED_START`, the classic style, as `clipseg.evaluate` uses):
the share of object patches whose shape is right, against the share of the most frequent shape
(what always answering it gets).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from clipseg import CLIPSegForImageSegmentation
from clipseg.demo import scenes as demo_scenes
from clipseg.image_processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from clipseg.train import demo_config, init_position_sincos

N_SHAPES = len(demo_scenes.SHAPES)


def patch_shapes(scene: demo_scenes.Scene, patch: int) -> np.ndarray:
    """(g, g) int64: 0 background, 1 + index in SHAPES where that shape covers most pixels."""
    size = scene.image.shape[0]
    g = size // patch
    labels = np.zeros((size, size), dtype=np.int64)
    for obj in scene.objects:
        labels[obj.mask] = 1 + demo_scenes.SHAPES.index(obj.shape)
    one_hot = np.eye(1 + N_SHAPES, dtype=np.int32)[labels[: g * patch, : g * patch]]
    return one_hot.reshape(g, patch, g, patch, -1).sum(axis=(1, 3)).argmax(-1)


def scenes_to_tensors(
    seeds: list[int], size: int, patch: int, style: str, same_color: list[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized (N, 3, S, S) pixels and (N, g, g) patch targets of the scenes of ``seeds``."""
    images, targets = [], []
    for seed, same in zip(seeds, same_color, strict=True):
        scene = demo_scenes.make_scene(seed, size=size, same_color=same, style=style)
        images.append(scene.image)
        targets.append(patch_shapes(scene, patch))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    return (x - mean) / std, torch.from_numpy(np.stack(targets))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--vision-hidden", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--style", choices=demo_scenes.STYLES, default="varied", help="training scenes")
    p.add_argument("--same-color-fraction", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--minutes", type=float, default=10.0, help="stop after this long")
    p.add_argument("--every", type=int, default=100, help="evaluate every this many steps")
    p.add_argument("--eval-scenes", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    architecture = SimpleNamespace(
        vision_layers=args.vision_layers,
        extract_layers=None,
        text_hidden=64,
        text_layers=1,
        vision_hidden=args.vision_hidden,
        image_size=args.image_size,
        patch_size=args.patch_size,
        projection_dim=64,
        reduce_dim=64,
        decoder_intermediate_size=256,
        upsampler="refined",
    )
    model = CLIPSegForImageSegmentation(demo_config(architecture, vocab_size=64))
    init_position_sincos(model)
    vision = model.clip.vision_model
    head = torch.nn.Linear(args.vision_hidden, 1 + N_SHAPES)
    optimizer = torch.optim.AdamW(
        [*vision.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.05
    )

    def patch_logits(x: torch.Tensor) -> torch.Tensor:  # (N, g * g, 1 + shapes), CLS dropped
        return head(vision(pixel_values=x).last_hidden_state[:, 1:])

    seeds = range(demo_scenes.EVAL_SEED_START, demo_scenes.EVAL_SEED_START + args.eval_scenes)
    eval_x, eval_y = scenes_to_tensors(
        list(seeds), args.image_size, args.patch_size, "classic", [False] * args.eval_scenes
    )
    on_object = eval_y > 0
    majority = float(np.bincount(eval_y[on_object].numpy()).max() / max(int(on_object.sum()), 1))

    def accuracy() -> float:
        vision.eval()
        with torch.no_grad():
            predicted = patch_logits(eval_x).argmax(-1).view_as(eval_y)
        vision.train()
        return float((predicted[on_object] == eval_y[on_object]).float().mean())

    rng = np.random.default_rng(args.seed)
    curve: list[dict[str, float]] = []
    started = time.monotonic()
    step = 0
    while step < args.steps and time.monotonic() - started < 60 * args.minutes:
        batch_seeds = rng.integers(0, demo_scenes.TRAIN_SEED_LIMIT, args.batch_size).tolist()
        same = (rng.random(args.batch_size) < args.same_color_fraction).tolist()
        x, y = scenes_to_tensors(batch_seeds, args.image_size, args.patch_size, args.style, same)
        logits = patch_logits(x).flatten(0, 1)
        target = y.flatten()
        is_object = target > 0
        object_score = torch.logsumexp(logits[:, 1:], dim=-1) - logits[:, 0]
        loss = F.binary_cross_entropy_with_logits(object_score, is_object.float())
        if is_object.any():
            loss = loss + F.cross_entropy(logits[is_object], target[is_object])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % args.every == 0 or step == args.steps:
            curve.append(
                {"step": step, "seconds": round(time.monotonic() - started, 1), "acc": accuracy()}
            )
    if not curve or curve[-1]["step"] != step:
        curve.append(
            {"step": step, "seconds": round(time.monotonic() - started, 1), "acc": accuracy()}
        )

    print(
        f"vision tower {args.image_size} px, patch {args.patch_size} "
        f"({args.image_size // args.patch_size}^2 patches), hidden {args.vision_hidden}, "
        f"{args.vision_layers} layers, lr {args.lr}, "
        f"batch {args.batch_size}, {args.style} scenes; {args.eval_scenes} held-out classic scenes"
    )
    print("| step | seconds | object patches: shape right | most frequent shape |")
    print("|---:|---:|---:|---:|")
    for point in curve:
        print(f"| {point['step']} | {point['seconds']:.0f} | {point['acc']:.3f} | {majority:.3f} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "majority": majority,
                    "curve": curve,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
