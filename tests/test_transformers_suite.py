"""The behaviours transformers' own CLIPSeg tests check, checked here on `clipseg`, with
transformers (5.x, installed) as the oracle.

Read for this module (not copied): transformers' ``tests/models/clipseg/test_modeling_clipseg.py``
and ``test_processor_clipseg.py`` (formerly ``test_processing_clipseg.py``), and the mixins they
use: ``ModelTesterMixin`` (``tests/test_modeling_common.py``), ``ConfigTester``
(``tests/test_configuration_common.py``) and ``ProcessorTesterMixin``
(``tests/test_processing_common.py``). The small shapes below are those of its model testers.
Each test runs the same calls on both libraries and compares; where clipseg differs on purpose,
the test says so and docs/transformers.md explains why.

Left out, as transformers-internal or not part of CLIPSeg, and why:

- Flax/TensorFlow equivalence: there is no Flax or TensorFlow CLIPSeg here.
- TorchScript, torch.fx and torch.compile export tests: transformers' export plumbing
  (``config.torchscript``, fx tracers); not an API clipseg offers.
- ``PipelineTesterMixin`` ("feature-extraction"): transformers' pipelines and Auto* registry.
- Gradient checkpointing: transformers skips it for CLIPSeg itself (its GC is broken there);
  clipseg trains only the decoder and has no checkpointing switch.
- ``_from_config``, ``post_init``, ``_init_weights``, ``_keys_to_ignore_on_*``, tied weights,
  ``_keep_in_fp32_modules``, ``_no_split_modules``, "all missing weights can be initialised":
  ``PreTrainedModel`` internals. The behaviour they protect (the reference's initialisation) is
  checked below through the public constructor.
- Head masking and pruning: removed in transformers 5 and skipped for CLIPSeg.
- ``inputs_embeds``: skipped by transformers' CLIPSeg tests (CLIPSeg takes token ids).
- Model parallelism, multi-GPU, accelerate ``device_map`` dispatch, CPU/disk offload,
  quantization: accelerate features; a multi-device map is refused on purpose (one GPU holds
  CLIPSeg).
- Flash-attention / flex-attention kernels: kernel selection on GPUs; clipseg runs SDPA (which
  picks flash or memory-efficient kernels itself) or eager, both checked below.
- ``ignore_mismatched_sizes`` and the mismatched-shape tests: clipseg loads strictly on purpose.
- Generation (left padding, ``generate``), ``problem_type`` classification heads, chat
  templates, audio and video kwargs: not part of CLIPSeg.
- Hub tests (``push_to_hub``, ``from_pretrained("CIDAS/...")``) and the integration test on
  CIDAS' weights and a COCO image: no network in tests; test_parity.py checks the numbers on
  random weights at the CIDAS shapes instead.
- slow/fast tokenizers (``use_fast``): clipseg has one tokenizer, on `tokenizers`.
- Processor ``from_pretrained(d, bos_token="(BOS)", ...)``, which adds new special tokens:
  clipseg refuses special tokens that are not in the vocabulary (the text tower pools at the
  EOS id), see ``test_special_tokens_outside_the_vocabulary_are_refused``.
"""

from __future__ import annotations

import copy
import inspect
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import clipseg

transformers = pytest.importorskip("transformers", reason="transformers is the oracle")

# transformers' CLIPSeg model testers' shapes (batch smaller: the checks do not depend on it)
BATCH = 3
VISION = {
    "image_size": 30,
    "patch_size": 2,
    "num_channels": 3,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "attention_dropout": 0.1,
    "initializer_range": 0.02,
}
TEXT = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "attention_dropout": 0.1,
    "max_position_embeddings": 512,
    "initializer_range": 0.02,
}
COMPOSITE = {"projection_dim": 64, "reduce_dim": 32, "extract_layers": [1]}
SEQ = 7
CONFIGS = {
    "CLIPSegVisionModel": ("CLIPSegVisionConfig", VISION),
    "CLIPSegTextModel": ("CLIPSegTextConfig", TEXT),
    "CLIPSegModel": ("CLIPSegConfig", {"text_config": TEXT, "vision_config": VISION, **COMPOSITE}),
    "CLIPSegForImageSegmentation": (
        "CLIPSegConfig",
        {"text_config": TEXT, "vision_config": VISION, **COMPOSITE},
    ),
}
MODEL_CLASSES = list(CONFIGS)


