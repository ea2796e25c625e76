"""GPU throughput: masks/s and images/s, ours against transformers on the same GPU in one run.

For every dtype (fp32, fp16, bf16), batch of B images (1, 16, 64) and K labels (1, 5, 20) both
sides turn B 640x480 images and K prompts into B x K probability maps at the image size, from the
same random checkpoint at the CIDAS/clipseg-rd64-refined shape (see common.py):

- transformers: its documented usage, one row per (image, prompt) pair:
  `processor(text=prompts * B, images=<each image K times>, padding=True)`, `model(**inputs)`,
  logits resized to the image size, sigmoid. Batches of more than --ref-max-rows pairs are sent in
  chunks of that many rows (B=64, K=20 is 1,280 encoder passes: all of its hidden states at once
  do not fit the memory of one GPU).
- ours (PIL): `predictor.set_images(images)` on the same PIL images (resized with PIL on the
  host; transformers 5 uses torchvision instead where it is installed), then
  `predictor.predict(prompts, output="torch")`: the vision encoder once per image and only
  through the deepest extracted block, the decoder once per (image, prompt) pair, --chunk-size
  pairs per call.
- ours (tensor): the same pixels as a uint8 (B, 3, H, W) batch already on the GPU (what a data
  loader with GPU decoding hands over): `set_images(batch)` resizes and normalizes on the GPU
  (within one gray level of PIL, see `CLIPSegImageProcessor.preprocess_tensor`).

All three leave the B x K probability maps (float32, at the image size) on the device: copying
64 x 5 maps of 640x480 to the host is 393 MB, which would time the PCIe link rather than the model.

Timing is wall-clock around the whole call, CUDA-synchronised, after --warmup untimed runs,
median of --repeats; each timed run uses prompts not seen before so that no text cache hits.
`rel err` is ||p - p_32||_2 / ||p_32||_2 of the probabilities against the same pipeline in fp32
on the same two images and K prompts (the error the dtype adds; the fp16/bf16 target is at most
1e-2); `vs ref` is the same against transformers in fp32 (how closely the pipeline follows the
reference: ~1e-7 for ours (PIL); for ours (tensor) the one-gray-level resize differences, which
random weights amplify). `peak MiB` is the CUDA allocator's peak
during the timed runs (0 on CPU).

    python benchmarks/bench_gpu.py                      # CUDA: a few minutes on an H100
    python benchmarks/bench_gpu.py --compile            # also torch.compile both models
    python benchmarks/bench_gpu.py --device cpu --small # the smoke configuration (CPU, tiny model)
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

logger = logging.getLogger("bench_gpu")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
REL_ERR_TARGET = 1e-2


def reference_batch(model, processor, images, texts, *, max_rows: int) -> list[torch.Tensor]:
    """transformers' usage for B images x K prompts -> B float32 (K, H, W) probabilities, left on
    the model's device like ours (a consumer thresholds them there or copies what it keeps)."""
    pairs = [(image, text) for image in images for text in texts]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = []
    for start in range(0, len(pairs), max_rows):
        chunk = pairs[start : start + max_rows]
        inputs = processor(
            text=[t for _, t in chunk],
            images=[i for i, _ in chunk],
            padding=True,
            return_tensors="pt",
        )
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            logits = model(**inputs).logits.reshape(
                len(chunk), 1, *inputs["pixel_values"].shape[-2:]
            )
            size = (images[0].height, images[0].width)
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
            out.append(torch.sigmoid(logits[:, 0]))
    return list(torch.cat(out).view(len(images), len(texts), *out[0].shape[-2:]).unbind(0))


def ours_pil(predictor, images, texts) -> list[torch.Tensor]:
    """Our Predictor on PIL images (preprocessed on the host, like the reference)."""
    if len(images) == 1:
        predictor.set_image(images[0])
        return [predictor.predict(texts, output="torch")]
    predictor.set_images(images)
    return predictor.predict(texts, output="torch")


def ours_tensor(predictor, device_batch: torch.Tensor, images, texts) -> list[torch.Tensor]:
    """Our Predictor on the same B images as a uint8 (B, 3, H, W) batch already on the device
    (decoded by the data loader or nvjpeg): resized and normalized there, no PIL."""
    predictor.set_images(device_batch[: len(images)])
    return predictor.predict(texts, output="torch")


def _as_numpy(probs: list[torch.Tensor]) -> np.ndarray:
    return torch.stack(probs).float().cpu().numpy()


def rel_err(p: np.ndarray, ref: np.ndarray) -> float:
    p64, r64 = p.astype(np.float64), ref.astype(np.float64)
    return float(np.linalg.norm(p64 - r64) / np.linalg.norm(r64))


def compile_blocks(model: torch.nn.Module) -> int:
    """`torch.compile` every transformer block (`...layers.N`) of `model` in place; the count.

    Blocks, not the whole model: our Predictor calls the towers' and the decoder's methods
    directly (encoder through block 9, decoder split in reduce/decode), which a compiled
    top-level forward would never see; compiling the blocks treats both sides alike.
    """
    blocks = [m for name, m in model.named_modules() if re.search(r"\.layers\.\d+$", name)]
    for block in blocks:
        block.compile()
    return len(blocks)


