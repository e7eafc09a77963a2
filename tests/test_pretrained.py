"""Named pretrained weights: the table, and the download against a real local HTTP server."""

import hashlib
import http.server
import io
import json
import re
import socket
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save as save_safetensors

from conftest import randomize, rel_err
from resnetlab import (
    PretrainedWeights,
    WeightsError,
    create_model,
    list_models,
    list_pretrained,
    load_model,
    load_weights,
    resolve_pretrained,
)
from resnetlab.cli import main
from resnetlab.data.info import DataInfo
from resnetlab.inference.meta import Preprocessing
from resnetlab.models import hub, pretrained
from resnetlab.models.weights import WeightsFile

# --------------------------------------------------------------------------- a weights server


@dataclass
class Site:
    """What the server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    # path -> sha256 announced as X-Linked-Etag on a 302 to /cdn<path>, as the HF hub does
    redirect_with_sha: dict[str, str] = field(default_factory=dict)
    cut_next: set[str] = field(default_factory=set)  # send half of it, then hang up (once)
    ignore_range: bool = False
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


def _handler(site: Site):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            site.requests.append((self.path, dict(self.headers)))
            if self.path in site.redirect_with_sha:
                self.send_response(302)
                self.send_header("Location", "/cdn" + self.path)
                self.send_header("X-Linked-Etag", f'"{site.redirect_with_sha[self.path]}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = self.path.removeprefix("/cdn")
            body = site.files.get(path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match and not site.ignore_range:
                start = int(match[1])
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if path in site.cut_next:
                site.cut_next.discard(path)
                self.wfile.write(body[start : start + (len(body) - start) // 2])
                self.close_connection = True
                return
            self.wfile.write(body[start:])

    return Handler


@pytest.fixture
def server():
    site = Site()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield site, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """Every test gets its own torch hub cache: nothing touches the real one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tv_resnet18():
    """A torchvision resnet18 with random weights and BN statistics, and its saved bytes."""
    torch.manual_seed(0)
    model = randomize(torchvision.models.resnet18(weights=None))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return model, buf.getvalue()


@pytest.fixture(scope="module")
def timm_resnetv2_18():
    """timm's resnetv2_18 (random weights), as the hub's model.safetensors would hold it."""
    model = randomize(timm.create_model("resnetv2_18", pretrained=False))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    return model, save_safetensors(sd, metadata={"format": "pt"})


def add_card(monkeypatch, card: PretrainedWeights) -> PretrainedWeights:
    monkeypatch.setitem(pretrained.PRETRAINED, card.name, card)
    return card


def serve_tv_resnet18(monkeypatch, site: Site, base: str, data: bytes, *, hash_=None):
    """A torchvision-style card (``resnet18-<8 hex>.pth``) served by the local server."""
    digest = sha256(data)
    filename = f"resnet18-{digest[:8]}.pth"
    site.files[f"/models/{filename}"] = data
    real = resolve_pretrained("torchvision:resnet18.IMAGENET1K_V1")
    return add_card(monkeypatch, replace(
        real, name="torchvision:resnet18.LOCAL", url=f"{base}/models/{filename}",
        hash=digest[:8] if hash_ is None else hash_, filename=filename,
    ))  # fmt: skip


def serve_timm_resnetv2_18(monkeypatch, site: Site, base: str, data: bytes):
    """A timm-style card: a Hugging Face hub URL that redirects and announces the sha256."""
    path = "/timm/resnetv2_18.local/resolve/main/model.safetensors"
    site.files[path] = data
    site.redirect_with_sha[path] = sha256(data)
    real = resolve_pretrained("timm:resnetv2_18.ra4_e3600_r224_in1k")
    return add_card(monkeypatch, replace(
        real, name="timm:resnetv2_18.local", url=base + path,
        filename="timm_resnetv2_18.local.safetensors",
    ))  # fmt: skip


def blob_card(monkeypatch, site: Site, base: str, data: bytes, **changes) -> PretrainedWeights:
    """A card for arbitrary bytes, for the download mechanics (hash: full sha256)."""
    site.files["/blob.pth"] = data
    card = PretrainedWeights(
        name="torchvision:resnet18.BLOB", model="resnet18", url=f"{base}/blob.pth",
        hash=sha256(data), filename="blob.pth", num_classes=1000,
        preprocessing=DataInfo("x", 1000, (), 3, 224, (0.5,) * 3, (0.5,) * 3).preprocessing(),
        train_image_size=224, crop_pct=1.0, metrics={"top1": None, "top5": None},
    )  # fmt: skip
    return add_card(monkeypatch, replace(card, **changes))


def cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# --------------------------------------------------------------------------- the table


def test_table_entries_fit_the_zoo():
    cards = list_pretrained()
    assert len(cards) == len(pretrained.PRETRAINED) >= 90
    assert len({c.name for c in cards}) == len(cards)
    zoo = set(list_models())
    prep_keys = set(DataInfo("x", 10, (), 3, 32, (0.5,) * 3, (0.5,) * 3).preprocessing())
    for card in cards:
        assert card.model in zoo, card.name
        assert card.source in ("torchvision", "timm")
        assert set(card.preprocessing) == prep_keys, card.name
        Preprocessing.from_dict(card.preprocessing)  # what predict and export accept
        assert card.num_classes == 1000
        assert 0.8 < card.crop_pct <= 1.0
        if card.source == "timm":
            tag = card.name.removeprefix("timm:")
            assert card.url == f"https://huggingface.co/timm/{tag}/resolve/main/model.safetensors"
            assert card.hash is None and card.filename.endswith(".safetensors")
    assert {c.model for c in cards} >= {"resnet18", "resnet50", "resnext101_64x4d",
                                        "wide_resnet101_2", "resnet50_v2"}  # fmt: skip
    json.dumps([c.to_dict() for c in cards])


def test_torchvision_cards_come_from_torchvision():
    card = resolve_pretrained("torchvision:resnet50.IMAGENET1K_V2")
    w = torchvision.models.get_weight("ResNet50_Weights.IMAGENET1K_V2")
    assert card.url == w.url and card.filename == Path(w.url).name
    assert card.hash == "11ad3fa6" and card.filename == f"resnet50-{card.hash}.pth"
    assert card.metrics == {"top1": 80.858, "top5": 95.434}
    assert card.preprocessing["resize"] == 232 and card.preprocessing["image_size"] == 224
    assert card.preprocessing["interpolation"] == "bilinear"
    assert card.class_names == tuple(w.meta["categories"])
    assert len(list_pretrained("torchvision:*")) == 17
    assert {c.model for c in list_pretrained("torchvision:*")} == {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
        "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
    }  # fmt: skip


def test_timm_cards_match_timm_pretrained_cfg():
    from timm.data import create_transform, resolve_data_config

    cards = list_pretrained("timm:*")
    assert len(cards) >= 70
    for card in cards:
        tag = card.name.removeprefix("timm:")
        cfg = timm.models.get_pretrained_cfg(tag).to_dict()
        prep = card.preprocessing
        assert cfg["hf_hub_id"] == f"timm/{tag}"
        assert card.num_classes == cfg["num_classes"]
        assert tuple(prep["mean"]) == tuple(cfg["mean"]) and tuple(prep["std"]) == tuple(cfg["std"])
        assert prep["interpolation"] == cfg["interpolation"]
        assert card.train_image_size == cfg["input_size"][1]
        data_cfg = resolve_data_config(pretrained_cfg=cfg, use_test_size=True)
        assert prep["image_size"] == data_cfg["input_size"][1], tag
        assert card.crop_pct == pytest.approx(data_cfg["crop_pct"]), tag
        resize = create_transform(**data_cfg).transforms[0]
        assert resize.size in (prep["resize"], (prep["resize"],)), tag
        assert card.license == cfg["license"]
        assert card.metrics["top1"] is not None and 60 < card.metrics["top1"] < 90


def _timm_pairs(slow: bool) -> list[tuple[str, str]]:
    pairs = sorted({(c.name.removeprefix("timm:").split(".")[0], c.model)
                    for c in list_pretrained("timm:*")})  # fmt: skip
    # one net of each block kind runs in the quick loop; the rest are marked slow
    small = {"resnet18", "resnet50", "resnetv2_18", "resnetv2_50"}
    return [p for p in pairs if (p[0] not in small) == slow]


def _check_timm_architecture(arch: str, ours: str) -> None:
    ref = randomize(timm.create_model(arch, pretrained=False, num_classes=7))
    model = create_model(ours, num_classes=7).eval()
    wf = WeightsFile(dict(ref.state_dict()), Path(arch))
    assert load_weights(model, wf, fmt="timm").complete
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = ref.forward_features(x)
        assert torch.equal(feats, model.forward_features(x))
        # timm's resnetv2 head is a 1x1 conv, the zoo's a linear layer: float rounding only
        assert rel_err(model.forward_head(feats), ref.forward_head(feats)) < 1e-5


