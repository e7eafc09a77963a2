"""HTTP serving: `resnetlab serve` with dynamic batching on and off vs a plain FastAPI endpoint.

Three servers, measured one after the other in one run, with the same model (a small CIFAR
net, random weights by default: speed only) and the same requests (one 32 x 32 PNG per
request, multipart field ``files``):

* ``resnetlab serve --max-batch-size 32`` (dynamic batching, ``--max-delay-ms`` as given),
  in one process and with ``--workers N`` (N processes on one port; ``--workers``, default
  the CPU count); every ``resnetlab serve`` row runs the model as ``--precision auto``
  picks (BN folded, channels_last; fp32, or bf16 where the CPU is fast at it);
* ``resnetlab serve --max-batch-size 1`` (batching off: one model call per image);
* a plain FastAPI endpoint that decodes the upload and calls the model (as loaded) once per
  request (what a first serving script does; a sync handler, so FastAPI runs it in its
  threadpool); it preprocesses with the model card, as the server does.

Each is loaded by 1, 8 and 64 concurrent clients (threads, one keep-alive connection each)
for ``--seconds`` after a short warm-up; the table gives requests/s and p50/p99 latency.
Clients and server share the machine's cores.

    python benchmarks/serve.py                      # resnet20, random weights; print only
    python benchmarks/serve.py --write              # and record the table in BENCHMARKS.md
    python benchmarks/serve.py --source runs/r20 --concurrency 1 8 64 --seconds 5
"""

# No `from __future__ import annotations`: FastAPI reads the baseline handler's annotations.
import argparse
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, command, markdown_table, parse_args, write_section  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(size: int = 32) -> bytes:
    pixels = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(0)) * 255
    buf = io.BytesIO()
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def plain_server(args: argparse.Namespace) -> None:
    """The baseline: one model call per request, no queue, no batching."""
    import uvicorn
    from fastapi import FastAPI, UploadFile

    from resnetlab.inference.serve import load_predictor

    predictor = load_predictor(args.source, model=args.model, device="cpu")
    with torch.inference_mode():  # warmed up as resnetlab serve warms up its model
        prep = predictor.preprocessing
        predictor.model(torch.zeros(1, prep.in_chans, prep.image_size, prep.image_size))
    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready() -> dict:
        return {"ready": True}

    @app.post("/predict")
    def predict(files: list[UploadFile]) -> dict:
        image = Image.open(io.BytesIO(files[0].file.read())).convert("RGB")
        with torch.inference_mode():
            logits = predictor.model(predictor.prepare(image).unsqueeze(0))
        probs, idx = logits.softmax(1).topk(5)
        pairs = zip(probs[0].tolist(), idx[0].tolist(), strict=True)
        return {"topk": [{"index": i, "prob": p} for p, i in pairs]}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def start(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not get ready: {' '.join(cmd)}")


def load(url: str, clients: int, seconds: float, image: bytes) -> tuple[float, float, float]:
    """``clients`` threads post as fast as answers come: requests/s, p50 and p99 in ms."""
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        mine, bad = [], 0
        with httpx.Client(timeout=60) as http:
            files = [("files", ("x.png", image, "image/png"))]
            for _ in range(10):  # warm-up: connection, server threads, first model calls
                http.post(f"{url}/predict", files=files)
            start_gate.wait()
            while (t0 := time.perf_counter()) < stop_at[0]:
                r = http.post(f"{url}/predict", files=files)
                mine.append(time.perf_counter() - t0)
                bad += r.status_code != 200
        with lock:
            latencies.extend(mine)
            errors.append(bad)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 1e9
    start_gate.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    if sum(errors):
        raise SystemExit(f"{sum(errors)} of {len(latencies)} requests failed at {clients} clients")
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return len(latencies) / elapsed, q[49] * 1000, q[98] * 1000


def ratio_line(rows: list[list]) -> str:
    """Each resnetlab row's throughput over the plain endpoint's, at the most clients."""
    most = max(r[1] for r in rows)
    plain = next(r[2] for r in rows if r[1] == most and r[0].startswith("plain"))
    ratios = [f"{r[0].removeprefix('resnetlab serve, ')}: {r[2] / plain:.2f}x"
              for r in rows if r[1] == most and not r[0].startswith("plain")]  # fmt: skip
    return f"\n\nAt {most} clients, over the plain endpoint's requests/s: {'; '.join(ratios)}."


def main(argv: list[str] | None = None) -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--model", default="resnet20", help="a zoo model, random weights (resnet20)")
    p.add_argument("--source", help="a run directory or .safetensors file instead of --model")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--seconds", type=float, default=4.0, help="measured time per cell (4)")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="for the batching server")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="worker processes of the multi-process row (the CPU count)")  # fmt: skip
    p.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = parse_args(p, argv)
    if a.plain_server:
        plain_server(a)
        return
    if a.source is not None:
        a.model = None
    what = ["--model", a.model] if a.model else [a.source]
    serve = [sys.executable, "-m", "resnetlab", "serve", *what, "--device", "cpu",
             "--max-delay-ms", str(a.max_delay_ms), "--max-queue", "1024"]  # fmt: skip
    plain = [sys.executable, str(Path(__file__).resolve()), "--plain-server"]
    plain += ["--model", a.model] if a.model else ["--source", a.source]
    batching = f"batching on (max batch 32, {a.max_delay_ms:g} ms)"
    systems = [
        (f"resnetlab serve, {batching}", [*serve, "--max-batch-size", "32"]),
        (f"resnetlab serve, {batching}, {a.workers} worker processes",
         [*serve, "--max-batch-size", "32", "--workers", str(a.workers)]),
        ("resnetlab serve, batching off (max batch 1)", [*serve, "--max-batch-size", "1"]),
        ("plain FastAPI endpoint, one model call per request", plain),
    ]  # fmt: skip
    image = png_bytes()
    rows = []
    for name, cmd in systems:
        proc, url = start(cmd)
        try:
            for clients in a.concurrency:
                rps, p50, p99 = load(url, clients, a.seconds, image)
                print(f"{name}, {clients} clients: {rps:.0f} req/s, p50 {p50:.1f} ms, "
                      f"p99 {p99:.1f} ms", flush=True)  # fmt: skip
                rows.append([name, clients, rps, p50, p99])
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    table = markdown_table(["server", "clients", "requests/s", "p50 ms", "p99 ms"], rows)
    print(table + ratio_line(rows))
    model = a.model + " (random weights)" if a.model else a.source
    body = (f"{model}, one 32 x 32 PNG per request (multipart upload, decode, preprocess, "
            f"model, top-5 JSON); {a.seconds:g} s per cell after warm-up; clients are threads "
            f"with one keep-alive connection each, in one process on the same "
            f"{os.cpu_count()} cores as the server. resnetlab serve runs `--precision auto` "
            "(BN folded, channels_last); the plain endpoint the model as loaded."
            f"\n\n{table}{ratio_line(rows)}")  # fmt: skip
    if a.write:
        key = a.model or Path(a.source).name
        write_section(f"serve_{key}", f"HTTP serving ({key}): dynamic batching vs one call per "
                      "request", body, command("serve.py", argv))  # fmt: skip


if __name__ == "__main__":
    main()
