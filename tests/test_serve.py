"""`resnetlab serve` end to end: real server processes on free ports, spoken to over HTTP."""

import base64
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from resnetlab.cli import main as cli_main  # noqa: E402
from resnetlab.config import load_train_config  # noqa: E402
from resnetlab.engine import train  # noqa: E402
from resnetlab.inference import Predictor  # noqa: E402
from resnetlab.inference.serve import Batcher, Metrics, ServeConfig  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "resnet20"  # the architecture's name: the model's name in the v2 paths


def png_bytes(seed: int = 0, size: int = 24) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `resnetlab serve` process on a free port."""

    def __init__(self, log_dir: Path, *args: str) -> None:
        self.port = free_port()
        # a file, not a pipe: a pipe nobody reads could fill up and stall the server
        self.log_path = log_dir / f"serve-{self.port}.log"
        self.log = self.log_path.open("w")
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "resnetlab", "serve", *args, "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True
        )

    def wait_ready(self, deadline_s: float = 90) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.output()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server was not ready within {deadline_s} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    cfg = load_train_config(
        None,
        [],
        model="resnet20",
        model_args={"depth": 8},
        data={"spec": "synthetic:n=128,test=32,size=16,classes=4,channels=3", "batch_size": 16},
        precision="fp32",
        max_iters=4,
        eval_every=0,
        output=str(out),
    )
    train(cfg, overwrite=True, progress=False)
    return out


@pytest.fixture(scope="module")
def servers(run_dir):
    """Four servers, started together: the main one, one that times out and fills its
    queue at once, one whose batches wait long enough to be caught by SIGTERM, and a zoo
    model with random weights."""
    logs, run = run_dir.parent, [str(run_dir), "--device", "cpu"]
    arguments = {
        "main": [*run, "--max-delay-ms", "50", "--max-upload-mb", "0.5"],
        "slow": [*run, "--max-delay-ms", "3000", "--timeout-s", "0.3", "--max-queue", "2"],
        "drain": [*run, "--max-delay-ms", "5000", "--max-batch-size", "64"],
        "zoo": ["--model", "resnet20", "--device", "cpu"],
    }
    started: dict[str, Server] = {}
    try:  # every server started is stopped, whatever fails
        for name, args in arguments.items():
            started[name] = Server(logs, *args)
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor.from_source(run_dir, device="cpu")


def served_tolerance(server) -> float:
    """How far a server's outputs may be from the fp32 predictor's: fp32 rounding, or bf16's
    where ``--precision auto`` serves bf16 (a CPU with AMX)."""
    return 1e-4 if httpx.get(f"{server.url}/info").json()["precision"] == "fp32" else 5e-2


def post_files(url: str, *blobs: bytes, topk: int | None = None, **kw) -> httpx.Response:
    files = [("files", (f"img{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]
    params = {"topk": topk} if topk is not None else None
    return httpx.post(f"{url}/predict", files=files, params=params, timeout=30, **kw)


def test_predict_multipart_and_raw_body(servers, predictor, tmp_path):
    url = servers["main"].url
    r = post_files(url, png_bytes(0), png_bytes(1), topk=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL
    assert [p["filename"] for p in body["predictions"]] == ["img0.png", "img1.png"]
    for i, pred in enumerate(body["predictions"]):
        topk = pred["topk"]
        assert len(topk) == 3
        assert [t["prob"] for t in topk] == sorted((t["prob"] for t in topk), reverse=True)
        assert all(t["class"] == f"class_{t['index']}" for t in topk)
        # the same numbers as the Predictor gives in process
        path = tmp_path / f"{i}.png"
        path.write_bytes(png_bytes(i))
        local = predictor.predict(path, topk=3)[0]["topk"]
        assert [t["index"] for t in topk] == [t["index"] for t in local]
        tolerance = served_tolerance(servers["main"]) / 10  # probabilities, not logits
        assert [t["prob"] for t in topk] == pytest.approx([t["prob"] for t in local], abs=tolerance)

    raw = httpx.post(f"{url}/predict", content=png_bytes(2), timeout=30)
    assert raw.status_code == 200, raw.text
    (pred,) = raw.json()["predictions"]
    assert pred["filename"] == "body" and len(pred["topk"]) == 4  # topk 5 > 4 classes


def test_v2_health_and_metadata(servers):
    url = servers["main"].url
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{url}/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    meta = httpx.get(f"{url}/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL
    assert {"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]} in meta["inputs"]
    assert {"name": "logits", "datatype": "FP32", "shape": [-1, 4]} in meta["outputs"]
    for path in ("/v2/models/nope", "/v2/models/nope/infer"):
        r = httpx.request("GET" if path.endswith("nope") else "POST", f"{url}{path}",
                          json={"inputs": []})  # fmt: skip
        assert r.status_code == 404, r.text
        assert "nope" in r.json()["error"] and MODEL in r.json()["error"]


def test_v2_infer_fp32_and_bytes(servers, predictor):
    url = f"{servers['main'].url}/v2/models/{MODEL}/infer"
    images = [Image.open(io.BytesIO(png_bytes(i))).convert("RGB") for i in range(3)]
    x = torch.stack([predictor.prepare(im) for im in images])
    with torch.inference_mode():
        expected = predictor.model(x)
    request = {"id": "req-1", "inputs": [{"name": "input", "datatype": "FP32",
               "shape": list(x.shape), "data": x.flatten().tolist()}]}  # fmt: skip
    r = httpx.post(url, json=request, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == MODEL and body["id"] == "req-1"
    (logits,) = body["outputs"]
    assert logits["name"] == "logits" and logits["datatype"] == "FP32"
    assert logits["shape"] == [3, 4]
    got = torch.tensor(logits["data"]).reshape(3, 4)
    tolerance = served_tolerance(servers["main"])
    assert (got - expected).abs().max() <= tolerance * expected.abs().max()

    encoded = [base64.b64encode(png_bytes(i)).decode() for i in range(3)]
    request = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [3], "data": encoded}]}
    r = httpx.post(url, json=request, timeout=30)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["logits"]["shape"] == [3, 4]
    got = torch.tensor(outputs["logits"]["data"]).reshape(3, 4)
    assert (got - expected).abs().max() <= tolerance * expected.abs().max()
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [3]
    assert outputs["label"]["data"] == [f"class_{i}" for i in expected.argmax(1).tolist()]


def v2(datatype, shape, data):
    return {"inputs": [{"name": "input", "datatype": datatype, "shape": shape, "data": data}]}


BAD_REQUESTS = [
    ("empty file", "files", [b""], 400, "empty"),
    ("not an image", "files", [b"hello, this is text"], 400, "not an image"),
    ("truncated image", "files", [png_bytes(0)[:200]], 400, "cannot decode"),
    ("raw body not an image", "raw", b"\x00\x01garbage", 400, "not an image"),
    ("upload too large", "raw", b"\x00" * 600_000, 413, "limit is 0.5 MiB"),
    ("chunked upload too large", "chunked", b"\x00" * 600_000, 413, "limit of 0.5 MiB"),
    ("topk 0", "query", {"topk": 0}, 400, "topk"),
    ("no files field", "form", {"other": "x"}, 400, "files"),
    ("fp32 wrong shape", "v2", v2("FP32", [1, 3, 8, 8], [0.0] * 192), 400, "[N, 3, 16, 16]"),
    ("fp32 wrong count", "v2", v2("FP32", [1, 3, 16, 16], [0.0] * 5), 400, "[N, 3, 16, 16]"),
    ("fp32 not numbers", "v2", v2("FP32", [1, 3, 16, 16], ["a"] * 768), 400, "numbers"),
    ("wrong datatype", "v2", v2("INT8", [1, 3, 16, 16], [0] * 768), 400, "FP32"),
    ("bad base64", "v2", v2("BYTES", [1], ["***"]), 400, "base64"),
    ("bytes wrong shape", "v2", v2("BYTES", [2], ["aGk="]), 400, "shape [N]"),
    ("bytes not an image", "v2", v2("BYTES", [1], ["aGk="]), 400, "not an image"),
    ("malformed v2 body", "v2", {"inputs": "x"}, 422, "inputs"),
]


@pytest.mark.parametrize(("kind", "payload", "status", "message"),
                         [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])  # fmt: skip
def test_bad_input_is_a_json_error_and_the_server_goes_on(servers, kind, payload, status, message):
    url = servers["main"].url
    if kind == "files":
        r = post_files(url, *payload)
    elif kind == "raw":
        r = httpx.post(f"{url}/predict", content=payload, timeout=30)
    elif kind == "chunked":  # no Content-Length: the limit holds while the body is read
        head = (b'--B\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
                b"Content-Type: image/png\r\n\r\n")  # fmt: skip
        body = head + payload + b"\r\n--B--\r\n"
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
        headers = {"content-type": "multipart/form-data; boundary=B"}
        r = httpx.post(f"{url}/predict", content=chunks, headers=headers, timeout=30)
        assert r.request.headers["transfer-encoding"] == "chunked"
    elif kind == "query":
        r = post_files(url, png_bytes(0), topk=payload["topk"])
    elif kind == "form":
        r = httpx.post(f"{url}/predict", data=payload, files={"x": ("a", b"b")}, timeout=30)
    else:
        r = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=payload, timeout=30)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert post_files(url, png_bytes(5)).status_code == 200


def test_zoo_model_with_random_weights(servers):
    server = servers["zoo"]
    info = httpx.get(f"{server.url}/info").json()
    assert info["model"] == "resnet20" and info["num_classes"] == 10
    assert info["random_weights"] is True and info["input_shape"] == [3, 32, 32]
    assert "random weights" in server.output()
    r = post_files(server.url, png_bytes(0))
    assert r.status_code == 200 and len(r.json()["predictions"][0]["topk"]) == 5


def test_timeout_504_and_full_queue_503(servers):
    url = servers["slow"].url
    # The batch waits 3 s for company; the request gives up after 0.3 s.
    first = post_files(url, png_bytes(0), png_bytes(1))
    assert first.status_code == 504, first.text
    assert "0.3 s" in first.json()["error"]
    # Its two images still fill the queue (2) until that batch runs.
    second = post_files(url, png_bytes(2))
    assert second.status_code == 503, second.text
    assert second.headers["retry-after"] == "1"
    assert "queue is full" in second.json()["error"]
    # more images than the queue could ever hold: no use retrying
    third = post_files(url, png_bytes(3), png_bytes(4), png_bytes(5))
    assert third.status_code == 413 and "at most 2" in third.json()["error"]
    assert httpx.get(f"{url}/v2/health/live").status_code == 200


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_concurrent_load_is_batched(servers):
    url = servers["main"].url
    blobs = [png_bytes(i) for i in range(4)]
    local = threading.local()

    def one(i: int) -> int:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=30)
        files = [("files", ("x.png", blobs[i % 4], "image/png"))]
        return local.client.post(f"{url}/predict", files=files).status_code

    before = httpx.get(f"{url}/metrics").text
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(300)))
    assert statuses == [200] * 300
    text = httpx.get(f"{url}/metrics").text
    batches = metric(text, "resnetlab_batch_size_count") - metric(
        before, "resnetlab_batch_size_count"
    )
    singles = metric(text, 'resnetlab_batch_size_bucket{le="1"}') - metric(
        before, 'resnetlab_batch_size_bucket{le="1"}'
    )
    assert singles < batches, "no batch held more than one image"
    assert batches < 300
    assert metric(text, "resnetlab_queue_depth") == 0


def test_metrics_page_and_docs(servers):
    url = servers["main"].url
    assert httpx.get(f"{url}/no/such/path").status_code == 404
    text = httpx.get(f"{url}/metrics").text
    assert "# TYPE resnetlab_requests_total counter" in text
    assert 'resnetlab_requests_total{endpoint="/predict",status="200"}' in text
    assert 'resnetlab_request_errors_total{endpoint="other"}' in text  # never the raw path
    assert "no/such" not in text
    assert 'resnetlab_request_duration_seconds_bucket{endpoint="/predict",le="+Inf"}' in text
    assert "# TYPE resnetlab_batch_size histogram" in text
    assert "# TYPE resnetlab_queue_depth gauge" in text

    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<form" in html and 'name="files"' in html and 'type="file"' in html
    assert 'fetch("/predict' in html and 'fetch("/info"' in html
    assert "http://" not in html and "https://" not in html  # nothing from outside
    info = httpx.get(f"{url}/info").json()
    assert info["model"] == MODEL and info["num_classes"] == 4 and info["device"] == "cpu"

    assert httpx.get(f"{url}/docs").status_code == 200
    assert "/v2/models/{name}/infer" in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_sigterm_answers_requests_in_flight(servers):
    server = servers["drain"]
    url = server.url

    def one(i: int) -> int:
        return post_files(url, png_bytes(i)).status_code

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(8)]
        # All eight wait in one batch (5 s for company) when the signal comes.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if metric(httpx.get(f"{url}/metrics").text, "resnetlab_queue_depth") == 8:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the eight requests never were all in the queue")
        server.proc.send_signal(signal.SIGTERM)
        statuses = [f.result(timeout=30) for f in futures]
    assert statuses == [200] * 8
    assert server.proc.wait(30) == 0
    assert "stopped" in server.output()


def test_batcher_stop_finishes_queued_work(predictor):
    config = ServeConfig(max_batch_size=2, max_delay_ms=60_000)
    batcher = Batcher(predictor, config, Metrics())
    futures = batcher.submit([torch.zeros(3, 16, 16) for _ in range(5)])
    batcher.stop(timeout=30)
    assert all(f.done() for f in futures)
    assert [tuple(f.result().shape) for f in futures] == [(4,)] * 5
    assert batcher.depth == 0


def test_config_errors_and_cli(capsys, tmp_path):
    with pytest.raises(ValueError, match="max_batch_size=0"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="timeout_s"):
        ServeConfig(timeout_s=0)
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    help_text = capsys.readouterr().out
    assert "--max-batch-size" in help_text and "examples:" in help_text
    assert cli_main(["serve", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab serve: error:") and err.count("\n") == 1


def test_package_import_does_not_import_fastapi():
    code = "import sys, resnetlab, resnetlab.inference; print('fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    assert out.strip() == "False"


def test_missing_fastapi_names_the_extra(monkeypatch):
    from resnetlab.inference import serve

    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(RuntimeError, match=r"pip install 'resnetlab\[serve\]'"):
        serve._import_fastapi()


def test_port_in_use_is_one_line_error(run_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "resnetlab", "serve", str(run_dir), "--port", str(port)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
    assert proc.returncode == 2
    assert f"resnetlab serve: error: could not listen on 127.0.0.1:{port}" in proc.stderr


def test_served_precision_is_the_cards_and_the_pages(servers):
    from resnetlab.inference.optimize import auto_precision

    info = httpx.get(f"{servers['main'].url}/info").json()
    assert info["precision"] == auto_precision("cpu")  # default --precision auto
    assert f"cpu, {info['precision']})" in servers["main"].output()
    assert "info.precision" in httpx.get(f"{servers['main'].url}/").text


def served_and_own_logits(server, predictor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits ``server`` answers for ``n`` preprocessed images (v2 FP32 infer), and the
    ones ``predictor``'s own model gives them."""
    images = [Image.open(io.BytesIO(png_bytes(i, size=16))).convert("RGB") for i in range(n)]
    x = torch.stack([predictor.prepare(im) for im in images])
    with torch.inference_mode():
        expected = predictor.model(x)
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/infer",
                   json=v2("FP32", list(x.shape), x.flatten().tolist()), timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    return torch.tensor(r.json()["outputs"][0]["data"]).reshape(expected.shape), expected


