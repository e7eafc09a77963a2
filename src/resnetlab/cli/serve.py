"""``serve``: a model over HTTP (JSON, KServe v2, Prometheus), batching requests."""

from __future__ import annotations

import argparse

from .common import add_command, add_device, add_model_name

EPILOG = """examples:
  resnetlab serve runs/r20 --port 8000        # then open http://127.0.0.1:8000/ or /docs
  resnetlab serve runs/r20/model.safetensors --max-batch-size 64 --max-delay-ms 10
  resnetlab serve r20.onnx                   # an exported graph, run by onnxruntime
  resnetlab serve --model resnet18 --weights torchvision:resnet18.IMAGENET1K_V1
  resnetlab serve runs/r20 --precision int8 --calibration my_images/train
  resnetlab serve runs/r50 --compile            # compiled by inductor: more images/s
  curl -F files=@cat.jpg -F files=@dog.jpg 'http://127.0.0.1:8000/predict?topk=3'
  curl --data-binary @cat.jpg http://127.0.0.1:8000/predict     # a raw image body
endpoints: POST /predict, the Open Inference Protocol (KServe v2) under /v2 (health, model
metadata, infer with FP32 [N, C, H, W] or BYTES base64 images), GET /metrics (Prometheus),
GET / (a page to try the model), /docs (OpenAPI). Requests are batched: up to
--max-batch-size images, waiting at most --max-delay-ms; a full queue answers 503.
SIGTERM finishes the requests in flight, then exits with status 0"""


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "serve", cmd_serve,
                    "Serve a model over HTTP (JSON, KServe v2, Prometheus).", EPILOG)  # fmt: skip
    p.add_argument("source", nargs="?", metavar="SOURCE",
                   help="a run directory, a .safetensors file, or a graph from `resnetlab "
                   "export` (.onnx, OpenVINO .xml); or use --model")  # fmt: skip
    add_model_name(p)
    p.add_argument("--weights", metavar="FILE", help="with --model: a torchvision/timm state "
                   "dict or a named weight, e.g. torchvision:resnet18.IMAGENET1K_V1")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    p.add_argument("--max-batch-size", type=int, default=32, metavar="B",
                   help="images per model call at most (32; 1 turns batching off)")  # fmt: skip
    p.add_argument("--max-delay-ms", type=float, default=5.0, metavar="MS",
                   help="how long the first image waits for others to join its batch (5)")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="images waiting at most; more get 503 with Retry-After (256)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                   help="largest request body; larger gets 413 (20)")  # fmt: skip
    p.add_argument("--timeout-s", type=float, default=30.0, metavar="S",
                   help="a request waiting longer for the model gets 504 (30)")  # fmt: skip
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8", "eager"],
                   help="the model as served: BN folded and channels_last, in fp32, bf16 or int8 "
                   "(needs --calibration); auto: bf16 where it is faster than fp32 on this "
                   "machine, else fp32; eager: as loaded (auto)")  # fmt: skip
    p.add_argument("--compile", action="store_true",
                   help="compile the model with inductor, weights frozen (int8 always is): "
                   "a slower start (tens of seconds), more images/s for ImageNet-size nets")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="server processes sharing the port, each with its own model and queue "
                   "and 1/N of the CPU threads: more requests/s for a small model on a "
                   "multi-core CPU (1)")  # fmt: skip
    p.add_argument("--calibration", nargs="+", default=[], metavar="IMAGES",
                   help="int8: images like the ones to serve (folders, files or globs; up to "
                   "256 are used)")  # fmt: skip
    add_device(p, default="auto")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..inference.serve import ServeConfig, run_serve

    config = ServeConfig(
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue,
        max_upload_mb=args.max_upload_mb,
        timeout_s=args.timeout_s,
    )
    precision = None if args.precision == "eager" else args.precision
    return run_serve(args.source, model=args.model, weights=args.weights, host=args.host,
                     port=args.port, device=args.device, config=config, precision=precision,
                     calibration=args.calibration, workers=args.workers,
                     compile=args.compile)  # fmt: skip
