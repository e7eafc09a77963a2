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

__all__ = [
    "LoadReport",
    "ModelConfig",
    "ResNet",
    "WeightsError",
    "create_model",
    "list_models",
    "load_model",
    "load_weights",
    "model_info",
    "save_weights",
    "to_torchvision_state_dict",
]