def time_contender(fn, images, texts, args, device: str) -> tuple[float, float]:
    """Median seconds of `fn(images, fresh prompts)` and the CUDA allocator's peak MiB."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = common.time_call(
        lambda: fn(images, common.fresh_prompts(texts)),
        repeats=args.repeats,
        warmup=args.warmup,
        device=device,
    )
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else 0.0
    return common.median(times), peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.common_arguments(parser)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--small", action="store_true", help="a tiny model and grid (smoke test)")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 16 64")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="default 1 5 20")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ref-max-rows", type=int, default=64, help="transformers' chunk size")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=256,
        help="our images per encoder call and (image, prompt) pairs per decoder call",
    )
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    common.set_threads(args.threads)
    batches = args.batches or ([1, 2] if args.small else [1, 16, 64])
    ks = args.ks or ([1, 5] if args.small else [1, 5, 20])
    device = args.device
    cuda = torch.device(device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --device cpu (with --small for a quick run)")

    from clipseg import Predictor

    path = common.build_checkpoint(small=args.small, seed=args.seed, cache_dir=args.cache_dir)
    images = [
        common.make_image(args.width, args.height, seed=args.seed + i) for i in range(max(batches))
    ]
    check_images = images[:2]
    # ours (tensor) takes the same pixels as a uint8 batch already on the device
    device_batch = torch.stack(
        [torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images]
    ).to(device)

    def contenders_for(dtype: torch.dtype, compile_models: bool) -> dict:
        ref_model, ref_processor = common.load_reference(path, device, dtype)
        predictor = Predictor(
            *common.load_ours(path, device, dtype), chunk_size=args.chunk_size, image_cache_size=0
        )
        if compile_models:
            logger.info(
                "torch.compile: %d transformers blocks, %d of ours",
                compile_blocks(ref_model),
                compile_blocks(predictor.model),
            )
        return {
            "transformers": functools.partial(
                reference_batch, ref_model, ref_processor, max_rows=args.ref_max_rows
            ),
            "ours (PIL)": functools.partial(ours_pil, predictor),
            "ours (tensor)": functools.partial(ours_tensor, predictor, device_batch),
        }

    # fp32 outputs of every pipeline on two images, per K: `rel err` compares each row with its own
    # pipeline in fp32 (the error of the dtype), `vs ref` with transformers in fp32 (the pipeline)
    fp32 = {
        name: {k: _as_numpy(fn(check_images, common.prompts(k))) for k in ks}
        for name, fn in contenders_for(torch.float32, compile_models=False).items()
    }
    rows = []
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        contenders = contenders_for(dtype, compile_models=args.compile)
        for k in ks:
            texts = common.prompts(k)
            outputs = {name: _as_numpy(fn(check_images, texts)) for name, fn in contenders.items()}
            errs = {name: rel_err(out, fp32[name][k]) for name, out in outputs.items()}
            vs_ref = {name: rel_err(out, fp32["transformers"][k]) for name, out in outputs.items()}
            for b in batches:
                batch = images[:b]
                medians = {}
                peaks = {}
                for name, fn in contenders.items():
                    t0 = time.perf_counter()
                    medians[name], peaks[name] = time_contender(fn, batch, texts, args, device)
                    logger.info(
                        "%s %s B=%d K=%d: %.1f ms (%.0f s in all)",
                        name, dname, b, k, medians[name] * 1e3, time.perf_counter() - t0,
                    )  # fmt: skip
                for name in contenders:
                    t = medians[name]
                    rows.append(
                        [
                            dname,
                            b,
                            k,
                            name,
                            t * 1e3,
                            b / t,
                            b * k / t,
                            medians["transformers"] / t,
                            errs[name],
                            vs_ref[name],
                            peaks[name],
                        ]
                    )
        del contenders
        if cuda:
            torch.cuda.empty_cache()

    shape = "small" if args.small else "rd64-refined"
    print(
        f"\nThroughput on {device}, {args.width}x{args.height} images, random {shape} weights, "
        f"median of {args.repeats} runs{', torch.compile' if args.compile else ''}"
    )
    print(f"Machine: {common.machine_description()}\n")
    print(
        common.markdown_table(
            [
                "dtype",
                "B",
                "K",
                "impl",
                "ms/batch",
                "images/s",
                "masks/s",
                "speed-up",
                "rel err",
                "vs ref",
                "peak MiB",
            ],
            rows,
        )
    )
    worst = max((r[8] for r in rows if r[0] != "fp32"), default=0.0)
    verdict = "OK" if worst <= REL_ERR_TARGET else "ABOVE TARGET"
    print(f"\nworst fp16/bf16 rel err: {worst:.2e} (target <= {REL_ERR_TARGET:g}): {verdict}")


if __name__ == "__main__":
    main()