def test_int8_with_calibration_images_and_two_workers(run_dir, predictor, tmp_path):
    calib = tmp_path / "calib"
    for c in ("a", "b"):
        (calib / c).mkdir(parents=True)
        for i in range(24):
            (calib / c / f"{i}.png").write_bytes(png_bytes(100 + i + 50 * (c == "b"), size=16))
    int8 = Server(tmp_path, str(run_dir), "--device", "cpu", "--precision", "int8",
                  "--calibration", str(calib))  # fmt: skip
    workers = Server(tmp_path, "--model", "resnet20", "--device", "cpu", "--workers", "2")
    try:
        int8.wait_ready(180)
        workers.wait_ready(120)
        assert httpx.get(f"{int8.url}/info").json()["precision"] == "int8"
        got, expected = served_and_own_logits(int8, predictor, 4)
        assert not torch.equal(got, expected)  # quantized ...
        assert (got - expected).abs().max() < 0.1 * expected.abs().max()  # ... and close

        # Two processes answer on one port, with the same model (random weights, seeded).
        assert "2 worker processes" in workers.output()
        answers = {post_files(workers.url, png_bytes(7)).text for _ in range(12)}
        assert len(answers) == 1, answers
        assert '"class_' in answers.pop()
        workers.proc.send_signal(signal.SIGTERM)
        assert workers.proc.wait(60) == 0
        assert workers.output().rstrip().endswith("stopped")
    finally:
        int8.stop()
        workers.stop()


