"""Reading and writing weights: resnetlab's safetensors, torchvision and timm state dicts.

Safety: pickle files are read only with ``torch.load(weights_only=True)``, which refuses
any object that is not a tensor or a plain container; there is no unsafe fallback. Only
regular files are opened (a FIFO would block the reader forever).
Completeness: every missing, unexpected, re-initialised or adapted key is reported.
Integrity: resnetlab's weights record the sha256 of their tensors in their description
(the JSON sidecar, also stored inside the ``.safetensors`` file), and checkpoints the
sha256 of their whole content; a file whose bytes changed on disk is refused on loading,
not silently used. Files written before checksums existed load without the check.
Validation: the description is checked key by key, and its architecture against the
tensors in the file, before anything is built from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, ResnetlabError
from ..io import (
    JSONFileError,
    StorageError,
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    require_regular_file,
)
from ..io import atomic_write as atomic_write  # re-exported: the one atomic writer
from .card import (  # the sidecar's layout and limits live with the card it is the JSON of
    MAX_IMAGE_SIZE,
    PREPROCESSING_KEYS,
    SIDECAR_CHECKSUM,
    SIDECAR_FORMAT,
    ModelCard,
    Preprocessing,
    PreprocessingError,
    WeightsSource,
)
from .card import SIDECAR_VERSION as SIDECAR_VERSION  # re-exported
from .resnet import ResNet

FORMATS = ("auto", "resnetlab", "torchvision", "timm")
WEIGHTS_FILENAME = "model.safetensors"
# A checkpoint's key for the sha256 of everything else it holds.
CHECKPOINT_CHECKSUM = "sha256"
# Prefixes that wrappers add to every key: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Where a training checkpoint keeps its model's state dict.
CHECKPOINT_MODEL_KEYS = ("model", "state_dict", "model_state_dict")


class WeightsError(ResnetlabError, ValueError):
    """A weights file that cannot be read or does not fit the model, or a model that cannot
    be saved as asked."""


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


def _regular_file(path: Path, what: str) -> None:
    try:
        require_regular_file(path, what)
    except StorageError as e:
        raise WeightsError(str(e)) from None


def safe_torch_load(path: Path) -> Any:
    _regular_file(path, "weights file")
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


# ---------------------------------------------------------------------------- checksums


def _feed(h: Any, obj: Any) -> None:
    # Hand-written rather than hashing pickle bytes: torch.save's archive layout (record
    # names, alignment, pickle protocol) may change between releases while the content
    # does not. Every value is fed with its type and length, so that no two different
    # contents feed the same bytes; dicts in key order, as a load may reorder them.
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy()
        h.update(f"T{t.dtype}{tuple(t.shape)}:{data.nbytes}:".encode())
        h.update(data.data)
    elif isinstance(obj, Mapping):
        h.update(b"d%d:" % len(obj))
        for key, value in sorted(obj.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0]))):
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(b"%s%d:" % (b"l" if isinstance(obj, list) else b"t", len(obj)))
        for value in obj:
            _feed(h, value)
    elif obj is None or isinstance(obj, bool):
        h.update(b"n" if obj is None else b"b%d" % obj)
    elif isinstance(obj, int):
        h.update(b"i%d;" % obj)
    elif isinstance(obj, float):
        h.update(b"f" + obj.hex().encode() + b";")
    elif isinstance(obj, (str, bytes)):
        data = obj.encode() if isinstance(obj, str) else obj
        h.update(b"%s%d:" % (b"s" if isinstance(obj, str) else b"y", len(data)) + data)
    else:  # anything else torch.load(weights_only=True) rebuilds (dtypes, devices, ...)
        text = f"{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}".encode()
        h.update(b"o%d:" % len(text) + text)


def content_sha256(obj: Any) -> str:
    """The sha256 of a state dict or a checkpoint: its tensors' bytes, dtypes and shapes,
    and its keys and plain values, independent of the file format that holds them."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def with_checksum(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` plus the checksum of its content, for :func:`verify_checksum` to check."""
    content = {k: v for k, v in state.items() if k != CHECKPOINT_CHECKSUM}
    return {**content, CHECKPOINT_CHECKSUM: content_sha256(content)}


