"""Reading and writing weights: resnetlab's safetensors, torchvision and timm state dicts.

Safety: pickle files are read only with ``torch.load(weights_only=True)``, which refuses
any object that is not a tensor or a plain container; there is no unsafe fallback.
Completeness: every missing, unexpected, re-initialised or adapted key is reported.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ModelConfig
from ..errors import ResnetlabError
from .resnet import ResNet

FORMATS = ("auto", "resnetlab", "torchvision", "timm")
SIDECAR_FORMAT = "resnetlab-weights"
WEIGHTS_FILENAME = "model.safetensors"
# Prefixes that wrappers add to every key: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Where a training checkpoint keeps its model's state dict.
CHECKPOINT_MODEL_KEYS = ("model", "state_dict", "model_state_dict")


class WeightsError(ResnetlabError, ValueError):
    """A weights file that cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    """What ``load_weights`` did: nothing is dropped without a line here."""

    source: str
    fmt: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected)

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors from {self.source} ({self.fmt})"]
        for label in ("missing", "unexpected", "reinitialized", "adapted", "ignored"):
            keys = getattr(self, label)
            if keys:
                shown = ", ".join(keys[:8]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 8 else ""
                )
                lines.append(f"  {label}: {shown}")
        return "\n".join(lines)


@dataclass
class WeightsFile:
    """A state dict as read from disk, with what the file says about itself."""

    state_dict: dict[str, torch.Tensor]
    path: Path
    meta: dict[str, Any] | None = None
    #: named pretrained weights: their :class:`~resnetlab.models.pretrained.PretrainedWeights`
    card: Any = None

    @property
    def num_classes(self) -> int | None:
        for key in ("fc.weight", "head.fc.weight"):
            if key in self.state_dict:
                return int(self.state_dict[key].shape[0])
        return None


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) from every key."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def sidecar_path(weights_path: str | os.PathLike) -> Path:
    return Path(weights_path).with_suffix(".json")


def safe_torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), "")
        raise WeightsError(
            f"refused to load {path}: it holds pickled objects other than tensors and plain "
            "containers, which could run code. resnetlab only loads weights with "
            "torch.load(weights_only=True) and never falls back to unsafe loading. If you "
            "trust the file, re-save its state dict (torch.save(model.state_dict(), ...)) or "
            f"convert it to safetensors. ({why or (lines[0] if lines else 'unpickling failed')})"
        ) from None
    except Exception as e:  # a corrupt file can fail anywhere inside the unpickler
        raise WeightsError(
            f"cannot read {path}: {type(e).__name__}: {e} (is it a complete PyTorch file?)"
        ) from None


def read_weights(source: str | os.PathLike | Any) -> WeightsFile:
    """Read a state dict from a run directory, a ``.safetensors`` file or a pickle file.

    Training checkpoints (a dict holding the state dict under ``model``) are accepted too,
    and so are named pretrained weights (``torchvision:resnet50.IMAGENET1K_V2``, or their
    card): they are downloaded into the torch hub cache first, and the result carries the
    card.
    """
    from .pretrained import (
        PretrainedWeights,
        download_pretrained,
        is_pretrained_name,
        resolve_pretrained,
    )

    if isinstance(source, PretrainedWeights) or is_pretrained_name(source):
        card = resolve_pretrained(source)
        wf = read_weights(download_pretrained(card))
        wf.card = card
        return wf
    path = Path(source)
    if path.is_dir():
        candidate = path / WEIGHTS_FILENAME
        if not candidate.exists():
            raise WeightsError(
                f"{path} is a directory without {WEIGHTS_FILENAME}: pass a finished run "
                "directory or a weights file"
            )
        path = candidate
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    meta = None
    if path.suffix == ".safetensors":
        try:
            state_dict = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"cannot read {path}: {e} (a truncated or corrupt file?)") from None
        meta = read_sidecar(path)
    else:
        obj = safe_torch_load(path)
        if not isinstance(obj, dict):
            raise WeightsError(
                f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)"
            )
        for key in CHECKPOINT_MODEL_KEYS:
            if isinstance(obj.get(key), dict):
                if isinstance(obj.get("model_meta"), dict):
                    meta = obj["model_meta"]
                obj = obj[key]
                break
        state_dict = {
            k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
        }
        if not state_dict:
            raise WeightsError(f"{path} holds no tensors: it is not a model state dict")
    return WeightsFile(strip_wrapper_prefixes(state_dict), path, meta)


