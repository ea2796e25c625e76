"""Settings from the environment, and label config parsing (prompts, thresholds, skips)."""

from __future__ import annotations

import os

import pytest

from backend.errors import LabelConfigError, ModelLoadError
from backend.label_config import parse_label_config
from backend.settings import DEFAULT_MODEL, Settings, SettingsError


def test_defaults_and_overrides():
    s = Settings.from_env({})
    assert s.model == DEFAULT_MODEL == "CIDAS/clipseg-rd64-refined"
    assert (s.device, s.dtype, s.threshold, s.exemplar_weight) == ("auto", "auto", 0.3, 0.5)
    assert s.max_image_pixels == 50_000_000
    s = Settings.from_env(
        {
            "CLIPSEG_MODEL": "demo",
            "CLIPSEG_THRESHOLD": "0.6",
            "CLIPSEG_ALLOWED_HOSTS": "a.example.com, B.example.com:8443,",
            "LABEL_STUDIO_URL": "http://ls:8080/",
            "LABEL_STUDIO_API_KEY": "secret-key",
            "BASIC_AUTH_USER": "u",
            "BASIC_AUTH_PASS": "hunter2",
            "WORKERS": "2",
        }
    )
    assert s.model == "demo" and s.threshold == 0.6 and s.workers == 2
    assert s.allowed_hosts == ("a.example.com", "b.example.com:8443")
    assert s.label_studio_url == "http://ls:8080"
    assert "secret-key" not in repr(s) and "hunter2" not in repr(s)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"CLIPSEG_THRESHOLD": "high"}, "CLIPSEG_THRESHOLD"),
        ({"CLIPSEG_THRESHOLD": "1.5"}, "CLIPSEG_THRESHOLD"),
        ({"CLIPSEG_DTYPE": "float8"}, "CLIPSEG_DTYPE"),
        ({"WORKERS": "0"}, "WORKERS"),
        ({"BASIC_AUTH_USER": "u"}, "BASIC_AUTH_PASS"),
        ({"CLIPSEG_UNCERTAIN_LOW": "0.9"}, "CLIPSEG_UNCERTAIN_LOW"),
        ({"CLIPSEG_DEVICE": "gpu"}, "CLIPSEG_DEVICE='gpu' is not a device: use auto, cpu, cuda"),
        ({"CLIPSEG_DEVICE": "cuda:x"}, "CLIPSEG_DEVICE"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL='verbose' is not one of debug"),
        ({"CLIPSEG_MIN_REGION_AREA": "-1"}, r"CLIPSEG_MIN_REGION_AREA=-1.0 must be >= 0.0$"),
        ({"CLIPSEG_PREDICT_BUDGET": "-5"}, "CLIPSEG_PREDICT_BUDGET"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_devices_are_read_as_written():
    for device in ("auto", "cpu", "cuda", "cuda:1", "CUDA:0"):
        assert Settings.from_env({"CLIPSEG_DEVICE": device}).device == device.lower()


def test_a_cuda_device_without_cuda_is_a_load_error_that_says_so(monkeypatch):
    import torch

    from backend.errors import ModelLoadError
    from backend.loading import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="CLIPSEG_DEVICE=cuda but this torch .* sees no CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ModelLoadError, match="sees 2 CUDA GPU"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:0"])
def test_the_device_check_leaves_cuda_usable_after_a_fork(monkeypatch, device):
    """The server checks the device in gunicorn's master before forking its workers: the check
    must be torch's NVML-based one, which does not initialise CUDA (which a fork cannot inherit)."""
    import torch

    from backend.loading import resolve_device

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "")  # restored after the test
    monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK")
    seen = []
    monkeypatch.setattr(
        torch.cuda, "is_available", lambda: seen.append(os.getenv("PYTORCH_NVML_BASED_CUDA_CHECK"))
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    try:
        resolve_device(device)
    except ModelLoadError:
        pass  # the stub answers None: no GPU
    assert seen == ["1"]


CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <Image name="second" value="$other"/>
  <BrushLabels name="tag" toName="image" model_score_threshold="0.45">
    <Label value="Car" prompt="a photo of a car" predicted_values="automobile, vehicle"/>
    <Label value="Кошка"/>
    <Label value="red circle" alias="rc"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="second" smart="true"><Label value="cat"/></PolygonLabels>
  <RectangleLabels name="skipped" toName="image" model_skip="true">
    <Label value="x"/>
  </RectangleLabels>
  <RectangleLabels name="bad" toName="image" model_score_threshold="abc">
    <Label value="y"/>
  </RectangleLabels>
  <TextArea name="prompt" toName="image"/>
  <Rectangle name="plain" toName="image"/>
</View>
"""


def test_parse_label_config():
    specs = parse_label_config(CONFIG, 0.3)
    assert [(s.name, s.tag, s.to_name, s.value_key) for s in specs] == [
        ("tag", "BrushLabels", "image", "image"),
        ("poly", "PolygonLabels", "second", "other"),
        ("bad", "RectangleLabels", "image", "image"),
    ]
    tag, poly, bad = specs
    assert tag.threshold == 0.45 and poly.threshold == 0.3 and bad.threshold == 0.3
    assert tag.labels[0].value == "Car"
    assert tag.labels[0].prompts == ("a photo of a car", "automobile", "vehicle")
    assert tag.labels[1].prompts == ("Кошка",)
    assert poly.attr("smart") == "true" and tag.label("Кошка") is tag.labels[1]
    # results carry the alias (what Label Studio's editor writes); the prompt is the value
    assert (tag.labels[2].value, tag.labels[2].prompts) == ("rc", ("red circle",))


def test_unparseable_config():
    with pytest.raises(LabelConfigError):
        parse_label_config("<View><Image", 0.3)