def verify_checksum(obj: Any, path: Path) -> Any:
    """``obj`` without its checksum, once the checksum matched; obj as it is if it has none.

    A mismatch (bytes changed on disk or in a copy) is a WeightsError naming the file.
    """
    if not isinstance(obj, dict) or CHECKPOINT_CHECKSUM not in obj:
        return obj  # written before checksums existed, or not by resnetlab
    content = {k: v for k, v in obj.items() if k != CHECKPOINT_CHECKSUM}
    if obj[CHECKPOINT_CHECKSUM] != content_sha256(content):
        raise WeightsError(
            f"{path} is damaged: its content does not match the sha256 stored in it (bytes "
            "changed on disk or in a copy); use another copy or an earlier checkpoint"
        )
    return content


# ---------------------------------------------------------------------- the description


def _bad(where: str, key: str, problem: str) -> WeightsError:
    return WeightsError(
        f"bad {where}: {key} {problem}; restore the file from the run that wrote it or "
        "save the weights again"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _type_of_field(default: Any) -> tuple[str, Any]:
    if isinstance(default, bool):
        return "true or false", lambda v: isinstance(v, bool)
    if isinstance(default, int):
        return "an integer", _is_int
    if isinstance(default, float):
        return "a number", _is_number
    if isinstance(default, str):
        return "a string", lambda v: isinstance(v, str)
    return (
        "a list of integers",
        lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) for x in v),
    )


def _check_config(config: Any, where: str) -> ModelConfig:
    if not isinstance(config, dict):
        raise _bad(where, "'config'", f"is {_shown(config)}, not an object of model options")
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for key, value in config.items():
        if key not in fields:
            raise _bad(
                where, f"config.{key}", f"is not a model option (allowed: {', '.join(fields)})"
            )
        expected, ok = _type_of_field(fields[key].default)
        if not ok(value):
            raise _bad(where, f"config.{key}", f"is {_shown(value)}, expected {expected}")
    try:
        return ModelConfig.from_dict(config)
    except (ConfigError, TypeError, ValueError) as e:
        raise _bad(where, "'config'", f"is invalid: {e}") from None


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (set, bytes)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_preprocessing(prep: Any, where: str) -> None:
    if prep is None:
        return
    if not isinstance(prep, dict):
        raise _bad(where, "'preprocessing'", f"is {_shown(prep)}, not an object or null")
    unknown = sorted(set(prep) - set(PREPROCESSING_KEYS))
    if unknown:
        raise _bad(
            where,
            f"preprocessing.{unknown[0]}",
            f"is unknown (allowed: {', '.join(PREPROCESSING_KEYS)})",
        )
    for key in ("mean", "std", "image_size"):
        if key not in prep:
            raise _bad(where, f"preprocessing.{key}", "is missing")
    for key in ("mean", "std"):
        value = prep[key]
        if not (isinstance(value, list) and 1 <= len(value) <= 4 and all(map(_is_number, value))):
            raise _bad(
                where, f"preprocessing.{key}", f"is {_shown(value)}, expected 1 to 4 numbers"
            )
    for key, low, high in (("image_size", 1, MAX_IMAGE_SIZE), ("resize", 1, MAX_IMAGE_SIZE),
                           ("train_image_size", 1, MAX_IMAGE_SIZE),
                           ("channels", 1, 4), ("in_chans", 1, 4)):  # fmt: skip
        value = prep.get(key)
        if value is not None and not (_is_int(value) and low <= value <= high):
            raise _bad(
                where,
                f"preprocessing.{key}",
                f"is {_shown(value)}, expected an integer in [{low}, {high}]",
            )
    for key in ("crop", "interpolation"):
        if key in prep and not isinstance(prep[key], str):
            raise _bad(where, f"preprocessing.{key}", f"is {_shown(prep[key])}, expected a string")