def read_sidecar(weights_path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON description saved beside resnetlab weights (or inside the file's metadata)."""
    side = sidecar_path(weights_path)
    if side.exists():
        try:
            return json.loads(side.read_text())
        except json.JSONDecodeError as e:
            raise WeightsError(f"corrupt sidecar {side}: {e}") from None
    try:
        from safetensors import safe_open

        with safe_open(str(weights_path), framework="pt") as f:
            text = (f.metadata() or {}).get(SIDECAR_FORMAT)
        return json.loads(text) if text else None
    except (SafetensorError, OSError, json.JSONDecodeError):
        return None


def detect_format(state_dict: dict[str, torch.Tensor]) -> str:
    if any(k.startswith(("stem.conv.", "stages.")) for k in state_dict):
        return "timm"
    if "conv1.weight" in state_dict or any(k.startswith("layer1.") for k in state_dict):
        return "torchvision"
    raise WeightsError(
        "unrecognised state dict: expected torchvision/timm ResNet keys (conv1.weight, "
        f"layer1.*) or timm ResNetV2 keys (stem.conv.weight, stages.*); first keys: "
        f"{list(state_dict)[:5]}"
    )


_TIMM_V2_RULES = [
    (re.compile(r"^stem\.conv\."), "conv1."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."), lambda m: f"layer{int(m[1]) + 1}.{m[2]}."),
    (re.compile(r"^head\.fc\."), "fc."),
]


def from_timm_v2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``resnetv2_*`` keys to resnetlab's (the blocks already share timm's names)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _TIMM_V2_RULES:
            key = pattern.sub(repl, key)
        if key == "fc.weight" and value.ndim == 4:  # timm's head is a 1x1 conv
            value = value.flatten(1)
        out[key] = value
    return out


def _adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Fit a stem conv trained on RGB to ``in_chans`` inputs (sum for 1, tile otherwise)."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def load_weights(
    model: nn.Module,
    source: str | os.PathLike | WeightsFile,
    *,
    fmt: str = "auto",
    strict: bool = True,
    reinit_head: bool = False,
) -> LoadReport:
    """Load weights into ``model`` and report every key that did not simply load.

    ``fmt``: auto | resnetlab | torchvision | timm. A classifier of another size is an error
    unless ``reinit_head=True``, in which case the model keeps its freshly initialised head
    and the report says so. A stem trained on 3 channels is adapted to a 1-channel (or
    other) model with a note in the report. With ``strict=True`` missing or unexpected keys
    raise; with ``strict=False`` they are reported and warned about.
    """
    if fmt not in FORMATS:
        raise ValueError(f"invalid fmt={fmt!r}: expected one of {', '.join(FORMATS)}")
    wf = source if isinstance(source, WeightsFile) else read_weights(source)
    state_dict = dict(wf.state_dict)
    detected = detect_format(state_dict)
    if fmt == "timm" or detected == "timm":
        state_dict = from_timm_v2(state_dict)
    report = LoadReport(
        source=str(wf.path), fmt="resnetlab" if wf.meta else (detected if fmt == "auto" else fmt)
    )
    own = model.state_dict()
    if getattr(model, "features_only", False):
        for key in [k for k in state_dict if k.startswith("fc.")]:
            state_dict.pop(key)
            report.ignored.append(key)
    head_keys = [k for k in ("fc.weight", "fc.bias") if k in state_dict and k in own]
    src_n = _classifier_size(state_dict, own)
    if src_n is not None and src_n != own["fc.weight"].shape[0]:
        own_n = own["fc.weight"].shape[0]
        if not reinit_head:
            raise WeightsError(
                f"classifier size mismatch: the weights have {src_n} classes, the model "
                f"{own_n}. Pass num_classes={own_n} to create_model (or reinit_head=True) to "
                f"re-initialise the head, or build the model with num_classes={src_n}"
            )
        for key in head_keys:
            state_dict.pop(key)
            report.reinitialized.append(key)
        warnings.warn(
            f"classifier re-initialised: {wf.path} has {src_n} classes, the model {own_n}",
            stacklevel=2,
        )
    stem = "conv1.weight"
    if (
        stem in state_dict
        and stem in own
        and state_dict[stem].ndim == own[stem].ndim == 4
        and state_dict[stem].shape[1] > 0
        and state_dict[stem].shape[1] != own[stem].shape[1]
    ):
        before = tuple(state_dict[stem].shape)
        state_dict[stem] = _adapt_input_conv(state_dict[stem], own[stem].shape[1])
        report.adapted.append(f"{stem} ({before} -> {tuple(own[stem].shape)})")
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise WeightsError(
            f"{len(mismatched)} shape mismatch(es) loading {wf.path} (is it another "
            f"architecture?): " + "; ".join(mismatched[:6])
        )
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:
        raise WeightsError(f"cannot load {wf.path} into the model: {e}") from None
    report.missing = [k for k in result.missing_keys if k not in report.reinitialized]
    report.unexpected = list(result.unexpected_keys)
    report.loaded = len(state_dict) - len(report.unexpected)
    if not report.complete:
        if strict:
            raise WeightsError(f"the weights do not match the model:\n{report}")
        warnings.warn(f"partial load:\n{report}", stacklevel=2)
    return report


def _classifier_size(
    state_dict: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
) -> int | None:
    """The number of classes of the file's classifier, if it is one that fits the model's
    features (else None: any other shape is reported as a plain shape mismatch)."""
    weight, bias = state_dict.get("fc.weight"), state_dict.get("fc.bias")
    if weight is None or "fc.weight" not in own or weight.ndim != 2:
        return None
    if weight.shape[1] != own["fc.weight"].shape[1]:
        return None
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        return None
    return int(weight.shape[0])


def weights_meta(
    model: ResNet,
    *,
    preprocessing: dict[str, Any] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The self-description saved beside the weights: everything predict/export need."""
    if class_names is not None and len(class_names) != model.num_classes:
        raise ValueError(
            f"{len(class_names)} class names for a model with {model.num_classes} classes"
        )
    return {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "architecture": model.name,
        "config": model.config.to_dict(),
        "num_classes": model.num_classes,
        "in_chans": model.config.in_chans,
        "preprocessing": preprocessing,
        "class_names": list(class_names) if class_names is not None else None,
    }


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(
    model: ResNet,
    path: str | os.PathLike,
    *,
    preprocessing: dict[str, Any] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> Path:
    """Write ``model`` as ``path`` (.safetensors) plus a JSON sidecar describing it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_weights writes .safetensors files, got {path}")
    if getattr(model, "features_only", False):
        raise ValueError("save the full model, not a features_only view of it")
    meta = weights_meta(model, preprocessing=preprocessing, class_names=class_names)
    text = json.dumps(meta, indent=2)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={SIDECAR_FORMAT: text}))
    atomic_write(sidecar_path(path), lambda tmp: Path(tmp).write_text(text + "\n"))
    return path


