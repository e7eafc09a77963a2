"""resnetlab: the ResNet family (ResNet, pre-activation ResNet, ResNeXt) for PyTorch."""

from .config import ModelConfig
from .models import (
    LoadReport,
    PretrainedWeights,
    ResNet,
    WeightsError,
    create_model,
    download_pretrained,
    list_models,
    list_pretrained,
    load_model,
    load_weights,
    model_info,
    resolve_pretrained,
    save_weights,
    to_torchvision_state_dict,
)

__version__ = "0.1.0"

# The inference names load on first use: importing them pulls in torchvision's transforms,
# which would slow down every command that does not predict or export.
_LAZY = {"ExportResult", "Predictor", "bench_model", "export_model", "optimize_for_inference"}


def __getattr__(name: str):
    if name in _LAZY:
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")


__all__ = [
    "ExportResult",
    "LoadReport",
    "Predictor",
    "ModelConfig",
    "PretrainedWeights",
    "ResNet",
    "WeightsError",
    "bench_model",
    "create_model",
    "download_pretrained",
    "export_model",
    "list_models",
    "list_pretrained",
    "load_model",
    "load_weights",
    "model_info",
    "optimize_for_inference",
    "resolve_pretrained",
    "save_weights",
    "to_torchvision_state_dict",
]