def _config(library, name: str, **changes):
    config_class, kwargs = CONFIGS[name]
    return getattr(library, config_class)(**copy.deepcopy({**kwargs, **changes}))


def _inputs(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(BATCH, 3, 30, 30, generator=generator)
    ids = torch.randint(0, TEXT["vocab_size"], (BATCH, SEQ), generator=generator)
    ids[:, -1] = TEXT["vocab_size"] - 1  # a highest id: where the legacy rule pools, too
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[0, 4:] = 0
    return {
        "CLIPSegVisionModel": {"pixel_values": pixels},
        "CLIPSegTextModel": {"input_ids": ids, "attention_mask": mask},
    }.get(name, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels})


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> (transformers model, clipseg model loaded from its save_pretrained, directory)."""
    built = {}
    for index, name in enumerate(MODEL_CLASSES):
        directory = tmp_path_factory.mktemp(name)
        torch.manual_seed(index)
        ref = getattr(transformers, name)(_config(transformers, name)).eval()
        ref.save_pretrained(directory)
        built[name] = (ref, getattr(clipseg, name).from_pretrained(directory), directory)
    return built


def _flat(output) -> list:
    """Every tensor (or None) in an output, in order."""
    if isinstance(output, dict):
        output = tuple(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _flat(item)]
    return [output]


def _assert_equal_outputs(a, b, atol: float = 0.0) -> None:
    fa, fb = _flat(a), _flat(b)
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(y, x, rtol=0, atol=atol)


# -- ConfigTester --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CLIPSegTextConfig", "CLIPSegVisionConfig", "CLIPSegConfig"])
def test_config_common_properties_as_transformers(name) -> None:
    """Getters, setters and constructor arguments of the common properties: the same values,
    or the same refusal (both validate heads against the width)."""
    properties = ["hidden_size", "num_attention_heads", "num_hidden_layers"]
    if name == "CLIPSegTextConfig":
        properties.append("vocab_size")
    if name == "CLIPSegConfig":
        properties = []  # transformers checks none on composite configs
    ours, ref = getattr(clipseg, name)(), getattr(transformers, name)()
    for index, prop in enumerate(properties):
        setattr(ours, prop, index)
        setattr(ref, prop, index)
        assert getattr(ours, prop) == getattr(ref, prop) == index
        outcomes = []
        for library in (clipseg, transformers):
            try:
                outcomes.append(getattr(getattr(library, name)(**{prop: index}), prop))
            except (ValueError, ZeroDivisionError, TypeError) as exc:
                outcomes.append(f"refused ({type(exc).__name__})")
        assert outcomes[0] == outcomes[1], (prop, index, outcomes)


@pytest.mark.parametrize("name", ["CLIPSegTextConfig", "CLIPSegVisionConfig", "CLIPSegConfig"])
def test_config_files_round_trip(name, tmp_path) -> None:
    kwargs = {"CLIPSegTextConfig": TEXT, "CLIPSegVisionConfig": VISION}.get(
        name, {"text_config": TEXT, "vision_config": VISION, **COMPOSITE}
    )
    config = getattr(clipseg, name)(**copy.deepcopy(kwargs))
    written = json.loads(config.to_json_string())
    for key, value in kwargs.items():
        expected = value if not isinstance(value, dict) else {**written[key], **value}
        assert written[key] == expected, key
    config.to_json_file(tmp_path / "c.json")
    assert type(config).from_json_file(tmp_path / "c.json").to_dict() == config.to_dict()
    config.save_pretrained(tmp_path / "saved")
    assert type(config).from_pretrained(tmp_path / "saved").to_dict() == config.to_dict()
    config.save_pretrained(tmp_path / "outer" / "test")
    again = type(config).from_pretrained(tmp_path / "outer", subfolder="test")
    assert again.to_dict() == config.to_dict()
    for library in (clipseg, transformers):  # a path that is not there: OSError in both
        with pytest.raises(OSError):
            getattr(library, name).from_pretrained(f".{tmp_path}/saved")
    # transformers reads what clipseg wrote, to the same dict (but its version key)
    ref = getattr(transformers, name).from_pretrained(tmp_path / "saved").to_dict()
    ref.pop("transformers_version", None)
    for sub in ("text_config", "vision_config"):
        if sub in ref:
            ref[sub].pop("transformers_version", None)
    assert json.loads(json.dumps(ref)) == json.loads(json.dumps(config.to_dict()))


def test_composite_config_and_its_sub_configs(tmp_path) -> None:
    """A sub-config class reads its part of a full config.json, equal to the composite's part;
    saved alone it reads back the same (ConfigTester's composite test; transformers' own
    test_load_vision_text_config)."""
    config = _config(clipseg, "CLIPSegModel")
    config.save_pretrained(tmp_path)
    loaded = clipseg.CLIPSegConfig.from_pretrained(tmp_path)
    assert list(loaded.sub_configs) == list(transformers.CLIPSegConfig.sub_configs)
    for key, sub_class in loaded.sub_configs.items():
        part = sub_class.from_pretrained(tmp_path)
        assert part.to_dict() == config.to_dict()[key]
        assert isinstance(part, type(getattr(loaded, key)))
        part.save_pretrained(tmp_path / key)
        assert sub_class.from_pretrained(tmp_path / key).to_dict() == part.to_dict()
    # iterating over a config gives its attribute names, as transformers'
    text_key = [key for key in config if getattr(config, key) is config.get_text_config()]
    assert text_key == ["text_config"]


@pytest.mark.parametrize("name", ["CLIPSegTextConfig", "CLIPSegVisionConfig", "CLIPSegConfig"])
def test_config_num_labels_and_defaults(name) -> None:
    config = getattr(clipseg, name)(num_labels=5)
    assert len(config.id2label) == len(config.label2id) == 5
    config.num_labels = 3
    assert len(config.id2label) == len(config.label2id) == 3
    assert getattr(clipseg, name)() is not None  # every config has defaults


# transformers' ConfigTester config_common_kwargs, a selection that CLIPSeg's towers store
COMMON_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": False,
    "is_decoder": True,
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "finetuning_task": "translation",
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "tokenizer_class": "BertTokenizerFast",
    "prefix": "prefix",
    "bos_token_id": 6,
    "pad_token_id": 7,
    "eos_token_id": 8,
    "task_specific_params": {"translation": "some_params"},
    "problem_type": "regression",
}


@pytest.mark.parametrize("name", ["CLIPSegTextConfig", "CLIPSegVisionConfig"])
def test_config_generic_arguments_are_kept(name) -> None:
    ours = getattr(clipseg, name)(**copy.deepcopy(COMMON_KWARGS))
    ref = getattr(transformers, name)(**copy.deepcopy(COMMON_KWARGS))
    for key in COMMON_KWARGS:
        assert getattr(ours, key) == getattr(ref, key), key
    assert ours.dtype == torch.float16


# -- ModelTesterMixin and the CLIPSeg model tests --------------------------------------------


@pytest.mark.parametrize("name", MODEL_CLASSES)
def test_model_outputs_equal_transformers(pairs, name) -> None:
    """create_and_check_model: the shapes transformers' tests expect, and its exact numbers."""
    ref, ours, _ = pairs[name]
    inputs = _inputs(name)
    with torch.no_grad():
        a, b = ref(**inputs), ours(**inputs)
    _assert_equal_outputs(a, b)
    if name == "CLIPSegVisionModel":
        assert b.last_hidden_state.shape == (BATCH, (30 // 2) ** 2 + 1, 32)
        assert b.pooler_output.shape == (BATCH, 32)
    elif name == "CLIPSegTextModel":
        assert b.last_hidden_state.shape == (BATCH, SEQ, 32)
    elif name == "CLIPSegModel":
        assert b.logits_per_image.shape == b.logits_per_text.shape == (BATCH, BATCH)
    else:
        assert b.logits.shape == (BATCH, 30, 30)
        assert b.conditional_embeddings.shape == (BATCH, COMPOSITE["projection_dim"])


@pytest.mark.parametrize("name", MODEL_CLASSES)
def test_forward_signature_and_main_input_name(name) -> None:
    ours, ref = getattr(clipseg, name), getattr(transformers, name)
    params = list(inspect.signature(ours.forward).parameters)
    ref_params = list(inspect.signature(ref.forward).parameters)
    assert params[:2] == ref_params[:2]
    assert ours.main_input_name == params[1] == ref.main_input_name


def _zero_init(config):
    """Every *_range, *_std and initializer_factor 1e-10 (transformers' _config_zero_init)."""
    config = copy.deepcopy(config)
    for owner in (
        config,
        getattr(config, "text_config", None),
        getattr(config, "vision_config", None),
    ):
        if owner is None:
            continue
        for key in list(owner.to_dict()):
            if "_range" in key or "_std" in key or "initializer_factor" in key:
                setattr(owner, key, 1e-10)
    return config


@pytest.mark.parametrize("name", MODEL_CLASSES)
def test_initialization_as_transformers(name) -> None:
    """With the init scales at ~0, every parameter's mean is 0 or 1 (logit_scale log(1/0.07));
    film/reduce/transposed convolutions keep torch's default init, as transformers says."""

    def means(model):
        out = {}
        for key, param in model.named_parameters():
            if "film" in key or "transposed_conv" in key or "reduce" in key:
                continue
            out[key] = round(float(param.data.mean()) * 1e9) / 1e9
        return out

    ours = getattr(clipseg, name)(_zero_init(_config(clipseg, name)))
    ref = getattr(transformers, name)(_zero_init(_config(transformers, name)))
    a, b = means(ref), means(ours)
    assert a.keys() == b.keys()
    for key in a:
        if "logit_scale" in key:
            assert math.isclose(b[key], math.log(1 / 0.07), abs_tol=1e-3)
        else:
            assert b[key] == a[key] and b[key] in (0.0, 1.0), key


@pytest.mark.parametrize("name", MODEL_CLASSES)
def test_determinism_and_batching_equivalence(pairs, name) -> None:
    _, ours, _ = pairs[name]
    inputs = _inputs(name)
    with torch.no_grad():
        first, second = ours(**inputs), ours(**inputs)
        _assert_equal_outputs(first, second)
        rows = [ours(**{k: v[i : i + 1] for k, v in inputs.items()}) for i in range(BATCH)]
    if name == "CLIPSegModel":  # the similarity matrix mixes rows; compare the embeddings
        for i, row in enumerate(rows):
            torch.testing.assert_close(row.text_embeds[0], first.text_embeds[i], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                row.image_embeds[0], first.image_embeds[i], atol=1e-5, rtol=0
            )
        return
    key = "logits" if name == "CLIPSegForImageSegmentation" else "last_hidden_state"
    # a BLAS product's last bits depend on the number of rows it is given, so a row computed
    # alone differs from the batch's at ~1e-5 of the values' scale, exactly as in transformers
    ref = pairs[name][0]
    scale = float(first[key].abs().max())
    for i, row in enumerate(rows):
        torch.testing.assert_close(row[key][0], first[key][i], atol=1e-5 * scale, rtol=0)
        with torch.no_grad():
            alone = ref(**{k: v[i : i + 1] for k, v in inputs.items()})[key]
        assert torch.equal(row[key], alone)


@pytest.mark.parametrize("name", MODEL_CLASSES)
def test_save_load_and_torch_save(pairs, name, tmp_path) -> None:
    """save_pretrained -> from_pretrained in both libraries gives the same outputs; a
    torch.save'd state dict (pytorch_model.bin) loads too."""
    ref, ours, _ = pairs[name]
    inputs = _inputs(name)
    with torch.no_grad():
        expected = ours(**inputs)
    ours.save_pretrained(tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    for loaded in (
        getattr(clipseg, name).from_pretrained(tmp_path / "ours"),
        getattr(transformers, name).from_pretrained(tmp_path / "ours").eval(),
    ):
        with torch.no_grad():
            _assert_equal_outputs(expected, loaded(**inputs))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "ours" / "config.json").read_text())
    torch.save(ref.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with torch.no_grad():
        from_bin = getattr(clipseg, name).from_pretrained(tmp_path / "bin")(**inputs)
    _assert_equal_outputs(expected, from_bin)


def test_dtype_survives_save_and_load(pairs, tmp_path) -> None:
    _, ours, _ = pairs["CLIPSegForImageSegmentation"]
    half = copy.deepcopy(ours).to(torch.float16)
    half.save_pretrained(tmp_path)
    for library in (clipseg, transformers):
        loaded = library.CLIPSegForImageSegmentation.from_pretrained(tmp_path)
        assert loaded.dtype == torch.float16, library.__name__


@pytest.mark.parametrize("name", MODEL_CLASSES)
@pytest.mark.parametrize(
    "switches",
    [{}, {"output_hidden_states": True}, {"output_attentions": True}],
    ids=str,
)
def test_tuple_and_dict_outputs_are_equivalent(pairs, name, switches) -> None:
    _, ours, _ = pairs[name]
    inputs = _inputs(name)
    with torch.no_grad():
        as_dict = ours(**inputs, **switches)
        as_tuple = ours(**inputs, **switches, return_dict=False)
    assert isinstance(as_tuple, tuple)
    _assert_equal_outputs(as_dict.to_tuple(), as_tuple)


@pytest.mark.parametrize("name", ["CLIPSegVisionModel", "CLIPSegTextModel"])
@pytest.mark.parametrize("where", ["argument", "config"])
def test_tower_hidden_states_and_attentions(pairs, name, where) -> None:
    """Every block's hidden state (layers + 1) and attention weights (layers), asked for by
    argument or by the config, equal transformers' eager attention's."""
    _, _, directory = pairs[name]
    ref = getattr(transformers, name).from_pretrained(directory, attn_implementation="eager")
    ours = getattr(clipseg, name).from_pretrained(directory)
    inputs = _inputs(name)
    switches = {"output_hidden_states": True, "output_attentions": True}
    if where == "config":
        for model in (ref, ours):
            for key, value in switches.items():
                setattr(model.config, key, value)
        switches = {}
    with torch.no_grad():
        a, b = ref.eval()(**inputs, **switches), ours(**inputs, **switches)
    layers = CONFIGS[name][1]["num_hidden_layers"]
    assert len(b.hidden_states) == layers + 1 and len(b.attentions) == layers
    tokens = b.last_hidden_state.shape[1]
    assert b.attentions[0].shape == (BATCH, 4, tokens, tokens)
    _assert_equal_outputs(a, b)


@pytest.mark.parametrize("name", ["CLIPSegVisionModel", "CLIPSegTextModel"])
def test_gradients_reach_hidden_states_and_attentions(pairs, name) -> None:
    _, ours, _ = pairs[name]
    model = copy.deepcopy(ours)
    out = model(**_inputs(name), output_hidden_states=True, output_attentions=True)
    hidden, attention = out.hidden_states[0], out.attentions[0]
    hidden.retain_grad()
    attention.retain_grad()
    out[0].flatten()[0].backward()
    assert hidden.grad is not None and attention.grad is not None


def test_training_reaches_the_parameters_transformers_trains(pairs) -> None:
    """In train mode with labels the loss backpropagates into the decoder only (the CLIP towers
    run without gradients), the same parameters as transformers."""
    ref, ours, _ = pairs["CLIPSegForImageSegmentation"]
    inputs = _inputs("CLIPSegForImageSegmentation")
    labels = torch.zeros(BATCH, 30, 30)
    trained = []
    for model in (copy.deepcopy(ref), copy.deepcopy(ours)):
        model.train()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        trained.append({k for k, p in model.named_parameters() if p.grad is not None})
    assert trained[0] == trained[1] and all(k.startswith("decoder.") for k in trained[1])


@pytest.mark.parametrize("name", MODEL_CLASSES)
def test_embeddings_accessors(pairs, name) -> None:
    ref, ours, _ = pairs[name]
    assert ours.get_output_embeddings() is None and ref.get_output_embeddings() is None
    if name in ("CLIPSegModel", "CLIPSegForImageSegmentation"):
        for model in (ref, ours):
            with pytest.raises(NotImplementedError):
                model.get_input_embeddings()
        return
    assert type(ours.get_input_embeddings()) is type(ref.get_input_embeddings())
    model = copy.deepcopy(ours)
    replacement = torch.nn.Embedding(10, 10)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement


@pytest.mark.parametrize(
    "kwargs",
    [
        {"new_num_tokens": 110},
        {"new_num_tokens": 50},
        {"new_num_tokens": 61, "pad_to_multiple_of": 8},
        {},
    ],
    ids=str,
)
def test_resize_token_embeddings_as_transformers(pairs, kwargs) -> None:
    ref, ours, _ = pairs["CLIPSegTextModel"]
    ref, ours = copy.deepcopy(ref), copy.deepcopy(ours)
    old = ours.get_input_embeddings().weight.detach().clone()
    a, b = ref.resize_token_embeddings(**kwargs), ours.resize_token_embeddings(**kwargs)
    assert b.weight.shape == a.weight.shape
    assert ours.config.vocab_size == ref.config.vocab_size == b.num_embeddings
    kept = min(len(old), b.num_embeddings)
    assert torch.equal(b.weight[:kept], old[:kept])
    # new rows: transformers samples them within ~1e-6 of the old rows' mean
    torch.testing.assert_close(b.weight[kept:], a.weight[kept:], atol=1e-4, rtol=0)
    ids = torch.randint(0, b.num_embeddings, (2, 5))
    ids[:, -1] = b.num_embeddings - 1
    with torch.no_grad():
        assert ours(ids).last_hidden_state.shape == (2, 5, 32)
    vision = copy.deepcopy(pairs["CLIPSegVisionModel"][1])
    with pytest.raises(NotImplementedError):
        vision.resize_token_embeddings(10)


def test_eager_and_sdpa_agree(pairs) -> None:
    """The two attention implementations agree to ~1e-5 of the values' scale, and differ
    from each other exactly as transformers' two do (each is bitwise transformers')."""
    _, _, directory = pairs["CLIPSegForImageSegmentation"]
    inputs = _inputs("CLIPSegForImageSegmentation")
    logits = {}
    for library in (clipseg, transformers):
        for implementation in ("eager", "sdpa"):
            model = library.CLIPSegForImageSegmentation.from_pretrained(
                directory, attn_implementation=implementation
            ).eval()
            with torch.no_grad():
                logits[library.__name__, implementation] = model(**inputs).logits
    eager, sdpa = logits["clipseg", "eager"], logits["clipseg", "sdpa"]
    torch.testing.assert_close(sdpa, eager, atol=2e-5 * float(eager.abs().max()), rtol=0)
    assert torch.equal(eager, logits["transformers", "eager"])
    assert torch.equal(sdpa, logits["transformers", "sdpa"])


def test_meta_device(pairs) -> None:
    """Both build a model on the meta device. transformers refuses from_pretrained inside a
    meta-device context; clipseg loads real weights there (a deliberate difference)."""
    _, _, directory = pairs["CLIPSegForImageSegmentation"]
    for library in (clipseg, transformers):
        with torch.device("meta"):
            model = library.CLIPSegForImageSegmentation(_config(library, "CLIPSegModel"))
        assert all(p.is_meta for p in model.parameters())
    with torch.device("meta"), pytest.raises(RuntimeError, match="meta"):
        transformers.CLIPSegForImageSegmentation.from_pretrained(directory)
    with torch.device("meta"):
        loaded = clipseg.CLIPSegForImageSegmentation.from_pretrained(directory)
    assert not any(p.is_meta for p in loaded.parameters())


# -- the processor: test_processor_clipseg and ProcessorTesterMixin ----------------------------

# transformers' CLIPSeg processor test's files: a 23-token BPE and a 20 px image processor
VOCAB = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>",
         "t</w>", "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>",
         "<|startoftext|>", "<|endoftext|>"]  # fmt: skip
MERGES = ["#version: 0.2", "l o", "lo w</w>", "e r</w>", ""]
IMAGE_SETTINGS = {
    "image_processor_type": "ViTImageProcessor",  # transformers 5's AutoImageProcessor needs it
    "do_resize": True,
    "size": 20,
    "do_center_crop": True,
    "crop_size": 18,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}


@pytest.fixture(scope="module")
def processor_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("processor")
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    (directory / "merges.txt").write_text("\n".join(MERGES))
    (directory / "preprocessor_config.json").write_text(json.dumps(IMAGE_SETTINGS))
    return directory


def _components(library, directory, tokenizer=None, image_processor=None):
    tokenizer_class = library.CLIPTokenizer
    image_class = (
        clipseg.CLIPSegImageProcessor if library is clipseg else transformers.ViTImageProcessorPil
    )
    return {
        "tokenizer": tokenizer_class.from_pretrained(directory, **(tokenizer or {})),
        "image_processor": image_class.from_pretrained(directory, **(image_processor or {})),
    }


def _processors(directory, tokenizer=None, image_processor=None):
    return [
        library.CLIPSegProcessor(**_components(library, directory, tokenizer, image_processor))
        for library in (clipseg, transformers)
    ]


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (30, 400, 3), dtype=np.uint8))


