"""Exported graphs as models: an ONNX file (onnxruntime) or an OpenVINO IR (``.xml``).

``resnetlab export`` writes the model's card into the file (ONNX ``metadata_props``, the
IR's ``rt_info`` under ``resnetlab``): :func:`read_exported` reads the graph back as an
:class:`ExportedModel`, a module that takes fp32 NCHW batches and returns logits like the
model it came from, with the preprocessing and class names it was exported with. So
``predict`` and ``serve`` take such files as they take weights.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .export import ExportDependencyError, ExportError, import_openvino, openvino_config

SUFFIXES = (".onnx", ".xml")


def is_exported_graph(path: str | Path) -> bool:
    """Whether ``path`` names a file :func:`read_exported` reads (by its suffix)."""
    return Path(path).suffix.lower() in SUFFIXES


class ExportedModel(nn.Module):
    """An exported graph run by its runtime, called like the model it came from.

    ``backend`` says what runs it (``onnxruntime`` or ``openvino``), ``precision`` in what
    (fp32, by that runtime); ``name`` is the architecture's. It has no parameters and runs
    on the CPU.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, name: str, backend: str):
        super().__init__()
        self._run, self.name, self.backend = run, name, backend
        self.precision = f"fp32 ({backend})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(np.asarray(self._run(batch), dtype=np.float32))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, backend={self.backend!r}"


def read_exported(path: str | Path) -> tuple[ExportedModel, dict[str, Any]]:
    """The graph of an ONNX file or OpenVINO IR written by ``resnetlab export``, and its
    description (``preprocessing``, ``class_names``, ``architecture``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if path.suffix.lower() == ".onnx":
        run, props = _onnxruntime(path)
        backend = "onnxruntime"
    elif path.suffix.lower() == ".xml":
        run, props = _openvino(path)
        backend = "openvino"
    else:
        raise ExportError(f"{path}: expected an ONNX file (.onnx) or an OpenVINO IR (.xml)")
    try:
        meta = {
            "architecture": props["architecture"],
            "preprocessing": json.loads(props["preprocessing"]),
            "class_names": json.loads(props["class_names"]),
        }
    except (KeyError, TypeError, ValueError):
        raise ExportError(
            f"{path} does not carry resnetlab's description (preprocessing, class names): "
            "export it with `resnetlab export`"
        ) from None
    return ExportedModel(run, name=meta["architecture"], backend=backend), meta


def _onnxruntime(path: Path) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, str]]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportDependencyError(
            "ONNX files run on onnxruntime: pip install onnxruntime"
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for unreadable graphs
        raise ExportError(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from e
    name = session.get_inputs()[0].name
    # InferenceSession.run may be called from several threads at once.
    return lambda x: session.run(None, {name: x})[0], session.get_modelmeta().custom_metadata_map


def _openvino(path: Path) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, str]]:
    ov = import_openvino()
    core = ov.Core()
    try:
        graph = core.read_model(str(path))
        compiled = core.compile_model(graph, "CPU", openvino_config("f32"))
    except Exception as e:  # OpenVINO raises RuntimeError and its own types
        raise ExportError(f"{path}: OpenVINO cannot load it ({type(e).__name__}: {e})") from e
    keys = ("architecture", "preprocessing", "class_names")
    props = {k: graph.get_rt_info(["resnetlab", k]).astype(str)
             for k in keys if graph.has_rt_info(["resnetlab", k])}  # fmt: skip
    # An infer request is not to be shared between threads: one per thread.
    local = threading.local()

    def run(x: np.ndarray) -> np.ndarray:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        return request.infer({0: x})[0]

    return run, props