# The format name of a detection/segmentation weights description (models/dense.py).
DENSE_WEIGHTS_FORMAT = "resnetlab-dense-weights"


def validate_meta(meta: Any, where: str) -> dict[str, Any]:
    """Check a weights description (sidecar) key by key; ``where`` names it in errors.

    Returns ``meta``; anything malformed is a WeightsError naming ``where`` and the key.
    """
    if not isinstance(meta, dict):
        kind = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}
        raise WeightsError(
            f"bad {where}: it holds {kind.get(type(meta), 'a number')} where a resnetlab "
            "weights description (a JSON object) belongs; restore the file from the run that "
            "wrote it or save the weights again"
        )
    if meta.get("format") == DENSE_WEIGHTS_FORMAT:  # models/dense.py's files
        dense = meta.get("dense") if isinstance(meta.get("dense"), dict) else {}
        raise WeightsError(
            f"{where} describes a {meta.get('task', 'dense')} model ({dense.get('head')} on "
            f"{dense.get('backbone')}), not a classifier: evaluate it with resnetlab eval, "
            "draw its predictions with resnetlab predict, or load it with "
            "resnetlab.models.dense.load_dense_model"
        )
    if meta.get("format") != SIDECAR_FORMAT:
        raise _bad(
            where, "'format'", f"is {_shown(meta.get('format'))}, expected {SIDECAR_FORMAT!r}"
        )
    if "version" in meta and not _is_int(meta["version"]):
        raise _bad(where, "'version'", f"is {_shown(meta['version'])}, expected an integer")
    if "architecture" in meta and not isinstance(meta["architecture"], str):
        raise _bad(where, "'architecture'", f"is {_shown(meta['architecture'])}, expected a name")
    if SIDECAR_CHECKSUM in meta and not (
        isinstance(meta[SIDECAR_CHECKSUM], str)
        and re.fullmatch(r"[0-9a-f]{64}", meta[SIDECAR_CHECKSUM])
    ):
        raise _bad(where, repr(SIDECAR_CHECKSUM), "is not a sha256 hex digest")
    if "config" not in meta:
        raise _bad(where, "'config'", "is missing (it describes the architecture)")
    cfg = _check_config(meta["config"], where)
    for key in ("num_classes", "in_chans"):
        if key in meta and meta[key] != getattr(cfg, key):
            raise _bad(
                where, f"'{key}'", f"is {_shown(meta[key])} but config.{key} is {getattr(cfg, key)}"
            )
    _check_preprocessing(meta.get("preprocessing"), where)
    names = meta.get("class_names")
    if names is not None:
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise _bad(where, "'class_names'", "is not a list of strings")
        if len(names) != cfg.num_classes:
            raise _bad(
                where, "'class_names'", f"has {len(names)} names for {cfg.num_classes} classes"
            )
    return meta


_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")


def _check_fits(
    meta: dict[str, Any], state_dict: dict[str, torch.Tensor], path: Path, where: str
) -> None:
    """The description's architecture must be that of the tensors in the file.

    Checked before the model is built, so that a damaged description cannot make it
    allocate gigabytes (``num_classes: 1000000000``) or build for hours (a million blocks).
    """
    cfg = ModelConfig.from_dict(meta["config"])
    counts: dict[int, int] = {}
    for key in state_dict:
        if m := _BLOCK_KEY.match(key):
            counts[int(m[1])] = max(counts.get(int(m[1]), 0), int(m[2]) + 1)
    if not counts:
        return  # not resnetlab's layout: load_weights reports what does not fit
    found = tuple(counts.get(i, 0) for i in range(1, max(counts) + 1))
    if found != tuple(cfg.layers):
        raise WeightsError(
            f"{where} does not describe {path}: its config has layers={list(cfg.layers)}, the "
            f"file holds {list(found)} blocks per stage; the description belongs to other "
            "weights or is damaged"
        )
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            expected = ResNet(cfg).state_dict()
    except Exception as e:  # an absurd size can fail anywhere in the constructors
        raise _bad(where, "'config'", f"cannot be built: {type(e).__name__}: {e}") from None
    wrong = [f"{k}: file {tuple(v.shape)} vs description {tuple(expected[k].shape)}"
             for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]  # fmt: skip
    if wrong:
        raise WeightsError(
            f"{where} does not describe {path} (the description belongs to other weights or is "
            f"damaged): {'; '.join(wrong[:4])}"
        )