def _same(got, expected) -> None:
    assert list(got) == list(expected)
    for key in expected:
        a, b = np.asarray(got[key]), np.asarray(expected[key])
        assert a.shape == b.shape, key
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_processor_parts_and_their_keys(processor_dir) -> None:
    ours, ref = _processors(processor_dir)
    images = [_image()]
    for processor in (ours, ref):  # the image processor alone gives the processor's numbers
        alone = processor.image_processor(images, return_tensors="np")["pixel_values"]
        together = processor(images=images, return_tensors="np")["pixel_values"]
        assert abs(float(alone.sum()) - float(together.sum())) < 1e-2
    _same(ours(images=images, return_tensors="np"), ref(images=images, return_tensors="np"))
    # text: the tokenizer's lists (return_tensors=None: clipseg's default is "pt")
    assert ours(text="lower newer", return_tensors=None) == dict(ours.tokenizer("lower newer"))
    _same(ours(text="lower newer", return_tensors=None), ref(text="lower newer"))
    both = ours(text="lower newer", images=images)
    assert (
        list(both)
        == list(ref(text="lower newer", images=images))
        == [
            "input_ids",
            "attention_mask",
            "pixel_values",
        ]
    )
    visual = ours(None, images, [_image(1)])  # positional, as transformers' test passes them
    assert (
        list(visual)
        == list(ref(None, images, [_image(1)]))
        == [
            "pixel_values",
            "conditional_pixel_values",
        ]
    )
    for processor in (ours, ref):
        with pytest.raises(ValueError):
            processor()
    ids = [[1, 4, 5, 8, 1, 0, 8], [3, 4, 3, 1, 1, 8, 9]]
    assert ours.batch_decode(ids) == ours.tokenizer.batch_decode(ids) == ref.batch_decode(ids)


