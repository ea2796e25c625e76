"""The benchmarks' shared helpers, and smoke runs of the benchmark scripts on the small model.

The benchmarks are not tests, but their numbers are only worth something if both sides get the
same tokenizer and weights and the tables are built right; these tests check that much.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import common  # noqa: E402

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" (CLIPSEG_NOTES.md)


@pytest.mark.skipif(not common.BPE_FIXTURE.is_file(), reason="../shared CLIP BPE file is absent")
def test_processor_files_are_clips_tokenizer_for_both_sides(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer as RefTokenizer

    from clipseg import CLIPSegProcessor

    common.write_processor_files(tmp_path)
    ours = CLIPSegProcessor.from_pretrained(tmp_path).tokenizer
    theirs = RefTokenizer.from_pretrained(tmp_path)
    assert ours("a photo of a cat")["input_ids"] == CAT_IDS
    assert theirs("a photo of a cat")["input_ids"] == CAT_IDS
    assert len(theirs) == 49408


def test_processor_files_fall_back_to_the_demo_vocabulary(tmp_path: Path) -> None:
    from clipseg import CLIPSegProcessor

    common.write_processor_files(tmp_path, bpe_path=tmp_path / "absent.txt.gz")
    ids = CLIPSegProcessor.from_pretrained(tmp_path).tokenizer("a red circle")["input_ids"]
    assert ids[0] != ids[-1] and len(ids) >= 3
    assert max(ids) < common.RD64_REFINED["text_config"]["vocab_size"]


def test_markdown_table_aligns_numbers_right_and_text_left() -> None:
    table = common.markdown_table(["name", "ms"], [["ours", 12.5], ["transformers", 1234.0]])
    lines = table.splitlines()
    assert lines[1] == "|--------------|-------:|"
    assert lines[2] == "| ours         |   12.5 |"
    assert lines[3] == "| transformers | 1234.0 |"


def test_time_interleaved_runs_contenders_round_robin() -> None:
    calls: list[tuple[str, int]] = []
    times = common.time_interleaved(
        {"a": lambda r: calls.append(("a", r)), "b": lambda r: calls.append(("b", r))},
        repeats=2,
        warmup=1,
    )
    assert calls == [("a", -1), ("b", -1), ("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["bench_cpu.py", "--small", "--ks", "2", "--repeats", "1", "--warmup", "0"],
        ["bench_gpu.py", "--device", "cpu", "--small", "--dtypes", "fp32", "bf16"]
        + ["--batches", "2", "--ks", "2", "--repeats", "1", "--warmup", "0"],
        ["profile_gpu.py", "--device", "cpu", "--small", "--dtype", "fp32"]
        + ["--batch", "2", "--k", "2", "--repeats", "1", "--warmup", "0"],
        ["bench_predict_latency.py", "--small", "--repeats", "1", "--warmup", "0"],
        ["bench_formats.py", "--width", "400", "--height", "300", "--repeats", "1"],
        ["bench_interactive.py", "--small", "--width", "320", "--height", "240", "--prompts", "2"],
        ["probe_shapes.py", "--image-size", "32", "--steps", "2", "--every", "1"]
        + ["--eval-scenes", "4", "--batch-size", "2"],
    ],
    ids=[
        "cpu",
        "gpu-on-cpu",
        "profile-on-cpu",
        "predict-latency",
        "formats",
        "interactive",
        "probe-shapes",
    ],
)
def test_benchmark_scripts_run_on_the_small_model(args: list[str], tmp_path: Path) -> None:
    """Each prints its table; the two implementations agree on the small random model."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=600,
        env={"CLIPSEG_BENCH_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 2  # the header and at least one data row
    if args[0] == "bench_cpu.py":
        assert float(rows[-1].split("|")[-2]) < 1e-4  # max abs dp between the two sides
    elif args[0] == "bench_gpu.py":
        assert "OK" in done.stdout.splitlines()[-1]  # bf16 within 1e-2 of fp32
    elif args[0] == "bench_predict_latency.py":
        stages = [row.split("|")[1].strip() for row in rows[1:]]
        assert any(s.startswith("brush RLE") for s in stages)
        assert any(s.startswith("polygons") for s in stages)
        assert any(s == "total" for s in stages)
    elif args[0] == "bench_interactive.py":
        assert [row.split("|")[1].strip() for row in rows[-2:]] == ["0", "16"]
    elif args[0] == "probe_shapes.py":
        assert [row.split("|")[1].strip() for row in rows[1:]] == ["1", "2"]  # one row a step
        assert all(0.0 <= float(row.split("|")[3]) <= 1.0 for row in rows[1:])
    elif args[0] == "bench_formats.py":
        operations = [row.split("|")[1].strip() for row in rows[1:]]
        assert operations[:2] == ["brush RLE encode", "brush RLE decode"]
        assert any(o.startswith("polygons") for o in operations) and "COCO RLE encode" in operations
    else:
        stages = {row.split("|")[1].strip() for row in rows}
        assert {"encoder", "decode", "resize", "whole call"} <= stages
        assert rows[-1].split("|")[1].strip() == "upsampler as matrix products"
        assert float(rows[-1].split("|")[-2]) < 1e-4  # the lever computes the same logits


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3),
    channels=st.integers(1, 6),
    out_channels=st.integers(1, 4),
    rows=st.integers(1, 5),
    cols=st.integers(1, 5),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
)
def test_profile_gpu_upsampler_lever_computes_the_transposed_convolution(
    n: int, channels: int, out_channels: int, rows: int, cols: int, kernel: tuple[int, int]
) -> None:
    """The lever's matrix product must give the module's result, or its timing means nothing."""
    import profile_gpu
    import torch
    from torch import nn

    torch.manual_seed(n * 1000 + channels * 100 + rows * 10 + cols)
    conv = nn.ConvTranspose2d(channels, out_channels, kernel, stride=kernel).double()
    x = torch.randn(n, channels, rows, cols, dtype=torch.float64)
    assert profile_gpu.is_patch_unfold(conv)
    assert not profile_gpu.is_patch_unfold(nn.ConvTranspose2d(channels, 1, 4, stride=2))
    with torch.no_grad():
        expected = conv(x)
        got = profile_gpu.patch_unfold(x, conv)
    assert got.shape == expected.shape == (n, out_channels, rows * kernel[0], cols * kernel[1])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
