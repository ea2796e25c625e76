"""Where the GPU pipeline's time goes: ours (tensor) at B images x K prompts, stage by stage.

The pipeline is bench_gpu.py's "ours (tensor)": B uint8 640x480 images already on the device,
`predictor.set_images(batch)` then `predictor.predict(K fresh prompts, output="torch")`, on random
weights at the CIDAS/clipseg-rd64-refined shape. This script takes it apart:

1. Stages, each timed alone (synchronised, median of --repeats), making the calls the Predictor
   makes: preprocess (resize and normalize on the device, cast to the model dtype), encoder
   (vision blocks 0..9), reduce (the decoder's prompt-independent part), text (tokenize and
   embed K prompts never seen before), decode (B x K pairs to logits, --chunk-size pairs per
   call), resize (logits to float32 probabilities at the image size, one interpolate and
   sigmoid); then the whole call. Whole minus the sum of stages is what overlapping saves (if
   negative) or what launching, syncing and the host cost in between (if positive).
2. Kernels: `torch.profiler` over one whole call, the --top kernels (operators on the CPU) by
   device time, and the share of the wall time the device was busy.
3. Host syncs (CUDA): `torch.cuda.set_sync_debug_mode("warn")` over one whole call; each sync
   stalls the host until the device has drained its queue.
4. Levers, each timed against the eager stage it would replace, with the largest difference of
   its logits from the eager ones:
   - decode under a CUDA graph (captured once for these shapes, then replayed): the decoder's
     launch overhead (CUDA);
   - the upsampler's non-overlapping transposed convolutions (kernel = stride) as one matrix
     product each (`patch_unfold`), instead of cuDNN's transposed-convolution kernels;
   - decode with `torch.backends.cudnn.benchmark` (cuDNN times its algorithms for the
     upsampler's convolutions once per shape and keeps the fastest) (CUDA);
   - the encoder (blocks 0..9) under a CUDA graph, against the eager encoder: what launching
     its kernels costs at this batch (CUDA).

    python benchmarks/profile_gpu.py                       # CUDA, fp16, B=64, K=5: about a minute
    python benchmarks/profile_gpu.py --compile             # the same with compiled blocks
    python benchmarks/profile_gpu.py --device cpu --small  # the smoke configuration
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpu  # noqa: E402
import common  # noqa: E402

logger = logging.getLogger("profile_gpu")


def is_patch_unfold(module: nn.Module) -> bool:
    """A transposed convolution whose kernel equals its stride (no padding, dilation, groups):
    each input pixel writes its own kh x kw output block."""
    return (
        isinstance(module, nn.ConvTranspose2d)
        and module.kernel_size == module.stride
        and module.padding == (0, 0)
        and module.output_padding == (0, 0)
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def patch_unfold(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """``conv(x)`` for an `is_patch_unfold` convolution as one matrix product and a reshuffle:
    (N, C, H, W) -> (N, O, H * kh, W * kw)."""
    n, c, h, w = x.shape
    kh, kw = conv.kernel_size
    o = conv.out_channels
    weight = conv.weight.reshape(c, o * kh * kw)  # (C, O, kh, kw) -> (C, O * kh * kw)
    pixels = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # one row per input pixel
    bias = conv.bias.repeat_interleave(kh * kw)
    blocks = torch.addmm(bias, pixels, weight).view(n, h, w, o, kh, kw)
    return blocks.permute(0, 3, 1, 4, 2, 5).reshape(n, o, h * kh, w * kw)


class PatchUnfoldUpsampler(nn.Module):
    """The decoder's upsampler with its `is_patch_unfold` layers computed by `patch_unfold`."""

    def __init__(self, upsampler: nn.Module) -> None:
        super().__init__()
        self.steps = list(upsampler) if isinstance(upsampler, nn.Sequential) else [upsampler]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.steps:
            x = patch_unfold(x, module) if is_patch_unfold(module) else module(x)
        return x


