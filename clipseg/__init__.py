"""CLIPSeg in pure PyTorch with the reference API of `transformers`."""

from clipseg.configuration import CLIPSegConfig, CLIPSegTextConfig, CLIPSegVisionConfig
from clipseg.image_processing import CLIPSegImageProcessor
from clipseg.modeling import (
    CLIPSegForImageSegmentation,
    CLIPSegModel,
    CLIPSegPreTrainedModel,
    CLIPSegTextModel,
    CLIPSegVisionModel,
)
from clipseg.predictor import Exemplar, Mix, Predictor
from clipseg.processing import CLIPSegProcessor
from clipseg.tokenization import CLIPTokenizer

__all__ = [
    "CLIPSegConfig",
    "CLIPSegTextConfig",
    "CLIPSegVisionConfig",
    "CLIPSegPreTrainedModel",
    "CLIPSegTextModel",
    "CLIPSegVisionModel",
    "CLIPSegModel",
    "CLIPSegForImageSegmentation",
    "CLIPTokenizer",
    "CLIPSegImageProcessor",
    "CLIPSegProcessor",
    "Predictor",
    "Exemplar",
    "Mix",
]
