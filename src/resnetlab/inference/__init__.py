"""Using a trained model: prediction on images and export to other runtimes.

* :class:`Predictor` classifies image files, PIL images or tensors with the preprocessing
  and class names its weights describe; :func:`run_predict` is the ``predict`` command.
* :func:`export_model` writes safetensors, torchvision ``.pth``, ONNX or ``torch.export``
  ``.pt2`` files and checks them against PyTorch.

This layer builds on :mod:`resnetlab.models` and :mod:`resnetlab.data`; it never imports
the training engine.
"""

from .export import EXPORT_FORMATS, ExportError, ExportResult, export_model, format_export_result
from .meta import (
    Preprocessing,
    default_class_names,
    default_preprocessing,
    describe_model,
    imagenet_class_names,
)
from .predict import Predictor, RandomWeightsWarning, find_images, format_prediction, run_predict

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportResult",
    "Predictor",
    "Preprocessing",
    "RandomWeightsWarning",
    "default_class_names",
    "default_preprocessing",
    "describe_model",
    "export_model",
    "find_images",
    "format_export_result",
    "format_prediction",
    "imagenet_class_names",
    "run_predict",
]
