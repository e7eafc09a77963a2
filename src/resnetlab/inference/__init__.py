"""Using a trained model: prediction on images and export to other runtimes.

* :class:`Predictor` classifies image files, PIL images or tensors with the preprocessing
  and class names its weights describe; :func:`run_predict` finds the images and
  predicts them for the ``predict`` command.
* :func:`export_model` writes safetensors, torchvision ``.pth``, ONNX or ``torch.export``
  ``.pt2`` files and checks them against PyTorch.
* :func:`optimize_for_inference` folds BN, switches to channels_last and runs in fp32,
  bf16 or calibrated int8; :func:`bench_model` times it against torchvision and
  onnxruntime (the ``bench`` command).

This layer builds on :mod:`resnetlab.models` and :mod:`resnetlab.data`; it never imports
the training engine.
"""

from .bench import BenchRow, bench_model, gemm_gflops
from .export import EXPORT_FORMATS, ExportError, ExportResult, export_model
from .meta import (
    Preprocessing,
    default_class_names,
    default_preprocessing,
    describe_model,
    imagenet_class_names,
)
from .optimize import (
    PRECISIONS,
    EmulatedPrecisionWarning,
    InferenceModel,
    fold_batchnorm,
    has_native_bf16,
    optimize_for_inference,
)
from .predict import Predictor, RandomWeightsWarning, find_images, run_predict

__all__ = [
    "EXPORT_FORMATS",
    "PRECISIONS",
    "BenchRow",
    "EmulatedPrecisionWarning",
    "ExportError",
    "ExportResult",
    "InferenceModel",
    "Predictor",
    "Preprocessing",
    "RandomWeightsWarning",
    "bench_model",
    "default_class_names",
    "default_preprocessing",
    "describe_model",
    "export_model",
    "find_images",
    "fold_batchnorm",
    "gemm_gflops",
    "has_native_bf16",
    "imagenet_class_names",
    "optimize_for_inference",
    "run_predict",
]