@pytest.mark.parametrize(("arch", "ours"), _timm_pairs(slow=False))
def test_timm_architecture_is_the_zoo_model(arch, ours):
    _check_timm_architecture(arch, ours)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "ours"), _timm_pairs(slow=True))
def test_timm_architecture_is_the_zoo_model_large(arch, ours):
    _check_timm_architecture(arch, ours)


def test_unknown_name_suggests_close_ones(torch_home):
    with pytest.raises(WeightsError, match=r"did you mean timm:resnet50\.a1_in1k"):
        resolve_pretrained("timm:resnet50.a1_in1")
    with pytest.raises(WeightsError, match=r"torchvision:resnet50\.IMAGENET1K_V2"):
        create_model("resnet50", weights="torchvision:resnet50.IMAGENET1K_V3")
    assert cache_files(torch_home) == []


def test_weights_of_another_model_are_refused_before_download(torch_home):
    with pytest.raises(WeightsError) as e:
        create_model("resnet34", weights="torchvision:resnet18.IMAGENET1K_V1")
    msg = str(e.value)
    assert "weights of resnet18, not resnet34" in msg
    assert "torchvision:resnet34.IMAGENET1K_V1" in msg and "timm:resnet34.a1_in1k" in msg
    with pytest.raises(WeightsError, match="resnet20 has no named pretrained weights"):
        create_model("resnet20", weights="timm:resnet50.a1_in1k")
    assert cache_files(torch_home) == []


# --------------------------------------------------------------------------- downloading


def test_torchvision_weights_download_verify_and_load(server, tv_resnet18, monkeypatch, torch_home):
    site, base = server
    ref, data = tv_resnet18
    card = serve_tv_resnet18(monkeypatch, site, base, data)
    model = create_model("resnet18", weights=card.name).eval()
    assert cache_files(torch_home) == [card.filename]
    assert (torch_home / card.filename).read_bytes() == data
    assert model.pretrained_card is card and model.load_report.fmt == "torchvision"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    # a new head for 5 classes: the backbone is the pretrained one
    with pytest.warns(UserWarning, match="classifier re-initialised"):
        small = create_model("resnet18", weights=card.name, num_classes=5).eval()
    assert small.num_classes == 5 and small.pretrained_card.name == card.name
    with torch.no_grad():
        assert torch.equal(small.forward_features(x), model.forward_features(x))
    assert load_model(card.name).pretrained_card is card
    assert len(site.requests) == 1  # the later models reuse the cached file


def test_timm_weights_resume_after_interruption(server, timm_resnetv2_18, monkeypatch, torch_home):
    site, base = server
    ref, data = timm_resnetv2_18
    card = serve_timm_resnetv2_18(monkeypatch, site, base, data)
    site.cut_next.add(card.url.removeprefix(base))
    model = create_model("resnet18_v2", weights=card.name).eval()
    # first: the redirect and half the file; then the redirect again and a Range request
    ranges = [h.get("Range") for p, h in site.requests if p.startswith("/cdn/")]
    assert ranges == [None, f"bytes={len(data) // 2}-"]
    assert cache_files(torch_home) == [card.filename, card.filename + ".sha256"]
    assert (torch_home / (card.filename + ".sha256")).read_text().strip() == sha256(data)
    assert model.load_report.fmt == "timm" and model.pretrained_card.source == "timm"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), ref.forward_features(x))
        assert rel_err(model(x), ref(x)) < 1e-5


def test_interrupted_download_is_continued_by_the_next_call(server, monkeypatch, torch_home):
    site, base = server
    data = torch.randint(0, 256, (3_000_000,), dtype=torch.uint8).numpy().tobytes()
    card = blob_card(monkeypatch, site, base, data)
    site.cut_next.add("/blob.pth")
    with pytest.raises(WeightsError, match="interrupted") as e:
        hub.download(card.url, card.filename, sha256=card.hash, progress=False, retries=0)
    partial = torch_home / "blob.pth.partial"
    assert str(partial) in str(e.value) and partial.stat().st_size == len(data) // 2
    path = hub.download(card.url, card.filename, sha256=card.hash, progress=False, retries=0)
    assert site.requests[-1][1].get("Range") == f"bytes={len(data) // 2}-"
    assert path.read_bytes() == data and cache_files(torch_home) == ["blob.pth"]


def test_server_that_ignores_range_restarts_from_zero(server, monkeypatch, torch_home):
    site, base = server
    data = bytes(range(256)) * 1000
    card = blob_card(monkeypatch, site, base, data)
    site.ignore_range = True
    torch_home.mkdir(parents=True)
    (torch_home / "blob.pth.partial").write_bytes(b"not the start of the file")
    path = hub.download(card.url, card.filename, sha256=card.hash, progress=False)
    assert site.requests[0][1].get("Range") == "bytes=25-"
    assert path.read_bytes() == data


