"""Per-image CPU latency with K labels: our Predictor against transformers' documented usage.

Both sides load the same random checkpoint at the CIDAS/clipseg-rd64-refined shape (see common.py)
and get the same 640x480 image and the same K label prompts; both return probabilities (K, H, W)
at the image size.

- transformers: `processor(text=prompts, images=[image] * K, padding=True, return_tensors="pt")`,
  `model(**inputs)`, logits resized to the image size, sigmoid (the vision encoder runs K times).
- ours: `predictor.set_image(image)` then `predictor.predict(prompts)` (the vision encoder runs
  once, through the deepest extracted block; the decoder runs on the K prompts).

Each timed run uses prompts it has not seen before ("a cat 3", ...), so our per-string text
embedding cache never hits; the "labels cached" column repeats the same prompts, as a backend does
for every task of a project. Runs are interleaved (ours, theirs, ours, ...) so that background
load hits both; the table shows medians. `max abs dp` is the largest difference between the two
sides' probabilities, over all pixels and prompts, so that the comparison is known to be honest.

    python benchmarks/bench_cpu.py --threads 2 --repeats 7
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

logger = logging.getLogger("bench_cpu")


def bench_k(
    k: int, predictor, ref_model, ref_processor, image, *, repeats: int, warmup: int
) -> list[object]:
    """One table row: medians for K labels, the speed-ups and the probabilities' agreement."""
    texts = common.prompts(k)
    rounds: dict[int, list[str]] = {}

    def fresh(run: int) -> list[str]:
        """New prompts for each round, the same for both sides within a round."""
        if run not in rounds:
            rounds[run] = common.fresh_prompts(texts)
        return rounds[run]

    def ours(run: int) -> np.ndarray:
        predictor.set_image(image)
        return predictor.predict(fresh(run))

    def ours_cached(run: int) -> np.ndarray:
        predictor.set_image(image)
        return predictor.predict(texts)

    def theirs(run: int) -> torch.Tensor:
        return common.reference_predict(ref_model, ref_processor, image, fresh(run))

    times = common.time_interleaved(
        {"theirs": theirs, "ours": ours, "ours_cached": ours_cached},
        repeats=repeats,
        warmup=warmup,
    )
    t_ref, t_ours, t_cached = (common.median(times[n]) for n in ("theirs", "ours", "ours_cached"))
    mine = ours_cached(0)
    ref = common.reference_predict(ref_model, ref_processor, image, texts).numpy()
    if mine.shape != ref.shape:
        raise AssertionError(f"shapes differ: ours {mine.shape}, transformers {ref.shape}")
    diff = float(np.abs(mine.astype(np.float64) - ref.astype(np.float64)).max())
    return [k, t_ref * 1e3, t_ours * 1e3, t_ref / t_ours, t_cached * 1e3, t_ref / t_cached, diff]


