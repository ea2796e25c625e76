"""The shipped demo checkpoint (clipseg/demo/checkpoint), its vocabulary, and the train/evaluate
entry points that produce and measure it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipseg import CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer, Predictor
from clipseg.demo.scenes import COLORS, SHAPES, make_scene
from clipseg.demo.vocabulary import BOS_TOKEN, EOS_TOKEN, demo_words, write_vocabulary
from clipseg.evaluate import evaluate
from clipseg.train import build_parser, lr_lambda

CHECKPOINT = Path(__file__).resolve().parents[1] / "clipseg/demo/checkpoint"
REPO = CHECKPOINT.parents[2]

# Measured on 200 held-out scenes (docs/demo-model.md); the test uses fewer scenes and floors a
# little below what those scenes give.
TEST_SCENES = 40
TEXT_FLOOR = 0.73  # measured 0.762 on these 40 scenes (0.751 on 200)
EXEMPLAR_FLOOR = 0.72  # measured 0.754 on these 40 scenes (0.730 on 200)


@pytest.fixture(scope="module")
def processor() -> CLIPSegProcessor:
    return CLIPSegProcessor.from_pretrained(CHECKPOINT)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor.from_pretrained("demo", device="cpu")


def test_checkpoint_files_and_size():
    names = {p.name for p in CHECKPOINT.iterdir()}
    needed = {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
        "tokenizer_config.json",
    }
    assert needed <= names
    total = sum(p.stat().st_size for p in CHECKPOINT.iterdir())
    assert total <= 15 * 2**20


def test_config_says_demo():
    config = json.loads((CHECKPOINT / "config.json").read_text())
    assert config["demo"] is True
    assert "demo" in config["_name_or_path"]
    assert config["model_type"] == "clipseg"


def test_vocabulary_is_clip_shaped(processor):
    vocab = json.loads((CHECKPOINT / "vocab.json").read_text())
    assert vocab[BOS_TOKEN] == len(vocab) - 2 and vocab[EOS_TOKEN] == len(vocab) - 1
    assert sorted(vocab.values()) == list(range(len(vocab)))
    tokens = sorted(vocab, key=vocab.get)
    assert all(t.endswith("</w>") for t in tokens[256:512])  # the byte symbols with the suffix
    config = json.loads((CHECKPOINT / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == len(vocab)
    assert processor.tokenizer.convert_tokens_to_ids(EOS_TOKEN) == len(vocab) - 1


def test_vocabulary_builder_makes_an_equivalent_vocabulary(tmp_path):
    """A rebuild has the shipped size and the same whole-word tokens. (The ids of equal-count
    merges may differ between builds: the tokenizers trainer breaks ties in hash order; the
    shipped files are the ones the checkpoint was trained with.)"""
    size = write_vocabulary(tmp_path)
    shipped = json.loads((CHECKPOINT / "vocab.json").read_text())
    rebuilt = json.loads((tmp_path / "vocab.json").read_text())
    assert size == len(shipped) == len(rebuilt)
    words = {w + "</w>" for w in demo_words()}
    assert words <= set(rebuilt) and words <= set(shipped)
    assert rebuilt[BOS_TOKEN] == size - 2 and rebuilt[EOS_TOKEN] == size - 1
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    for word in demo_words():
        assert tokenizer.convert_ids_to_tokens(tokenizer(word)["input_ids"][1:-1]) == [
            word + "</w>"
        ]


@pytest.mark.parametrize("word", demo_words())
def test_every_demo_word_is_one_known_token(processor, word):
    tokenizer = processor.tokenizer
    ids = tokenizer(word)["input_ids"]
    vocab = json.loads((CHECKPOINT / "vocab.json").read_text())
    assert ids[0] == vocab[BOS_TOKEN] and ids[-1] == vocab[EOS_TOKEN]
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == [word + "</w>"]
    assert len(word) == 1 or ids[1] >= 512  # a merged token, not byte-level pieces
    assert tokenizer.decode(ids, skip_special_tokens=True) == word


def test_prompts_round_trip(processor):
    tokenizer = processor.tokenizer
    for prompt in ["red circle", "a photo of a purple ring.", "Yellow   Object", "star"]:
        ids = tokenizer(prompt)["input_ids"]
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        assert decoded.replace(" .", ".") == " ".join(prompt.lower().split())
    # a word outside the vocabulary still encodes (byte level) and round-trips
    ids = tokenizer("zebra")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "zebra"


def test_loads_by_name_and_by_directory():
    by_name = CLIPSegForImageSegmentation.from_pretrained("demo")
    by_dir = CLIPSegForImageSegmentation.from_pretrained(CHECKPOINT)
    for (k, a), (_, b) in zip(
        by_name.state_dict().items(), by_dir.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k


def test_segments_the_named_object(predictor):
    scene = make_scene(10**9 + 12345, size=128)
    obj = max(scene.objects, key=lambda o: o.mask.sum())
    predictor.set_image(scene.image)
    probs = predictor.predict([obj.name])
    assert probs.shape == (1, 128, 128)
    inside = probs[0][obj.mask].mean()
    outside = probs[0][~scene.target(obj.name)].mean()
    assert inside > 0.5 > outside


def test_held_out_miou_floors(predictor):
    result = evaluate(predictor, TEST_SCENES, kinds=("text", "exemplar", "absent"))
    assert result["text"]["best_miou"] >= TEXT_FLOOR, result["text"]
    assert result["exemplar"]["best_miou"] >= EXEMPLAR_FLOOR, result["exemplar"]
    j = result["thresholds"].index(result["text"]["best_threshold"])
    assert result["absent"]["fp_rate"][j] < 0.5, result["absent"]  # measured 0.425


def test_every_color_is_understood(predictor):
    """Each "<color> object" prompt finds its objects on held-out scenes. (Shapes alone are not
    learned well yet: see docs/demo-model.md.)"""
    ious: dict[str, list[float]] = {c: [] for c in COLORS}
    for seed in range(10**9 + 500, 10**9 + 530):
        scene = make_scene(seed, size=128)
        predictor.set_image(scene.image)
        prompts = sorted({f"{o.color} object" for o in scene.objects})
        probs = predictor.predict(prompts)
        for prompt, p in zip(prompts, probs, strict=True):
            target = scene.target(prompt)
            pred = p >= 0.5
            ious[prompt.split()[0]].append((pred & target).sum() / (pred | target).sum())
    for color, values in ious.items():
        assert values, color
        assert np.mean(values) > 0.4, (color, np.mean(values))


# ---------------------------------------------------------------------------------------------
# the entry points


def test_lr_schedule_warms_up_then_decays():
    values = [lr_lambda(s, 10, 100) for s in range(100)]
    assert values[0] < values[5] < values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert values[-1] < 0.1


def test_train_help_lists_the_options():
    text = build_parser().format_help()
    for option in (
        "--data",
        "--steps",
        "--batch-size",
        "--lr",
        "--out",
        "--threads",
        "--init",
        "--freeze-encoders",
    ):
        assert option in text


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


TINY = [
    "--image-size", "32", "--patch-size", "8", "--vision-hidden", "32", "--vision-layers", "3",
    "--text-hidden", "32", "--text-layers", "1", "--projection-dim", "16", "--reduce-dim", "16",
    "--decoder-intermediate-size", "32",
]  # fmt: skip


def test_train_cli_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "ckpt"
    args = ["--steps", "3", "--batch-size", "2", "--prompts-per-image", "2", "--threads", "1"]
    proc = _run("-m", "clipseg.train", "--out", str(out), *args, *TINY)
    assert proc.returncode == 0, proc.stderr
    model = CLIPSegForImageSegmentation.from_pretrained(out)
    predictor = Predictor(model, CLIPSegProcessor.from_pretrained(out))
    predictor.set_image(make_scene(1, size=48).image)
    probs = predictor.predict(["red circle", "star"])
    assert probs.shape == (2, 48, 48) and np.isfinite(probs).all()
    assert json.loads((out / "config.json").read_text())["demo"] is True


def test_train_cli_fine_tunes_the_decoder_only(tmp_path):
    base = tmp_path / "base"
    assert _run("-m", "clipseg.train", "--out", str(base), "--steps", "1", *TINY).returncode == 0
    tuned = tmp_path / "tuned"
    args = ["--init", str(base), "--freeze-encoders", "--steps", "2", "--batch-size", "2"]
    proc = _run("-m", "clipseg.train", "--out", str(tuned), *args)
    assert proc.returncode == 0, proc.stderr
    a = CLIPSegForImageSegmentation.from_pretrained(base).state_dict()
    b = CLIPSegForImageSegmentation.from_pretrained(tuned).state_dict()
    for k in a:
        same = torch.equal(a[k], b[k])
        assert same if k.startswith("clip.") else True, k
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))


def test_evaluate_cli_reports_miou(tmp_path):
    out = tmp_path / "result.json"
    proc = _run("-m", "clipseg.evaluate", "--scenes", "3", "--json", str(out), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "text: best mIoU" in proc.stdout
    result = json.loads(out.read_text())
    assert result["scenes"] == 3 and 0.0 <= result["text"]["best_miou"] <= 1.0


def test_train_cli_shape_probes_same_color_scenes_and_refined_upsampler(tmp_path):
    out = tmp_path / "ckpt"
    args = ["--steps", "2", "--batch-size", "2", "--prompts-per-image", "2", "--threads", "1"]
    args += ["--shape-weight", "1", "--same-color-fraction", "1", "--upsampler", "refined"]
    proc = _run("-m", "clipseg.train", "--out", str(out), *args, *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "shape=" in proc.stderr  # the probes' loss is on the progress bar
    config = json.loads((out / "config.json").read_text())
    assert config["use_complex_transposed_convolution"] is True
    model = CLIPSegForImageSegmentation.from_pretrained(out)
    predictor = Predictor(model, CLIPSegProcessor.from_pretrained(out))
    predictor.set_image(make_scene(2, size=48).image)
    probs, logits = predictor.predict(["red circle"], return_logits=True)
    assert probs.shape == (1, 48, 48) and logits.shape == (1, 16, 16)  # half of 32 px
    assert not any(k.startswith(("patch", "exemplar")) for k in model.state_dict())


def test_patch_shape_labels_follow_the_visible_masks():
    from clipseg.train import DemoData

    data = DemoData.__new__(DemoData)  # only the fields _patch_shapes reads
    data.size, data.patch_size = 128, 8
    scene = make_scene(10**9 + 7, size=128)
    labels = data._patch_shapes(scene)
    assert labels.shape == (16, 16)
    for obj in scene.objects:
        covered = obj.mask.reshape(16, 8, 16, 8).mean(axis=(1, 3)) > 0.5
        assert (labels[covered] == 1 + SHAPES.index(obj.shape)).all()
    background = ~np.any([o.mask for o in scene.objects], axis=0).reshape(16, 8, 16, 8).any(
        axis=(1, 3)
    )
    assert (labels[background] == 0).all()


def test_train_reuses_the_shipped_vocabulary_and_varied_scenes(tmp_path):
    out = tmp_path / "ckpt"
    args = ["--steps", "2", "--batch-size", "2", "--prompts-per-image", "3", "--threads", "1"]
    args += ["--scene-style", "varied", "--discriminative-weight", "2", "--keep-steps"]
    args += ["--save-every", "1", "--hard-negative-fraction", "1"]
    proc = _run("-m", "clipseg.train", "--out", str(out), *args, *TINY)
    assert proc.returncode == 0, proc.stderr
    for name in ("vocab.json", "merges.txt"):
        assert (out / name).read_bytes() == (CHECKPOINT / name).read_bytes(), name
    step = out / "step-1"  # the intermediate checkpoint loads on its own
    model = CLIPSegForImageSegmentation.from_pretrained(step)
    assert model.config.text_config.vocab_size == len(
        json.loads((CHECKPOINT / "vocab.json").read_text())
    )


def test_shape_discriminating_pairs_and_hard_negatives():
    from clipseg.demo.scenes import Scene, SceneObject
    from clipseg.train import hard_negatives, shape_discriminates

    mask = np.zeros((8, 8), bool)
    scene = Scene(
        seed=0,
        image=np.zeros((8, 8, 3), np.uint8),
        objects=[SceneObject("white", "circle", mask), SceneObject("red", "star", mask)],
        background="plain",
    )
    assert shape_discriminates("white square", scene)  # absent, and color alone would fire
    assert shape_discriminates("white circle", scene) is False  # the only white object
    assert shape_discriminates("circle", scene)  # the red star is not one
    assert shape_discriminates("white object", scene) is False  # no shape word
    assert shape_discriminates("blue square", scene) is False  # no blue object
    same_color, same_shape = hard_negatives(scene)
    assert "white square" in same_color and "white circle" not in same_color
    assert "blue circle" in same_shape and "red star" not in same_shape


# ---------------------------------------------------------------------------------------------
# panoptic quality


def _box(y0: int, y1: int, x0: int, x1: int, size: int = 40) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_panoptic_quality_hand_computed():
    from clipseg.evaluate import panoptic_quality

    truth = [
        ("white circle", _box(0, 10, 0, 10)),  # 100 px
        ("white circle", _box(20, 30, 0, 10)),
        ("red star", _box(20, 30, 20, 30)),
    ]
    predicted = [
        ("white circle", _box(0, 8, 0, 10)),  # IoU 80 / 100 = 0.8 with the first circle: TP
        ("white circle", _box(20, 24, 0, 10)),  # IoU 0.4 with the second: a false region
        ("white square", _box(0, 10, 0, 10)),  # right pixels, wrong label: a false region
    ]
    counts = panoptic_quality(predicted, truth)
    assert (counts.tp, counts.fp, counts.fn) == (1, 2, 2)  # second circle and the star missed
    assert counts.sq == pytest.approx(0.8)
    assert counts.rq == pytest.approx(1 / (1 + 0.5 * 2 + 0.5 * 2))
    assert counts.pq == pytest.approx(0.8 / 3)


def test_panoptic_quality_matches_one_to_one_and_adds_up():
    from clipseg.evaluate import PanopticCounts, panoptic_quality

    truth = [("star", _box(0, 10, 0, 10))]
    # two overlapping predictions both over IoU 0.5: only the better one is a match
    predicted = [("star", _box(0, 10, 0, 10)), ("star", _box(0, 9, 0, 10))]
    counts = panoptic_quality(predicted, truth)
    assert (counts.tp, counts.fp, counts.fn) == (1, 1, 0) and counts.iou_sum == pytest.approx(1)
    # IoU exactly 0.5 is not a match (strictly above)
    half = panoptic_quality([("star", _box(0, 5, 0, 10))], truth)
    assert (half.tp, half.fp, half.fn) == (0, 1, 1) and half.pq == 0.0
    total = counts + half
    assert total == PanopticCounts(tp=1, fp=2, fn=1, iou_sum=counts.iou_sum)
    assert panoptic_quality([], []).pq == 1.0  # nothing to find, nothing found
    with pytest.raises(ValueError, match="grid"):
        panoptic_quality([("star", _box(0, 5, 0, 5, size=20))], truth)