def test_partial_file_longer_than_the_file_restarts(server, monkeypatch, torch_home):
    site, base = server
    data = b"x" * 1000
    card = blob_card(monkeypatch, site, base, data)
    torch_home.mkdir(parents=True)
    (torch_home / "blob.pth.partial").write_bytes(b"y" * 2000)  # the server answers 416
    path = hub.download(card.url, card.filename, sha256=card.hash, progress=False)
    assert path.read_bytes() == data and [h.get("Range") for _, h in site.requests] == [
        "bytes=2000-", None]  # fmt: skip


def test_checksum_mismatch_leaves_nothing(server, tv_resnet18, monkeypatch, torch_home):
    site, base = server
    card = serve_tv_resnet18(monkeypatch, site, base, tv_resnet18[1], hash_="00000000")
    with pytest.raises(WeightsError) as e:
        create_model("resnet18", weights=card.name)
    msg = str(e.value)
    assert "checksum mismatch" in msg and card.url in msg
    assert "expected sha256 00000000" in msg and sha256(tv_resnet18[1]) in msg
    assert cache_files(torch_home) == []


def test_announced_sha256_mismatch_leaves_nothing(server, monkeypatch, torch_home):
    site, base = server
    path = "/timm/bad/resolve/main/model.safetensors"
    site.files[path] = b"some bytes"
    site.redirect_with_sha[path] = "ab" * 32
    with pytest.raises(
        WeightsError, match=f"expected sha256 {'ab' * 32}, got {sha256(b'some bytes')}"
    ):
        hub.download(base + path, "bad.safetensors", progress=False)
    assert cache_files(torch_home) == []


def test_no_checksum_at_all_is_refused(server, monkeypatch, torch_home):
    site, base = server
    card = blob_card(monkeypatch, site, base, b"unannounced", hash=None)
    with pytest.raises(WeightsError, match="no checksum is known and the server announced no"):
        hub.download(card.url, card.filename, progress=False)
    assert cache_files(torch_home) == []


def test_offline_error_is_one_line_with_url_and_cache_path(monkeypatch, torch_home):
    url = f"{closed_port_url()}/models/resnet18-12345678.pth"
    real = resolve_pretrained("torchvision:resnet18.IMAGENET1K_V1")
    card = add_card(monkeypatch, replace(real, name="torchvision:resnet18.OFF", url=url,
                                         hash="12345678", filename="resnet18-12345678.pth"))  # fmt: skip
    with pytest.raises(WeightsError) as e:
        create_model("resnet18", weights=card.name)
    msg = str(e.value)
    assert "\n" not in msg
    assert url in msg and str(torch_home / card.filename) in msg
    assert cache_files(torch_home) == []


def test_http_error_names_the_url(server, monkeypatch, torch_home):
    site, base = server
    with pytest.raises(WeightsError, match=r"HTTP 404.*put the file at .*missing\.pth"):
        hub.download(f"{base}/nothing-here.pth", "missing.pth", sha256="00", progress=False)


def test_cached_file_is_verified_and_reused_offline(server, tv_resnet18, monkeypatch, torch_home):
    site, base = server
    ref, data = tv_resnet18
    card = serve_tv_resnet18(monkeypatch, site, base, data)
    torch_home.mkdir(parents=True)
    (torch_home / card.filename).write_bytes(data)  # as torchvision itself would have left it
    add_card(monkeypatch, replace(card, url=closed_port_url() + "/gone.pth"))
    model = create_model("resnet18", weights=card.name).eval()
    assert site.requests == []
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        assert torch.equal(model(x), ref(x))
    (torch_home / card.filename).write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(WeightsError, match="corrupt or another file.*Delete it"):
        create_model("resnet18", weights=card.name)


def test_cached_file_without_table_hash_uses_the_recorded_one(server, monkeypatch, torch_home):
    site, base = server
    path = "/timm/blob/resolve/main/model.safetensors"
    site.files[path] = b"timm bytes"
    site.redirect_with_sha[path] = sha256(b"timm bytes")
    first = hub.download(base + path, "timm_blob.safetensors", progress=False)
    again = hub.download(closed_port_url() + path, "timm_blob.safetensors", progress=False)
    assert first == again and len(site.requests) == 2  # the redirect and the file, once
    first.write_bytes(b"tampered!!")
    with pytest.raises(WeightsError, match="corrupt"):
        hub.download(base + path, "timm_blob.safetensors", progress=False)
    # a file put there by hand, with no record: used, with a warning that it is unverified
    (torch_home / "timm_hand.safetensors").write_bytes(b"by hand")
    with pytest.warns(UserWarning, match="unverified"):
        hub.download(base + "/nothing", "timm_hand.safetensors", progress=False)