def bench_levers(path: Path, predictor, image, *, k: int, repeats: int, warmup: int) -> list:
    """Each lever of the Predictor on its own: the same work with and without it (fp32, CPU).

    Rows: (lever, what is timed, without ms, with ms, without / with).
    """
    from transformers import CLIPSegForImageSegmentation as RefModel

    from clipseg.layers import MLP
    from clipseg.vision import resample_position_embeddings

    def in_one_pass(fn):
        """``fn`` with every feed-forward computed in one pass (no CPU row blocks)."""

        def run():
            blocks = MLP.cpu_block_rows
            MLP.cpu_block_rows = sys.maxsize
            try:
                return fn()
            finally:
                MLP.cpu_block_rows = blocks

        return run

    model = predictor.model
    vision, decoder = model.clip.vision_model, model.decoder
    layers = list(model.extract_layers)
    pixels = predictor._pixel_values([image])  # (1, 3, 352, 352)
    texts = common.prompts(k)
    emb = predictor.embed_text(texts)  # (K, D)
    emb20 = predictor.embed_text(common.prompts(20))
    grid = vision.grid_of(pixels)
    eager = RefModel.from_pretrained(path, attn_implementation="eager").eval()
    sdpa = RefModel.from_pretrained(path, attn_implementation="sdpa").eval()
    with torch.inference_mode():
        acts = vision.hidden_states_upto(pixels, layers)
        state = decoder.reduce(acts, grid)
        weight = vision.embeddings.position_embedding.weight
        trained = vision.embeddings.trained_grid
        pairs = [
            (
                "SDPA attention (transformers' own switch)",
                "vision encoder, 12 blocks",
                lambda: eager.clip.vision_model(pixels),
                lambda: sdpa.clip.vision_model(pixels),
            ),
            (
                "stop after the deepest extracted block",
                "vision encoder: 12 blocks + post-LN vs blocks 0..9",
                lambda: vision(pixels, output_hidden_states=True),
                lambda: vision.hidden_states_upto(pixels, layers),
            ),
            (
                "reduce projections once per image",
                f"decoder, {k} prompts: activations repeated K times vs reduced once",
                lambda: decoder([a.expand(k, -1, -1) for a in acts], emb, grid),
                lambda: decoder.decode(decoder.reduce(acts, grid), emb),
            ),
            (
                "prompts batched in one decoder call",
                f"decoder, {k} prompts: {k} calls of 1 vs 1 call of {k}",
                lambda: [decoder.decode(state, emb[i : i + 1]) for i in range(k)],
                lambda: decoder.decode(state, emb),
            ),
            (
                "feed-forward in 512-row blocks",
                "decoder, 20 prompts: one pass vs row blocks",
                in_one_pass(lambda: decoder.decode(state, emb20)),
                lambda: decoder.decode(state, emb20),
            ),
            (
                "cached interpolated position embeddings",
                "bicubic resampling 14x14 -> 22x22 vs the cache lookup",
                lambda: resample_position_embeddings(weight, grid, trained),
                lambda: vision.embeddings.position_embeddings(grid),
            ),
            (
                "text embedding cache",
                f"embed_text of {k} labels: new strings vs cached",
                lambda: predictor.embed_text(common.fresh_prompts(texts)),
                lambda: predictor.embed_text(texts),
            ),
        ]
        rows = []
        for lever, what, without, with_ in pairs:
            logger.info("lever: %s ...", lever)
            times = common.time_interleaved(
                {"without": lambda _r, f=without: f(), "with": lambda _r, f=with_: f()},
                repeats=repeats,
                warmup=warmup,
            )
            a, b = common.median(times["without"]), common.median(times["with"])
            rows.append([lever, what, a * 1e3, b * 1e3, a / b])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.common_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per contender")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20], help="label counts")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--small", action="store_true", help="a tiny model (smoke test)")
    parser.add_argument(
        "--levers",
        action="store_true",
        help="instead of the comparison, time each of the Predictor's levers with and without it",
    )
    parser.add_argument("--lever-k", type=int, default=5, help="labels for --levers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    common.set_threads(args.threads)

    from clipseg import Predictor

    path = common.build_checkpoint(small=args.small, seed=args.seed, cache_dir=args.cache_dir)
    predictor = Predictor(*common.load_ours(path), image_cache_size=0)  # time the encoder
    image = common.make_image(args.width, args.height, seed=args.seed)
    shape = "small" if args.small else "rd64-refined"
    if args.levers:
        rows = bench_levers(
            path, predictor, image, k=args.lever_k, repeats=args.repeats, warmup=args.warmup
        )
        print(
            f"\nThe Predictor's levers one at a time, CPU, random {shape} weights, fp32, "
            f"median of {args.repeats} interleaved runs"
        )
        print(f"Machine: {common.machine_description()}\n")
        print(
            common.markdown_table(
                ["lever", "timed work", "without ms", "with ms", "without / with"], rows
            )
        )
        return
    ref_model, ref_processor = common.load_reference(path)

    rows = []
    for k in args.ks:
        logger.info("K = %d ...", k)
        rows.append(
            bench_k(
                k,
                predictor,
                ref_model,
                ref_processor,
                image,
                repeats=args.repeats,
                warmup=args.warmup,
            )
        )
    print(
        f"\nPer-image latency on CPU, {args.width}x{args.height} image, random {shape} weights, "
        f"fp32, median of {args.repeats} interleaved runs"
    )
    print(f"Machine: {common.machine_description()}\n")
    print(
        common.markdown_table(
            [
                "K labels",
                "transformers ms",
                "ours ms",
                "speed-up",
                "ours, labels cached ms",
                "speed-up",
                "max abs dp",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
