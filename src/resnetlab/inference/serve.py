"""Serving a model over HTTP: the ``serve`` command, a thin ASGI layer over :class:`Predictor`.

Endpoints (all JSON unless said otherwise):

* ``POST /predict`` -- image files (multipart field ``files``, one or several) or one raw
  image body; ``?topk=K``. Answers ``{"predictions": [{"filename", "topk": [...]}], "model"}``.
* The Open Inference Protocol (KServe v2, REST): ``GET /v2/health/live``,
  ``GET /v2/health/ready``, ``GET /v2/models/{name}`` (metadata) and
  ``POST /v2/models/{name}/infer`` taking an FP32 ``[N, C, H, W]`` tensor (already
  preprocessed) or BYTES ``[N]`` base64-encoded image files.
* ``GET /metrics`` -- Prometheus text format; ``GET /info`` -- the model's card in short;
  ``GET /`` -- a small page to try the model in a browser; ``/docs`` -- OpenAPI.

Requests are batched dynamically: handlers put single images on a bounded queue and one
worker thread takes the first, waits up to ``max_delay_ms`` for more (up to
``max_batch_size``), runs the model once on the stacked batch and hands each request its
rows. A full queue answers 503 with ``Retry-After``. On SIGTERM uvicorn stops accepting
connections, lets in-flight requests finish, and the worker finishes what is queued
before the process exits with status 0.

FastAPI and uvicorn are the well-kept ASGI stack: request parsing, multipart uploads and
graceful shutdown come tested, and OpenAPI ``/docs`` comes for free. They are an optional
extra (``pip install 'resnetlab[serve]'``); nothing else in resnetlab imports this module.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, which
# name classes imported or defined inside the functions that add the routes, at definition
# time.
import asyncio
import base64
import binascii
import bisect
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..data.errors import ImageDecodeError
from ..data.images import decode_image
from ..errors import ConfigError, MissingDependencyError
from .exported import ExportedModel
from .predict import Predictor, RandomWeightsWarning, find_images

__all__ = [
    "Batcher",
    "Metrics",
    "QueueFullError",
    "ServeConfig",
    "create_app",
    "load_predictor",
    "run_serve",
]

INSTALL_HINT = "the serve command needs FastAPI and uvicorn: pip install 'resnetlab[serve]'"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CALIBRATION_IMAGES = 256  # the most that int8 calibration reads (a few hundred suffice)


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches and what it accepts."""

    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256
    max_upload_mb: float = 20.0
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}: expected an integer >= 1")
        for name in ("max_delay_ms",):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected a number >= 0")
        for name in ("max_upload_mb", "timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected a number > 0")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class QueueFullError(RuntimeError):
    """The batching queue has no room for a request's images."""


class _BodyTooLarge(Exception):
    pass


TOO_LARGE_KEY = "resnetlab.body_too_large"