def test_cache_honours_torch_home(torch_home):
    assert hub.cache_dir() == torch_home
    assert pretrained.pretrained_path("timm:resnet50.a1_in1k") == (
        torch_home / "timm_resnet50.a1_in1k.safetensors"
    )


# --------------------------------------------------------------------------- the command line


def test_cli_lists_weights(capsys, torch_home):
    assert main(["weights", "resnet18"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    for column in ("name", "model", "top-1", "top-5", "test resize/crop", "interpolation",
                   "cached"):  # fmt: skip
        assert column in header
    assert "torchvision:resnet18.IMAGENET1K_V1" in out and "69.76" in out and "256/224" in out
    assert "timm:resnet18.a1_in1k" in out and "resnet34" not in out


def test_cli_json_and_cached_flag(capsys, torch_home):
    torch_home.mkdir(parents=True)
    (torch_home / "resnet18-f37072fd.pth").write_bytes(b"placeholder")
    assert main(["weights", "torchvision:resnet18.*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["torchvision:resnet18.IMAGENET1K_V1"]
    row = rows[0]
    assert row["cached"] is True and row["path"] == str(torch_home / "resnet18-f37072fd.pth")
    assert row["top1"] == 69.758 and row["preprocessing"]["resize"] == 256
    assert row["hash"] == "f37072fd" and row["model"] == "resnet18"


def test_cli_missing_metrics_show_a_dash(capsys, monkeypatch, torch_home):
    site = Site()
    blob_card(monkeypatch, site, "http://127.0.0.1:9", b"")
    assert main(["weights", "*BLOB"]) == 0
    assert "| –" in capsys.readouterr().out


def test_cli_download(server, capsys, monkeypatch, torch_home):
    site, base = server
    card = blob_card(monkeypatch, site, base, b"weights bytes")
    assert main(["weights", "--download", card.name]) == 0
    assert capsys.readouterr().out.strip() == str(torch_home / "blob.pth")
    assert main(["weights", "--download", "timm:resnet50.a1_in1"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["weights", "no-such-*"]) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["weights", "--download", card.name]) == 0  # cached: no network
    assert len(site.requests) == 1


def test_train_fine_tunes_a_named_weight_with_its_preprocessing(
    server, tv_resnet18, monkeypatch, torch_home, tmp_path, capfd
):
    from test_folder_auto import make_folder

    site, base = server
    card = serve_tv_resnet18(monkeypatch, site, base, tv_resnet18[1])
    data = make_folder(tmp_path / "photos", classes=2, train=4, val=2, size=96, mode="RGB")
    out = tmp_path / "ft"
    code = main(["train", "--model", "resnet18", "--weights", card.name, "--data",
                 f"imagefolder:{data}", "--batch-size", "4", "--max-iters", "1", "--output",
                 str(out), "--quiet", "--freeze", "stage3", "precision=fp32", "eval_every=0",
                 "data.num_workers=0"])  # fmt: skip
    assert code == 0
    err = capfd.readouterr().err
    assert "ImageNet pipeline at 224 px" in err and "reinitialized: fc.weight, fc.bias" in err
    assert "fine-tuning: frozen: conv1, bn1, layer1, layer2, layer3" in err
    meta = json.loads((out / "model.json").read_text())
    assert meta["num_classes"] == 2
    prep = meta["preprocessing"]
    assert [prep[k] for k in ("mean", "std", "image_size", "resize")] == [
        card.preprocessing[k] for k in ("mean", "std", "image_size", "resize")
    ]


def test_predict_with_a_named_weight_uses_its_card(server, tv_resnet18, monkeypatch, torch_home):
    from resnetlab.inference import Predictor

    site, base = server
    card = serve_tv_resnet18(monkeypatch, site, base, tv_resnet18[1])
    predictor = Predictor.from_name("resnet18", card.name, device="cpu")
    assert predictor.preprocessing.resize == card.preprocessing["resize"]
    assert predictor.class_names == card.class_names
    with pytest.raises(WeightsError, match="are weights of resnet18, not resnet34"):
        Predictor.from_name("resnet34", card.name, device="cpu")
