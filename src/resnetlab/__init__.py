"""resnetlab: the ResNet family (ResNet, pre-activation ResNet, ResNeXt) for PyTorch."""

from .config import ModelConfig
from .models import (
    LoadReport,
    ResNet,
    WeightsError,
    create_model,
    list_models,
    load_model,
    load_weights,
    model_info,
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
    "ResNet",
    "WeightsError",
    "bench_model",
    "create_model",
    "export_model",
    "list_models",
    "load_model",
    "load_weights",
    "model_info",
    "optimize_for_inference",
    "save_weights",
    "to_torchvision_state_dict",
]