class Pipeline:
    """The Predictor's tensor path as separate stages over fixed inputs (B images, K prompts)."""

    def __init__(self, predictor, batch: torch.Tensor, texts: list[str], chunk_size: int) -> None:
        self.predictor = predictor
        self.model = predictor.model
        self.batch = batch
        self.texts = texts
        self.chunk_size = chunk_size
        self.size = (int(batch.shape[-2]), int(batch.shape[-1]))
        with torch.inference_mode():
            self.pixels = self.preprocess()
            self.activations = self.encoder()
            self.reduced = self.reduce()
            self.embeddings = self.predictor.embed_text(texts)
            self.logits = self.decode()

    def preprocess(self) -> torch.Tensor:
        processor = self.predictor.processor.image_processor
        return processor.preprocess_tensor(self.batch).to(self.model.dtype)

    def encoder(self) -> list[torch.Tensor]:
        return self.model.clip.vision_model.hidden_states_upto(
            self.pixels, self.model.extract_layers
        )

    def reduce(self):
        grid = self.model.clip.vision_model.grid_of(self.pixels)
        return self.model.decoder.reduce(self.activations, grid)

    def text(self) -> torch.Tensor:
        return self.predictor.embed_text(common.fresh_prompts(self.texts))

    def decode(self) -> torch.Tensor:
        """(B, K, h, w) logits: images x prompts as pairs, as `Predictor` decodes few prompts."""
        k = len(self.embeddings)
        per_call = max(1, self.chunk_size // k)
        out = []
        for start in range(0, len(self.batch), per_call):
            state = self.reduced.slice(start, start + per_call).repeat_interleave(k)
            logits = self.model.decoder.decode(
                state, self.embeddings.repeat(len(state.prefix) // k, 1)
            )
            out.append(logits.logits.view(-1, k, *logits.logits.shape[-2:]))
        return torch.cat(out)

    def resize(self) -> torch.Tensor:
        from clipseg.predictor import logits_to_probs

        return logits_to_probs(self.logits.float(), self.size)  # (B, K, H, W), as the Predictor

    def whole(self) -> list[torch.Tensor]:
        self.predictor.set_images(self.batch)
        return self.predictor.predict(common.fresh_prompts(self.texts), output="torch")

    def stages(self) -> dict[str, Callable[[], object]]:
        return {
            "preprocess": self.preprocess,
            "encoder": self.encoder,
            "reduce": self.reduce,
            "text": self.text,
            "decode": self.decode,
            "resize": self.resize,
        }


def timed(fn: Callable[[], object], args, device: str) -> float:
    """Median milliseconds of ``fn()`` under inference mode."""

    def run() -> None:
        with torch.inference_mode():
            fn()

    return 1e3 * common.median(
        common.time_call(run, repeats=args.repeats, warmup=args.warmup, device=device)
    )


def kernel_table(pipeline: Pipeline, device: str, top: int) -> tuple[list[list], float, float]:
    """Top device kernels (or CPU operators) of one whole call; (rows, busy ms, wall ms)."""
    cuda = torch.device(device).type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for _ in range(2):  # the first profiled call also pays for starting the profiler
        common.synchronize(device)
        with torch.profiler.profile(activities=activities) as profile:
            start = time.perf_counter()
            pipeline.whole()
            common.synchronize(device)
            wall = time.perf_counter() - start
    events = profile.key_averages()
    if cuda:
        kernels = [  # device-side events, without the ranges annotations draw on the device
            e
            for e in events
            if e.device_type == torch.autograd.DeviceType.CUDA
            and not getattr(e, "is_user_annotation", False)  # the flag is newer than torch 2.4
        ]
        micros = {e.key: e.self_device_time_total for e in kernels}
    else:
        micros = {e.key: e.self_cpu_time_total for e in events}
    counts = {e.key: e.count for e in (kernels if cuda else events)}
    busy = sum(micros.values())
    ranked = sorted(micros.items(), key=lambda item: -item[1])[:top]
    rows = [
        [name[:70], counts[name], us / 1e3, 100 * us / busy if busy else 0.0] for name, us in ranked
    ]
    return rows, busy / 1e3, wall * 1e3


def count_host_syncs(pipeline: Pipeline) -> list[str]:
    """The distinct synchronising operations of one whole call (CUDA only)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            pipeline.whole()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    # the message is always the same; where it was raised is what tells the syncs apart. Turning
    # the debug mode on warns that it is a prototype: that warning is not a sync.
    return [
        f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0]}"
        for w in caught
        if "called a synchronizing" in str(w.message)
    ]


def cuda_graph(stage: Callable[[], object]) -> tuple[Callable[[], object], object]:
    """``stage`` captured as one CUDA graph for its current shapes: (replay, its outputs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(2):  # warm up kernels and the allocator outside the capture
            stage()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        outputs = stage()
    graph.replay()
    return graph.replay, outputs


def lever_rows(pipeline: Pipeline, args, device: str, stage_ms: dict[str, float]) -> list[list]:
    """Each lever: the stage it replaces, its ms, the speed-up over that eager stage, and the
    largest |difference| of its output (logits, or the deepest activation) from the eager one.

    A lever that fails gets a row naming the error (logged with its traceback) and the others
    still run: on a short GPU loan one experiment must not cost the rest of the measurements.
    """
    decoder = pipeline.model.decoder
    with torch.inference_mode():
        eager = {"decode": pipeline.decode().float(), "encoder": pipeline.encoder()[-1].float()}

    def decode_graph() -> tuple[float, torch.Tensor]:
        replay, logits = cuda_graph(pipeline.decode)
        return timed(replay, args, device), logits

    def encoder_graph() -> tuple[float, torch.Tensor]:
        replay, activations = cuda_graph(pipeline.encoder)
        return timed(replay, args, device), activations[-1]

    def matrix_products() -> tuple[float, torch.Tensor]:
        original = decoder.transposed_convolution
        decoder.transposed_convolution = PatchUnfoldUpsampler(original)
        try:
            with torch.inference_mode():
                return timed(pipeline.decode, args, device), pipeline.decode()
        finally:
            decoder.transposed_convolution = original

    def cudnn_benchmark() -> tuple[float, torch.Tensor]:
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            with torch.inference_mode():
                return timed(pipeline.decode, args, device), pipeline.decode()
        finally:
            torch.backends.cudnn.benchmark = before

    levers = {"upsampler as matrix products": ("decode", matrix_products)}
    if torch.device(device).type == "cuda":
        levers = {
            "decode as a CUDA graph": ("decode", decode_graph),
            **levers,
            "decode with cudnn.benchmark": ("decode", cudnn_benchmark),
            "encoder as a CUDA graph": ("encoder", encoder_graph),
        }
    rows = []
    for name, (stage, lever) in levers.items():
        try:
            ms, output = lever()
        except Exception as exc:  # reported in the table and the log, never silently
            logger.exception("lever %r failed", name)
            rows.append([name, stage, "error", "", f"{type(exc).__name__}: {exc}"[:60]])
            continue
        diff = float((output.float() - eager[stage]).abs().max())
        rows.append([name, stage, ms, stage_ms[stage] / ms, diff])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.common_arguments(parser)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--small", action="store_true", help="a tiny model (smoke test)")
    parser.add_argument("--dtype", default="fp16", choices=list(bench_gpu.DTYPES))
    parser.add_argument("--batch", type=int, default=None, help="images (default 64; small: 2)")
    parser.add_argument("--k", type=int, default=5, help="prompts per image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=15, help="kernels listed")
    parser.add_argument("--chunk-size", type=int, default=256, help="as bench_gpu.py")
    parser.add_argument("--compile", action="store_true", help="torch.compile every block")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    common.set_threads(args.threads)
    device = args.device
    cuda = torch.device(device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --device cpu (with --small for a quick run)")
    if cuda and torch.device(device).index is not None:
        torch.cuda.set_device(device)  # streams and graphs use the current device
    b = args.batch or (2 if args.small else 64)

    from clipseg import Predictor

    path = common.build_checkpoint(small=args.small, seed=args.seed, cache_dir=args.cache_dir)
    dtype = bench_gpu.DTYPES[args.dtype]
    predictor = Predictor(
        *common.load_ours(path, device, dtype), chunk_size=args.chunk_size, image_cache_size=0
    )
    if args.compile:
        logger.info("torch.compile: %d blocks", bench_gpu.compile_blocks(predictor.model))
    images = [common.make_image(args.width, args.height, seed=args.seed + i) for i in range(b)]
    batch = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    pipeline = Pipeline(predictor, batch.to(device), common.prompts(args.k), args.chunk_size)

    stage_ms = {name: timed(fn, args, device) for name, fn in pipeline.stages().items()}
    whole_ms = timed(pipeline.whole, args, device)
    total = sum(stage_ms.values())
    shape = "small" if args.small else "rd64-refined"
    print(
        f"\nStages on {device}, {args.dtype}, B={b}, K={args.k}, {args.width}x{args.height} "
        f"images, random {shape} weights, median of {args.repeats}"
        f"{', torch.compile' if args.compile else ''}"
    )
    print(f"Machine: {common.machine_description()}\n")
    rows = [[name, ms, 100 * ms / whole_ms] for name, ms in stage_ms.items()]
    rows += [["sum of stages", total, 100 * total / whole_ms], ["whole call", whole_ms, 100.0]]
    print(common.markdown_table(["stage", "ms", "% of whole"], rows))
    per_second = 1e3 / whole_ms
    print(f"\nwhole call: {b * per_second:.1f} images/s, {b * args.k * per_second:.1f} masks/s")

    kernels, busy_ms, wall_ms = kernel_table(pipeline, device, args.top)
    what = "kernels" if cuda else "operators (self CPU time)"
    print(f"\nTop {what} of one whole call (profiled: {wall_ms:.1f} ms wall, ", end="")
    print(f"{busy_ms:.1f} ms busy = {100 * busy_ms / wall_ms:.0f}%)\n")
    print(common.markdown_table(["name", "calls", "ms", "% of busy"], kernels))

    if cuda:
        syncs = count_host_syncs(pipeline)
        print(f"\nHost syncs in one whole call: {len(syncs)}")
        for message in dict.fromkeys(syncs):
            print(f"- {message}")

    print("\nLevers, each against the eager stage it replaces (the stage table above)\n")
    levers = lever_rows(pipeline, args, device, stage_ms)
    print(common.markdown_table(["lever", "stage", "ms", "speed-up", "max |d output|"], levers))


if __name__ == "__main__":
    main()