def _check_tensors(
    state_dict: dict[str, torch.Tensor], meta: dict[str, Any] | None, path: Path, where: str
) -> None:
    stored = (meta or {}).get(SIDECAR_CHECKSUM)
    if stored is not None and content_sha256(state_dict) != stored:
        raise WeightsError(
            f"{path} is damaged: its tensors do not match the sha256 recorded in {where} "
            "(bytes changed on disk or in a copy, or the description belongs to other "
            "weights); copy or export the weights again"
        )


def _finish_safetensors(
    state_dict: dict[str, torch.Tensor], meta: dict[str, Any] | None, path: Path, where: str
) -> WeightsFile:
    _check_tensors(state_dict, meta, path, where)
    state_dict = strip_wrapper_prefixes(state_dict)
    if meta is not None:
        _check_fits(meta, state_dict, path, where)
    return WeightsFile(state_dict, path, meta)


def read_weights(source: str | os.PathLike | Any) -> WeightsFile:
    """Read a state dict from a run directory, a ``.safetensors`` file or a pickle file.

    Training checkpoints (a dict holding the state dict under ``model``) are accepted too,
    and so are named pretrained weights (``torchvision:resnet50.IMAGENET1K_V2``, or their
    card): they are downloaded into the torch hub cache first, and the result carries the
    card. A file's recorded checksum and description are checked (see the module's doc).
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
        if not os.path.lexists(candidate):
            raise WeightsError(
                f"{path} is a directory without {WEIGHTS_FILENAME}: pass a finished run "
                "directory or a weights file"
            )
        path = candidate
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    _regular_file(path, "weights file")
    if path.suffix == ".safetensors":
        try:
            state_dict = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"cannot read {path}: {e} (a truncated or corrupt file?)") from None
        meta, where = _read_description(path)
        return _finish_safetensors(state_dict, meta, path, where)
    obj = verify_checksum(safe_torch_load(path), path)
    if not isinstance(obj, dict):
        raise WeightsError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)"
        )
    meta, where = None, f"the description inside {path}"
    for key in CHECKPOINT_MODEL_KEYS:
        if isinstance(obj.get(key), dict):
            if obj.get("model_meta") is not None:
                meta = validate_meta(obj["model_meta"], where)
            obj = obj[key]
            break
    state_dict = strip_wrapper_prefixes(
        {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    )
    if not state_dict:
        raise WeightsError(f"{path} holds no tensors: it is not a model state dict")
    if meta is not None:
        _check_fits(meta, state_dict, path, where)
    return WeightsFile(state_dict, path, meta)


def decode_weights(data: bytes, meta: dict[str, Any], path: str | os.PathLike) -> WeightsFile:
    """The :class:`WeightsFile` that ``data`` (safetensors bytes of :func:`encode_weights`)
    and its description would give once written to ``path``, checked as on reading."""
    path = Path(path)
    where = f"the description of {path}"
    return _finish_safetensors(
        load_safetensors_bytes(data), validate_meta(meta, where), path, where
    )


def _read_description(weights_path: Path) -> tuple[dict[str, Any] | None, str]:
    side = sidecar_path(weights_path)
    if os.path.lexists(side):
        where = f"sidecar {side}"
        try:
            return validate_meta(read_json(side, "sidecar"), where), where
        except (StorageError, JSONFileError) as e:
            raise WeightsError(
                f"{e}; restore it from the run that wrote it, or delete it to use the "
                f"description stored inside {weights_path.name}"
            ) from None
    where = f"the description inside {weights_path}"
    try:
        from safetensors import safe_open

        with safe_open(str(weights_path), framework="pt") as f:
            text = (f.metadata() or {}).get(SIDECAR_FORMAT)
    except (SafetensorError, OSError) as e:
        raise WeightsError(
            f"cannot read {weights_path}: {e} (a truncated or corrupt file?)"
        ) from None
    if not text:
        return None, where
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise WeightsError(f"bad {where}: not valid JSON ({e}); save the weights again") from None
    return validate_meta(meta, where), where


def read_sidecar(weights_path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON description saved beside resnetlab weights (or inside the file's metadata),
    validated; None when there is none."""
    return _read_description(Path(weights_path))[0]


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
        raise ConfigError(f"invalid fmt={fmt!r}: expected one of {', '.join(FORMATS)}")
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
    said = described_card(wf)  # checked before the model changes
    _fit_classifier(state_dict, own, report, wf.path, reinit_head)
    _fit_stem(state_dict, own, report)
    _check_shapes(state_dict, own, wf.path)
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
    if isinstance(getattr(model, "card", None), ModelCard):
        model.card = _loaded_card(model.card, said, wf, report)
    return report