def to_torchvision_state_dict(model: ResNet) -> dict[str, torch.Tensor]:
    """The state dict in torchvision's layout, for ``torchvision.models.<name>`` to load.

    Only v1/v1.5 ImageNet-stem nets with option-B shortcuts have a torchvision twin.
    torchvision puts a bottleneck's stride on the 3x3, so a ``*_v1`` net's weights load
    there but compute a slightly different function (a warning says so).
    """
    cfg: ModelConfig = model.config
    if cfg.is_preact or cfg.stem != "imagenet" or cfg.shortcut != "B":
        raise ValueError(
            f"{model.name} has no torchvision counterpart (block={cfg.block}, stem={cfg.stem}, "
            f"shortcut={cfg.shortcut}); torchvision has v1/v1.5 ImageNet nets with shortcut B"
        )
    if cfg.is_bottleneck and cfg.stride_on == "1x1":
        warnings.warn(
            "torchvision's bottleneck strides on the 3x3 conv; this model strides on the 1x1",
            stacklevel=2,
        )
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def config_from_meta(meta: dict[str, Any]) -> tuple[str, ModelConfig]:
    if meta.get("format") != SIDECAR_FORMAT or "config" not in meta:
        raise WeightsError("the weights' description has no resnetlab architecture config")
    return meta.get("architecture", "custom"), ModelConfig.from_dict(meta["config"])