def test_processor_save_and_load(processor_dir, tmp_path) -> None:
    ours, ref = _processors(processor_dir)
    saved = ours.save_pretrained(tmp_path)
    lines = open(saved[0], encoding="utf-8").read().splitlines()  # indented JSON first
    assert lines[0] == "{" and lines[-1] == "}" and lines[1].startswith("  ")
    again = clipseg.CLIPSegProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == ours.to_dict()
    assert repr(again.image_processor) == repr(ours.image_processor)
    assert again.tokenizer.get_vocab() == ours.tokenizer.get_vocab()
    assert json.loads(ours.to_json_string()) == json.loads(ref.to_json_string())
    theirs = transformers.CLIPSegProcessor.from_pretrained(tmp_path)
    _same(
        again(text=["lower newer"], images=[_image()], return_tensors="np"),
        theirs(text=["lower newer"], images=[_image()], return_tensors="np"),
    )


def test_component_settings_are_call_defaults(processor_dir) -> None:
    """Settings the components were loaded with apply to the processor's calls; call keywords
    override them (ProcessorTesterMixin's *_defaults_preserved_* and *_overrides_* tests)."""
    tokenizer = {"max_length": 117, "padding": "max_length"}
    image = {"do_rescale": True, "rescale_factor": -1.0}
    for processor in _processors(processor_dir, tokenizer, image):
        out = processor(text="lower newer", images=_image(), return_tensors="pt")
        assert out["input_ids"].shape[-1] == 117
        assert out["pixel_values"][0][0].mean() <= 0
    for processor in _processors(processor_dir, {"padding": "longest"}, {"rescale_factor": 1.0}):
        out = processor(
            text="lower newer",
            images=_image(),
            return_tensors="pt",
            max_length=112,
            padding="max_length",
            do_rescale=True,
            rescale_factor=-1.0,
        )
        assert out["input_ids"].shape[-1] == 112
        assert out["pixel_values"][0][0].mean() <= 0