class _BodyLimit:
    """ASGI middleware: a request body that grows past ``limit`` bytes while it is read
    (chunked uploads name no Content-Length) raises :class:`_BodyTooLarge` (answered 413).
    A moderately oversized body is read to its end first, so that the client gets the
    answer rather than a reset connection."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    more = message.get("more_body", False)
                    while more and seen <= 8 * self.limit:
                        message = await receive()
                        if message["type"] != "http.request":
                            break
                        seen += len(message.get("body", b""))
                        more = message.get("more_body", False)
                    # Starlette may read the body in a task of its own, and FastAPI turns
                    # errors while reading JSON into 400s: the flag tells the handlers.
                    scope[TOO_LARGE_KEY] = True
                    raise _BodyTooLarge()
            return message

        await self.app(scope, limited, send)


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        lines, cumulative = [], 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == math.inf else f"{bound:g}"
            lines.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {cumulative}')
        suffix = f"{{{labels}}}" if labels else ""
        lines += [f"{name}_sum{suffix} {self.total:.6f}", f"{name}_count{suffix} {self.count}"]
        return lines


class Metrics:
    """Counters and histograms for ``/metrics`` (Prometheus text exposition format 0.0.4)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.batch_size = _Histogram(BATCH_BUCKETS)
        self.queue_depth = 0

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def record_batch(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe(size)

    def set_queue_depth(self, depth: int) -> None:
        with self._lock:
            self.queue_depth = depth

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP resnetlab_requests_total HTTP requests by endpoint and status code.",
                "# TYPE resnetlab_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(
                    f'resnetlab_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}'
                )
            errors: dict[str, int] = {}
            for (endpoint, status), n in self.requests.items():
                if status >= 400:
                    errors[endpoint] = errors.get(endpoint, 0) + n
            lines += [
                "# HELP resnetlab_request_errors_total HTTP requests answered 4xx or 5xx.",
                "# TYPE resnetlab_request_errors_total counter",
            ]
            lines += [
                f'resnetlab_request_errors_total{{endpoint="{e}"}} {n}'
                for e, n in sorted(errors.items())
            ]
            lines += [
                "# HELP resnetlab_request_duration_seconds Time to answer a request.",
                "# TYPE resnetlab_request_duration_seconds histogram",
            ]
            for endpoint, hist in sorted(self.latency.items()):
                lines += hist.render("resnetlab_request_duration_seconds", f'endpoint="{endpoint}"')
            lines += [
                "# HELP resnetlab_batch_size Images per model call.",
                "# TYPE resnetlab_batch_size histogram",
                *self.batch_size.render("resnetlab_batch_size"),
                "# HELP resnetlab_queue_depth Images waiting for or inside a model call.",
                "# TYPE resnetlab_queue_depth gauge",
                f"resnetlab_queue_depth {self.queue_depth}",
            ]
        return "\n".join(lines) + "\n"


@dataclass
class _Item:
    tensor: torch.Tensor
    future: concurrent.futures.Future