def described_card(wf: WeightsFile) -> ModelCard | None:
    """What the weights say about themselves: the card of named pretrained weights or of a
    resnetlab description; None for a plain state dict (which does not describe itself).
    A description whose preprocessing cannot be used is a WeightsError naming the file."""
    if wf.card is not None:
        return wf.card.model_card()
    if wf.meta is None:
        return None
    try:
        return ModelCard.from_meta(wf.meta, file=str(wf.path))
    except PreprocessingError as e:
        raise WeightsError(f"bad description of {wf.path}: {e}") from None


def _loaded_card(
    card: ModelCard, said: ModelCard | None, wf: WeightsFile, report: LoadReport
) -> ModelCard:
    """The model's ``card`` once ``wf`` is loaded into it: the classes, preprocessing and
    metrics the weights describe, less what the load made untrue (a re-initialised head has
    no class names or published metrics; an adapted stem takes other channels than the
    weights' preprocessing makes), and where the weights came from."""
    source = WeightsSource(report.fmt, file=str(wf.path))
    if said is None:
        return dataclasses.replace(card, class_names=None, preprocessing=None, source=source,
                                   metrics={}, metrics_source=None)  # fmt: skip
    if said.source is not None:
        source = dataclasses.replace(said.source, format=report.fmt, file=str(wf.path))
    new_head = bool(report.reinitialized)
    names = said.class_names
    if new_head or (names is not None and len(names) != card.num_classes):
        names = None
    prep = said.preprocessing
    if prep is not None and prep.in_chans != card.in_chans and report.adapted:
        prep = None
    return dataclasses.replace(
        card, class_names=names, preprocessing=prep, source=source,
        metrics={} if new_head else dict(said.metrics),
        metrics_source=None if new_head else said.metrics_source,
    )  # fmt: skip


def _fit_classifier(
    state_dict: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    report: LoadReport,
    path: Path,
    reinit_head: bool,
) -> None:
    """Leave a classifier of another size out of ``state_dict`` (``reinit_head``), or raise."""
    src_n = _classifier_size(state_dict, own)
    if src_n is None or src_n == own["fc.weight"].shape[0]:
        return
    own_n = own["fc.weight"].shape[0]
    if not reinit_head:
        raise WeightsError(
            f"classifier size mismatch: the weights have {src_n} classes, the model "
            f"{own_n}. Pass num_classes={own_n} to create_model (or reinit_head=True) to "
            f"re-initialise the head, or build the model with num_classes={src_n}"
        )
    for key in [k for k in ("fc.weight", "fc.bias") if k in state_dict and k in own]:
        state_dict.pop(key)
        report.reinitialized.append(key)
    # stacklevel 3: the warning names the caller of load_weights
    warnings.warn(
        f"classifier re-initialised: {path} has {src_n} classes, the model {own_n}",
        stacklevel=3,
    )