@pytest.mark.parametrize("batched", [False, True])
def test_unstructured_and_structured_kwargs(processor_dir, batched) -> None:
    texts = ["lower newer", " upper older longer string"] if batched else "lower newer"
    images = [_image(), _image(1)] if batched else _image()
    padding = "longest" if batched else "max_length"
    for processor in _processors(processor_dir):
        flat = processor(
            text=texts,
            images=images,
            return_tensors="pt",
            do_rescale=True,
            rescale_factor=-1.0,
            padding=padding,
            max_length=76,
        )
        nested = processor(
            text=texts,
            images=images,
            common_kwargs={"return_tensors": "pt"},
            images_kwargs={"do_rescale": True, "rescale_factor": -1.0},
            text_kwargs={"padding": padding, "max_length": 76},
        )
        for out in (flat, nested):
            assert out["pixel_values"][0][0].mean() <= 0
            length = out["input_ids"].shape[-1]
            assert length < 76 if batched else length == 76
        with pytest.raises(ValueError):
            processor(
                text=[texts] if isinstance(texts, str) else texts,
                images=images,
                images_kwargs={"do_rescale": True, "rescale_factor": -1.0},
                do_rescale=True,
                return_tensors="pt",
            )
    ours, ref = _processors(processor_dir)
    kwargs = {"images_kwargs": {"rescale_factor": -1.0}, "text_kwargs": {"padding": True}}
    _same(
        ours(text=texts, images=images, return_tensors="np", **kwargs),
        ref(text=texts, images=images, return_tensors="np", **kwargs),
    )