class Batcher:
    """Dynamic batching: one worker thread runs the model on batches of queued images.

    :meth:`submit` takes preprocessed ``C x H x W`` tensors and returns one future per
    tensor, resolved with that image's logits (a 1-D CPU tensor). The queue holds at most
    ``max_queue`` images, counting those inside the running batch too, so that its depth
    is what a new request waits behind. :meth:`stop` lets the worker finish every queued
    image, then ends it.
    """

    def __init__(self, predictor: Predictor, config: ServeConfig, metrics: Metrics) -> None:
        self.predictor = predictor
        self.config = config
        self.metrics = metrics
        self._items: list[_Item] = []
        self._pending = 0  # queued + in the running batch
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="resnetlab-batcher", daemon=True)
        self._thread.start()

    def submit(self, tensors: Sequence[torch.Tensor]) -> list[concurrent.futures.Future]:
        """Queue ``tensors``; raises :class:`QueueFullError` when they do not all fit."""
        with self._cond:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            if self._pending + len(tensors) > self.config.max_queue:
                raise QueueFullError(
                    f"the queue is full ({self._pending} of {self.config.max_queue} images "
                    f"waiting, this request adds {len(tensors)})"
                )
            items = [_Item(t, concurrent.futures.Future()) for t in tensors]
            self._items += items
            self._pending += len(items)
            self.metrics.set_queue_depth(self._pending)
            self._cond.notify()
        return [item.future for item in items]

    @property
    def depth(self) -> int:
        with self._cond:
            return self._pending

    def warmup(self) -> None:
        """Run the model on a zero image and on a full batch of them, outside the queue and
        the metrics, so that the first requests do not pay for lazy initialisation (or a
        compiled model's compilation for the batch sizes it treats apart)."""
        prep = self.predictor.preprocessing
        zero = torch.zeros(prep.in_chans, prep.image_size, prep.image_size)
        self._forward([zero])
        if self.config.max_batch_size > 1:
            self._forward([zero] * self.config.max_batch_size)

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queued images, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take_batch(self) -> list[_Item] | None:
        limit = self.config.max_batch_size
        with self._cond:
            while not self._items:
                if self._stopping:
                    return None
                self._cond.wait()
            # The first image waits at most max_delay_ms for others to share its batch.
            deadline = time.monotonic() + self.config.max_delay_ms / 1000
            while len(self._items) < limit and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, self._items = self._items[:limit], self._items[limit:]
        return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            # A request that timed out has cancelled its futures: skip its images.
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            try:
                if live:
                    logits = self._forward([item.tensor for item in live])
                    self.metrics.record_batch(len(live))
                    for item, row in zip(live, logits, strict=True):
                        item.future.set_result(row)
            except Exception as e:  # every waiting request must hear of the failure
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(e)
            finally:
                with self._cond:
                    self._pending -= len(batch)
                    self.metrics.set_queue_depth(self._pending)

    def _forward(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        model, device = self.predictor.model, self.predictor.device
        with torch.inference_mode():
            logits = model(torch.stack(tensors).to(device)).float().cpu()
        expected = (len(tensors), len(self.predictor.class_names))
        if tuple(logits.shape) != expected:
            raise RuntimeError(f"the model returned {tuple(logits.shape)}; expected {expected}")
        return logits


def load_predictor(
    source: str | None = None,
    *,
    model: str | None = None,
    weights: str | None = None,
    device: str = "auto",
    precision: str | None = None,
    calibration: Sequence[str] = (),
    compile: bool = False,
    batch_size: int | None = None,
) -> Predictor:
    """The Predictor for ``serve``, resolved as ``predict`` does, and optimized for
    ``precision`` (:meth:`Predictor.optimized`; None: the model as loaded). ``int8``
    calibrates on up to :data:`CALIBRATION_IMAGES` images of ``calibration`` (folders,
    files or glob patterns, as ``predict`` takes them), picked evenly across them.
    ``compile``: compiled by inductor (int8 always is), for ``batch_size`` images a call
    first (serve's largest batch) and then for any other number.

    ``source``: a run directory, a resnetlab ``.safetensors`` file or a graph written by
    ``resnetlab export`` (``.onnx``, OpenVINO ``.xml``: served as exported, so only
    ``auto`` or None apply); or ``model`` (a zoo
    name) with ``weights`` (a torchvision/timm state dict, resnetlab weights or a named
    weight such as ``torchvision:resnet18.IMAGENET1K_V1``); ``model`` alone gives random
    weights (with a warning on stderr).
    """
    predictor = _resolve_predictor(source, model=model, weights=weights, device=device)
    _check_options(source, predictor, precision, calibration, compile)
    if precision is None or isinstance(predictor.model, ExportedModel):
        return predictor
    return predictor.optimized(precision, calibration=calibration_images(calibration),
                               compile=compile, batch_size=batch_size)  # fmt: skip


def _check_options(source: str | None, predictor: Predictor, precision: str | None,
                   calibration: Sequence[str], compile: bool) -> None:  # fmt: skip
    """Whether ``precision``, ``calibration`` and ``compile`` go together and with the
    source: one clear error before anything is served (in the parent of ``--workers``)."""
    if calibration and precision != "int8":
        raise ConfigError(f"calibration images are for precision int8, not {precision}")
    if compile and precision is None:
        raise ConfigError("compiling needs an optimized model: give --precision auto, fp32 or "
                          "bf16 (not eager) with --compile")  # fmt: skip
    if isinstance(predictor.model, ExportedModel):
        if compile:
            raise ConfigError(f"{source} runs as exported: --compile is for weights, not graphs")
        if precision not in (None, "auto"):
            raise ConfigError(f"{source} runs as exported ({predictor.precision}): leave "
                              f"--precision auto, or serve the weights it came from for "
                              f"{precision}")  # fmt: skip


def calibration_images(inputs: Sequence[str]) -> list[Path]:
    """Up to :data:`CALIBRATION_IMAGES` image files of ``inputs``, evenly spread over them
    (sorted, class folders one after another: every class gets its share)."""
    if not inputs:
        return []
    files, missing = find_images(list(inputs))
    if missing or not files:
        raise ConfigError(f"no calibration images in {', '.join(missing or inputs)}")
    step = max(1, len(files) // CALIBRATION_IMAGES)
    return files[::step][:CALIBRATION_IMAGES]


def _resolve_predictor(
    source: str | None, *, model: str | None, weights: str | None, device: str
) -> Predictor:
    if model is not None:
        if source is not None and weights is None:
            weights = source
        elif source is not None:
            raise ConfigError(f"give either SOURCE ({source}) or --weights ({weights}), not both")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            predictor = Predictor.from_name(model, weights, device=device)
        if predictor.random_weights:
            print(f"warning: {model} has random weights: predictions are meaningless",
                  file=sys.stderr, flush=True)  # fmt: skip
        return predictor
    if weights is not None:
        if source is not None:
            raise ConfigError(f"give either SOURCE ({source}) or --weights ({weights}), not both")
        source = weights
    if source is None:
        raise ConfigError("give a run directory or .safetensors file (or --model NAME)")
    return Predictor.from_source(source, device=device)


def _import_fastapi() -> Any:
    try:
        import fastapi
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    # python-multipart parses uploads; FastAPI only notices its absence at the first form.
    # (Its module was `multipart` before 0.0.13, `python_multipart` since.)
    if not any(importlib.util.find_spec(m) for m in ("python_multipart", "multipart")):
        raise MissingDependencyError(INSTALL_HINT)
    return fastapi


def _decode(data: bytes, name: str, predictor: Predictor) -> torch.Tensor:
    """Image file bytes -> model input, through the same decoder as training and predict
    (decoded reduced where the format allows, as predict does for files)."""
    prep = predictor.preprocessing
    image = decode_image(data, name, channels=prep.channels, min_side=prep.resize)
    return predictor.prepare(image)


def _topk(logits: torch.Tensor, class_names: Sequence[str], k: int) -> list[dict[str, Any]]:
    probs, indices = logits.softmax(dim=0).topk(min(k, len(class_names)))
    return [
        {"class": class_names[i], "index": i, "prob": p}
        for p, i in zip(probs.tolist(), indices.tolist(), strict=True)
    ]


class _HttpError(Exception):
    """A request answered with ``status`` and the JSON body ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    """The JSON error answer every failure gets: ``{"error": message}``."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _over_limit(size: int, what: str, config: ServeConfig) -> str:
    return (
        f"{what} is {size / 2**20:.1f} MiB; the limit is {config.max_upload_mb:g} MiB "
        "(--max-upload-mb)"
    )


def _check_size(size: int, what: str, config: ServeConfig) -> None:
    if size > config.max_upload_bytes:
        raise _HttpError(413, _over_limit(size, what, config))


@dataclass
class _ServerState:
    """What the handlers share: the predictor and its card, the limits, the metrics, and
    the batching worker, which lives from the app's startup to its end."""

    predictor: Predictor
    config: ServeConfig
    model_name: str
    metrics: Metrics = field(default_factory=Metrics)
    batcher: Batcher | None = None
    ready: bool = False
    # The app's route paths, the labels /metrics counts requests by.
    known_paths: set[str | None] = field(default_factory=set)

    @property
    def input_shape(self) -> list[int]:
        prep = self.predictor.preprocessing
        return [prep.in_chans, prep.image_size, prep.image_size]

    @property
    def num_classes(self) -> int:
        return len(self.predictor.class_names)

    def info(self) -> dict[str, Any]:
        """The model's card in short (``GET /info``)."""
        return {
            "model": self.model_name,
            "num_classes": self.num_classes,
            "class_names": list(self.predictor.class_names),
            "input_shape": self.input_shape,
            "device": str(self.predictor.device),
            "precision": self.predictor.precision,
            "compiled": self.predictor.compiled,
            "random_weights": self.predictor.random_weights,
            "max_batch_size": self.config.max_batch_size,
        }

    def v2_metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol's model metadata (``GET /v2/models/{name}``)."""
        return {
            "name": self.model_name,
            "versions": ["1"],
            "platform": "pytorch",
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [-1, *self.input_shape]},
                {"name": "input", "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, self.num_classes]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
        }

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise _HttpError(404, f"unknown model {name!r}: this server serves {self.model_name!r}")

    def too_large(self) -> Any:
        """The 413 answer to a body that grew past the limit while it was read."""
        return _error(
            413, f"the request body is over the limit of {self.config.max_upload_mb:g} MiB "
            "(--max-upload-mb)"
        )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Start the batching worker (warmed up); on shutdown, let it drain."""
        from fastapi.concurrency import run_in_threadpool

        batcher = Batcher(self.predictor, self.config, self.metrics)
        await run_in_threadpool(batcher.warmup)
        self.batcher = batcher
        self.ready = True
        try:
            yield
        finally:
            self.ready = False
            await run_in_threadpool(batcher.stop)

    async def infer(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each preprocessed image's logits, through the batching queue."""
        batcher, config = self.batcher, self.config
        if batcher is None or not self.ready:
            raise _HttpError(503, "the model is not ready", {"Retry-After": "1"})
        if len(tensors) > config.max_queue:  # would never fit: retrying cannot help
            raise _HttpError(
                413, f"{len(tensors)} images in one request; this server takes at most "
                f"{config.max_queue} (--max-queue)"
            )  # fmt: skip
        try:
            futures = batcher.submit(tensors)
        except QueueFullError as e:
            raise _HttpError(503, f"{e}: retry later", {"Retry-After": "1"}) from None
        waiting = [asyncio.wrap_future(f) for f in futures]
        try:
            return await asyncio.wait_for(asyncio.gather(*waiting), config.timeout_s)
        except asyncio.TimeoutError:
            for f in futures:
                f.cancel()
            raise _HttpError(
                504, f"no answer within {config.timeout_s:g} s (--timeout-s)"
            ) from None

    async def decode_all(self, files: list[tuple[str, bytes]]) -> list[torch.Tensor]:
        """Image files (name, bytes) -> model inputs, decoded off the event loop."""
        from fastapi.concurrency import run_in_threadpool

        if not self.ready:
            raise _HttpError(503, "the server is not ready", {"Retry-After": "1"})

        def work() -> list[torch.Tensor]:
            return [_decode(data, filename, self.predictor) for filename, data in files]

        try:
            return await run_in_threadpool(work)
        except ImageDecodeError as e:
            raise _HttpError(400, str(e)) from None


# --- request bodies -----------------------------------------------------------------------


async def _read_multipart(request: Any, config: ServeConfig) -> list[tuple[str, bytes]]:
    """The files of the multipart field ``files``, each within the upload limit."""
    form = await request.form(max_part_size=config.max_upload_bytes)
    files: list[tuple[str, bytes]] = []
    try:
        for upload in form.getlist("files"):
            if isinstance(upload, str):
                raise _HttpError(400, "field 'files' must hold files, not text")
            data = await upload.read()
            _check_size(len(data), f"file {upload.filename!r}", config)
            files.append((upload.filename or "upload", data))
    finally:
        await form.close()
    if not files:
        raise _HttpError(400, "no files: send them in the multipart field 'files'")
    return files


async def _read_raw_body(request: Any, config: ServeConfig) -> tuple[str, bytes]:
    """The body as one image file, named by the ``X-Filename`` header."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        _check_size(len(body), "the request body", config)
    return request.headers.get("x-filename", "body"), bytes(body)


async def _read_images(request: Any, config: ServeConfig) -> list[tuple[str, bytes]]:
    """The image files of a ``/predict`` request: multipart ``files``, or the raw body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _read_multipart(request, config)
    return [await _read_raw_body(request, config)]


def _fp32_tensors(shape: list[int], data: list[Any], input_shape: list[int]) -> list[torch.Tensor]:
    """An Open Inference Protocol FP32 ``[N, C, H, W]`` input as N preprocessed images."""
    expected = _expected_shape(input_shape)
    if len(shape) != 4 or shape[1:] != input_shape or shape[0] < 1:
        raise _HttpError(400, f"FP32 input has shape {shape}; expected shape {expected} (N >= 1)")
    try:
        x = torch.tensor(data, dtype=torch.float32)
    except (TypeError, ValueError) as e:
        raise _HttpError(400, f"FP32 data is not a list of numbers: {e}") from None
    if x.numel() != math.prod(shape):
        raise _HttpError(
            400,
            f"FP32 data holds {x.numel()} numbers; shape {shape} needs "
            f"{math.prod(shape)} (expected shape {expected})",
        )
    return list(x.reshape(shape).unbind(0))


def _base64_files(shape: list[int], data: list[Any]) -> list[tuple[str, bytes]]:
    """An Open Inference Protocol BYTES ``[N]`` input as N image files (name, bytes)."""
    if len(shape) != 1 or shape[0] != len(data) or not data:
        raise _HttpError(
            400,
            f"BYTES input has shape {shape} for {len(data)} items; expected "
            "shape [N] with N base64-encoded image files",
        )
    files = []
    for i, item in enumerate(data):
        if not isinstance(item, str):
            raise _HttpError(400, f"BYTES data[{i}] is not a base64 string")
        try:
            files.append((f"data[{i}]", base64.b64decode(item, validate=True)))
        except (binascii.Error, ValueError):
            raise _HttpError(400, f"BYTES data[{i}] is not valid base64") from None
    return files


def _expected_shape(input_shape: list[int]) -> str:
    return f"[N, {', '.join(str(s) for s in input_shape)}]"


async def _v2_input_tensors(
    datatype: str, shape: list[int], data: list[Any], state: _ServerState
) -> list[torch.Tensor]:
    """The model inputs of an Open Inference Protocol input of ``datatype``."""
    if datatype == "FP32":
        return _fp32_tensors(shape, data, state.input_shape)
    if datatype == "BYTES":
        return await state.decode_all(_base64_files(shape, data))
    raise _HttpError(
        400,
        f"datatype {datatype!r}: expected FP32 (shape {_expected_shape(state.input_shape)}, "
        "preprocessed) or BYTES (shape [N], base64-encoded image files)",
    )


def _v2_outputs(logits: torch.Tensor, datatype: str, class_names: Sequence[str]) -> list[dict]:
    """The logits, and for image files (BYTES) the top-1 labels too."""
    outputs: list[dict[str, Any]] = [
        {
            "name": "logits",
            "datatype": "FP32",
            "shape": list(logits.shape),
            "data": logits.flatten().tolist(),
        }
    ]
    if datatype == "BYTES":
        labels = [class_names[i] for i in logits.argmax(dim=1).tolist()]
        outputs.append(
            {"name": "label", "datatype": "BYTES", "shape": [len(labels)], "data": labels}
        )
    return outputs


# --- the app's parts ----------------------------------------------------------------------


def _add_error_handlers(app: Any, state: _ServerState) -> None:
    """Every error answers ``{"error": message}``, a validation error with what was wrong."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(_HttpError)
    async def _http_error(request: Request, exc: _HttpError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(_BodyTooLarge)
    async def _too_large(request: Request, exc: _BodyTooLarge) -> JSONResponse:
        return state.too_large()

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if request.scope.get(TOO_LARGE_KEY):
            return state.too_large()
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()))
            parts.append(f"{where}: {e.get('msg')}")
        return _error(422, "invalid request: " + "; ".join(parts))


async def _refuse_declared_size(request: Any, length: int, config: ServeConfig) -> Any:
    """413 for a body whose Content-Length is over the limit. A moderately oversized body is
    read first, so that the client sees the answer rather than a reset connection; a huge
    one is refused without reading it."""
    if length <= 8 * config.max_upload_bytes:
        with contextlib.suppress(_BodyTooLarge):  # _BodyLimit reads it to the end
            async for _ in request.stream():
                pass
    return _error(413, _over_limit(length, "the request body", config))


async def _answer(request: Any, call_next: Any, state: _ServerState) -> Any:
    """The app's answer; an exception in it is a JSON 500 (or 413), and the server goes on."""
    try:
        return await call_next(request)
    except Exception as e:  # the server answers and keeps serving
        if request.scope.get(TOO_LARGE_KEY):
            return state.too_large()
        return _error(500, f"internal error: {type(e).__name__}: {e}")


def _add_limits_and_metrics(app: Any, state: _ServerState) -> None:
    """The middleware that refuses oversized bodies and counts every request."""
    from fastapi import Request

    @app.middleware("http")
    async def _limits_and_metrics(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        path = request.url.path
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > state.config.max_upload_bytes:
            response = await _refuse_declared_size(request, int(length), state.config)
        else:
            response = await _answer(request, call_next, state)
        # Label by route template (never the raw path: unknown paths would grow the metrics).
        route = request.scope.get("route")
        label = getattr(route, "path", None) or (path if path in state.known_paths else "other")
        state.metrics.record_request(label, response.status_code, time.perf_counter() - start)
        return response


def _add_page_routes(app: Any, state: _ServerState) -> None:
    """``GET /``, the page to try the model in a browser, and ``GET /info``."""
    from fastapi.responses import HTMLResponse

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        page = resources.files(__package__).joinpath("serve_assets/index.html").read_text()
        return HTMLResponse(page)

    @app.get("/info", summary="The served model: name, classes, input, device")
    async def info() -> dict[str, Any]:
        return state.info()


def _add_predict_route(app: Any, state: _ServerState) -> None:
    """``POST /predict``: the top-k classes of image files."""
    from fastapi import Request

    @app.post(
        "/predict",
        summary="Top-k classes of image files",
        description="Multipart field `files` (one or several), or the raw image as the body.",
    )
    async def predict(request: Request, topk: int = 5) -> dict[str, Any]:
        if topk < 1:
            raise _HttpError(400, f"topk={topk}: expected an integer >= 1")
        files = await _read_images(request, state.config)
        tensors = await state.decode_all(files)
        logits = await state.infer(tensors)
        names = state.predictor.class_names
        return {
            "predictions": [
                {"filename": filename, "topk": _topk(row, names, topk)}
                for (filename, _), row in zip(files, logits, strict=True)
            ],
            "model": state.model_name,
        }


def _add_v2_routes(app: Any, state: _ServerState) -> None:
    """The Open Inference Protocol (KServe v2, REST): health, model metadata, inference."""
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel

    class InferInput(BaseModel):
        name: str = "input"
        datatype: str
        shape: list[int]
        data: list[Any]

    class InferRequest(BaseModel):
        id: str | None = None
        inputs: list[InferInput]

    @app.get("/v2/health/live", summary="Open Inference Protocol: the server is up")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="Open Inference Protocol: the model can answer")
    async def ready() -> JSONResponse:
        ok = bool(state.ready)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{name}", summary="Open Inference Protocol: model metadata")
    async def model_metadata(name: str) -> dict[str, Any]:
        state.check_model(name)
        return state.v2_metadata()

    @app.get("/v2/models/{name}/ready", summary="Open Inference Protocol: model readiness")
    async def model_ready(name: str) -> JSONResponse:
        state.check_model(name)
        ok = bool(state.ready)
        return JSONResponse({"name": state.model_name, "ready": ok}, status_code=200 if ok else 503)

    @app.post("/v2/models/{name}/infer", summary="Open Inference Protocol: inference")
    async def v2_infer(name: str, body: InferRequest) -> dict[str, Any]:
        state.check_model(name)
        if len(body.inputs) != 1:
            raise _HttpError(400, f"expected exactly one input, got {len(body.inputs)}")
        inp = body.inputs[0]
        tensors = await _v2_input_tensors(inp.datatype, inp.shape, inp.data, state)
        logits = torch.stack(await state.infer(tensors))
        answer: dict[str, Any] = {"model_name": state.model_name, "model_version": "1"}
        if body.id is not None:
            answer["id"] = body.id
        answer["outputs"] = _v2_outputs(logits, inp.datatype, state.predictor.class_names)
        return answer


def _add_metrics_route(app: Any, state: _ServerState) -> None:
    """``GET /metrics`` in Prometheus text format."""
    from fastapi.responses import PlainTextResponse

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(
            state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )


def create_app(
    predictor: Predictor, config: ServeConfig | None = None, *, name: str | None = None
) -> Any:
    """The FastAPI application serving ``predictor``; the batching worker lives with it.

    ``name``: the model's name in the v2 paths and answers (default: its architecture).
    """
    fastapi = _import_fastapi()
    model_name = name or getattr(predictor.model, "name", None) or "model"
    state = _ServerState(predictor, config or ServeConfig(), model_name)
    app = fastapi.FastAPI(
        title="resnetlab serve",
        description=f"{model_name}: {state.num_classes} classes, input {state.input_shape}",
        lifespan=state.lifespan,
    )
    _add_error_handlers(app, state)
    _add_limits_and_metrics(app, state)
    _add_page_routes(app, state)
    _add_predict_route(app, state)
    _add_v2_routes(app, state)
    _add_metrics_route(app, state)
    app.add_middleware(_BodyLimit, limit=state.config.max_upload_bytes)  # the outermost layer
    state.known_paths = {getattr(r, "path", None) for r in app.routes}
    app.state.metrics = state.metrics
    app.state.model_name = model_name
    return app


# The worker processes of ``--workers N`` read what to serve from this variable (JSON).
WORKER_ENV = "RESNETLAB_SERVE_WORKER"


def run_serve(
    source: str | None = None,
    *,
    model: str | None = None,
    weights: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    config: ServeConfig | None = None,
    precision: str | None = "auto",
    calibration: Sequence[str] = (),
    workers: int = 1,
    compile: bool = False,
) -> int:
    """The ``serve`` command: load the model (optimized for ``precision``, see
    :func:`load_predictor`), serve it until SIGTERM or Ctrl-C; returns 0.

    ``workers`` > 1: that many server processes share the port (uvicorn's supervisor),
    each with its own model, batching queue and metrics, and an equal share of the CPU
    threads; the Python work of each request (HTTP, decoding, preprocessing) then runs in
    parallel, which a single process's interpreter lock does not allow. SIGTERM drains
    every worker.
    """
    _import_fastapi()
    try:
        import uvicorn
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}: expected an integer >= 1")
    config = config or ServeConfig()
    spec = dict(source=source, model=model, weights=weights, device=device,
                precision=precision, calibration=list(calibration), compile=compile,
                batch_size=config.max_batch_size)  # fmt: skip
    options = dict(host=host, port=port, log_level="warning", access_log=False)
    if workers == 1:
        predictor = load_predictor(**spec)
        app = create_app(predictor, config)
        _announce(app.state.model_name, predictor, predictor.precision, options, 1,
                  predictor.compiled)  # fmt: skip
        server = uvicorn.Server(uvicorn.Config(app, **options))
        _run_until_stopped(server.run)
        if not server.started:
            raise ConfigError(_CANNOT_LISTEN.format(host=host, port=port))
    else:
        _run_workers(spec, config, options, workers)
    print("stopped", flush=True)
    return 0


_CANNOT_LISTEN = "could not listen on {host}:{port} (in use? choose another with --port)"


def _announce(name: str, predictor: Predictor, precision: str, options: dict[str, Any],
              workers: int, compiled: bool) -> None:  # fmt: skip
    processes = f", {workers} worker processes" if workers > 1 else ""
    compiled = ", compiled" if compiled else ""
    print(f"serving {name} ({len(predictor.class_names)} classes, {predictor.device}, "
          f"{precision}{compiled}{processes}) on http://{options['host']}:{options['port']}  "
          "(docs: /docs, page: /)", flush=True)  # fmt: skip


def _run_until_stopped(run: Any) -> None:
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; with
    # the default handler that would kill the process (status 143) after a clean drain.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run()
    except SystemExit:  # uvicorn exits when it cannot bind; its log line says why
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_workers(spec: dict[str, Any], config: ServeConfig, options: dict[str, Any],
                 workers: int) -> None:  # fmt: skip
    """``workers`` processes of :func:`worker_app` on one socket, under uvicorn's supervisor."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .optimize import auto_precision

    # The model is read once here, so that a bad source is one clear error, not one per worker.
    predictor = _resolve_predictor(spec["source"], model=spec["model"],
                                   weights=spec["weights"], device=spec["device"])  # fmt: skip
    _check_options(spec["source"], predictor, spec["precision"], spec["calibration"],
                   spec["compile"])  # fmt: skip
    calibration_images(spec["calibration"])
    precision = spec["precision"] or "fp32"
    if precision == "auto":
        precision = auto_precision(predictor.device)
    name = getattr(predictor.model, "name", None) or "model"
    threads = max(1, torch.get_num_threads() // workers)
    os.environ[WORKER_ENV] = json.dumps(
        {"model": spec, "config": dataclasses.asdict(config), "threads": threads}
    )
    uv = uvicorn.Config(f"{__name__}:worker_app", factory=True, workers=workers, **options)
    try:
        sockets = [uv.bind_socket()]
    except SystemExit:
        raise ConfigError(_CANNOT_LISTEN.format(**options)) from None
    supervisor = Multiprocess(uv, sockets=sockets)
    _announce(name, predictor, precision, options, workers, spec["compile"] or precision == "int8")
    del predictor  # (each worker loads its own)
    supervisor.run()
    failed = [p.pid for p in supervisor.processes if p.exitcode == 3]  # uvicorn's STARTUP_FAILURE
    if failed:
        raise ConfigError(f"worker process(es) {failed} could not start: see the lines above")


def worker_app() -> Any:
    """The app of one ``--workers`` process, built from :data:`WORKER_ENV`."""
    spec = json.loads(os.environ[WORKER_ENV])
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)  # a model without trained weights is the same in every worker
    predictor = load_predictor(**spec["model"])
    return create_app(predictor, ServeConfig(**spec["config"]))