def _fit_stem(
    state_dict: dict[str, torch.Tensor], own: dict[str, torch.Tensor], report: LoadReport
) -> None:
    """Adapt a stem conv trained on other input channels to the model's (noted in the report)."""
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


def _check_shapes(
    state_dict: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path
) -> None:
    """WeightsError naming the tensors whose shape differs from the model's."""
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise WeightsError(
            f"{len(mismatched)} shape mismatch(es) loading {path} (is it another "
            f"architecture?): " + "; ".join(mismatched[:6])
        )


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
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The self-description saved beside the weights: everything predict/export need.

    It is the model's card in the sidecar's layout (:meth:`ModelCard.to_meta`), with
    ``preprocessing`` and ``class_names`` in place of the card's where given. A
    preprocessing dict is checked (:meth:`Preprocessing.from_dict`) and written as given.
    """
    if class_names is not None and len(class_names) != model.num_classes:
        raise WeightsError(
            f"{len(class_names)} class names for a model with {model.num_classes} classes"
        )
    card = model.card
    if class_names is not None:
        card = dataclasses.replace(card, class_names=tuple(class_names))
    if preprocessing is not None:
        prep = (preprocessing if isinstance(preprocessing, Preprocessing)
                else Preprocessing.from_dict(preprocessing))  # fmt: skip
        card = dataclasses.replace(card, preprocessing=prep)
    meta = card.to_meta()
    if isinstance(preprocessing, dict):
        meta["preprocessing"] = dict(preprocessing)  # the keys the caller chose
    return meta


def encode_weights(
    model: ResNet,
    *,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The bytes of ``model``'s ``.safetensors`` file and its description (with checksum).

    The description is stored inside the file too, so the file alone describes itself.
    """
    if getattr(model, "features_only", False):
        raise WeightsError("save the full model, not a features_only view of it")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = weights_meta(model, preprocessing=preprocessing, class_names=class_names)
    meta[SIDECAR_CHECKSUM] = content_sha256(tensors)
    data = save_safetensors_bytes(tensors, metadata={SIDECAR_FORMAT: json.dumps(meta, indent=2)})
    return data, meta


def write_weights(path: str | os.PathLike, data: bytes, meta: dict[str, Any]) -> Path:
    """Write :func:`encode_weights`' result as ``path`` plus its JSON sidecar, each atomically.

    The weights go first: a crash between the two leaves new weights beside an old sidecar,
    whose checksum then refuses them with a clear error rather than describing them wrongly.
    A full disk or a missing permission is a :class:`~resnetlab.io.StorageError`.
    """
    path = Path(path)
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar_path(path), json.dumps(meta, indent=2) + "\n")
    return path


def save_weights(
    model: ResNet,
    path: str | os.PathLike,
    *,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> Path:
    """Write ``model`` as ``path`` (.safetensors) plus a JSON sidecar describing it.

    A full disk or a missing permission raises :class:`~resnetlab.io.StorageError` (an
    ``OSError``) and leaves any previous file as it was.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"save_weights writes .safetensors files, got {path}")
    data, meta = encode_weights(model, preprocessing=preprocessing, class_names=class_names)
    return write_weights(path, data, meta)


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
    """The architecture's name and config in a weights description."""
    if (
        not isinstance(meta, dict)
        or meta.get("format") != SIDECAR_FORMAT
        or not isinstance(meta.get("config"), dict)
    ):
        raise WeightsError("the weights' description has no resnetlab architecture config")
    label = meta.get("architecture")
    return (label if isinstance(label, str) else "custom"), _check_config(
        meta["config"], "weights description"
    )