def test_special_tokens_outside_the_vocabulary_are_refused(processor_dir) -> None:
    """transformers adds "(BOS)" as a new token; clipseg refuses it: the text tower pools at
    the EOS id, so CLIP's special tokens must be the vocabulary's (a deliberate difference)."""
    reference = transformers.CLIPTokenizer.from_pretrained(processor_dir, bos_token="(BOS)")
    assert "(BOS)" in reference.get_vocab()
    with pytest.raises(ValueError, match="not in the vocabulary"):
        clipseg.CLIPSegProcessor.from_pretrained(processor_dir, bos_token="(BOS)")


@pytest.mark.parametrize(
    "settings",
    [
        {"size": 20, "do_center_crop": True, "crop_size": 18},
        {"size": {"height": 20, "width": 24}, "do_center_crop": True, "crop_size": (17, 13)},
        {"size": 21, "do_center_crop": True, "crop_size": 26},  # larger: padded with black
        {"do_resize": False, "do_center_crop": True, "crop_size": {"height": 27, "width": 13}},
        {"size": 20, "crop_size": 18},  # a crop size alone crops nothing
    ],
    ids=str,
)
def test_center_crop_as_transformers(settings) -> None:
    """transformers 5's ViT image processor honours do_center_crop/crop_size (its CLIPSeg
    processor test's settings use them); so does clipseg's, on both of its paths."""
    image = _image()
    ref = transformers.ViTImageProcessorPil(**settings, do_convert_rgb=True)
    ours = clipseg.CLIPSegImageProcessor(**settings, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    expected = ref(image, return_tensors="np")["pixel_values"]
    got = ours(image, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(got, expected)
    assert ours.to_dict()["crop_size"] == ref.to_dict()["crop_size"]
    if not settings.get("do_resize", True):  # no resize: the tensor path's numbers are PIL's
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
        np.testing.assert_allclose(ours.preprocess_tensor(pixels).numpy(), got, atol=1e-6)
    assert (
        ours(image, do_center_crop=False, return_tensors="np")["pixel_values"].shape[-2:]
        == (ref(image, do_center_crop=False, return_tensors="np")["pixel_values"].shape[-2:])
    )