def test_a_compiled_model_is_served(run_dir, predictor, tmp_path):
    server = Server(tmp_path, str(run_dir), "--device", "cpu", "--compile",
                    "--max-batch-size", "4")  # fmt: skip
    try:
        server.wait_ready(180)
        info = httpx.get(f"{server.url}/info").json()
        assert info["compiled"] is True and info["max_batch_size"] == 4
        assert f"cpu, {info['precision']}, compiled)" in server.output()
        got, expected = served_and_own_logits(server, predictor, 3)
        tolerance = served_tolerance(server)
        assert (got - expected).abs().max() <= tolerance * expected.abs().max()
    finally:
        server.stop()


def test_int8_without_calibration_and_bad_workers_are_one_line_errors(run_dir, capsys):
    for workers in ("1", "2"):  # said once, by the parent of the worker processes too
        assert cli_main(["serve", str(run_dir), "--precision", "eager", "--compile",
                         "--workers", workers]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert "compiling needs an optimized model" in err and err.count("\n") == 1
    assert cli_main(["serve", str(run_dir), "--precision", "int8", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "int8 needs calibration images" in err and err.count("\n") == 1
    assert cli_main(["serve", str(run_dir), "--workers", "0"]) == 2
    assert "workers=0: expected an integer >= 1" in capsys.readouterr().err
    assert cli_main(["serve", str(run_dir), "--precision", "int8", "--calibration",
                     str(run_dir / "nothing")]) == 2  # fmt: skip
    assert "no calibration images" in capsys.readouterr().err
    assert cli_main(["serve", str(run_dir), "--calibration", str(run_dir)]) == 2
    assert "calibration images are for precision int8, not auto" in capsys.readouterr().err


def test_an_exported_onnx_graph_is_served(run_dir, predictor, tmp_path):
    from resnetlab.inference import export_model

    path = export_model(run_dir, "onnx", tmp_path / "model.onnx").path
    server = Server(tmp_path, str(path))
    try:
        server.wait_ready()
        assert httpx.get(f"{server.url}/info").json()["precision"] == "fp32 (onnxruntime)"
        r = post_files(server.url, png_bytes(3), topk=2)
        assert r.status_code == 200, r.text
        image = Image.open(io.BytesIO(png_bytes(3))).convert("RGB")
        (expected,) = predictor.predict([image], topk=2)
        got = r.json()["predictions"][0]["topk"]
        assert [t["class"] for t in got] == [t["class"] for t in expected["topk"]]
    finally:
        server.stop()
    assert cli_main(["serve", str(path), "--precision", "int8"]) == 2
    assert cli_main(["serve", str(path), "--compile"]) == 2
