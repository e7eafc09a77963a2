"""Finding, downloading and reading the built-in datasets, on real files in official formats."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import socket
import struct
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetlab.data import (
    ChecksumError,
    DataFormatError,
    DownloadError,
    MissingDataError,
    catalog,
    default_data_dir,
    load_split,
    sources,
)
from resnetlab.data.formats import read_cifar, read_idx, read_idx_images, read_idx_labels

# --------------------------------------------------------------------------- writers


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 00 00 08 ndim, big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_idx_split(rng: np.random.Generator, n: int, size: int = 28) -> tuple[np.ndarray, ...]:
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), (np.arange(n) % 10).astype(
        np.uint8
    )


def write_idx_dataset(folder: Path, n_train: int = 30, n_test: int = 20, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images, labels = fake_idx_split(rng, n)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
        out[split] = (images, labels)
    return out


def cifar_records(images: np.ndarray, labels: list[np.ndarray]) -> bytes:
    columns = [label.astype(np.uint8)[:, None] for label in labels]
    return np.concatenate([*columns, images.reshape(len(images), -1)], axis=1).tobytes()


def write_tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def cifar10_members(per_file: int = 3) -> tuple[dict[str, bytes], dict[str, tuple]]:
    rng = np.random.default_rng(1)
    members, truth = {}, {}
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for k, name in enumerate(names):
        images = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)
        labels = (np.arange(per_file) + k) % 10
        members[f"cifar-10-batches-bin/{name}"] = cifar_records(images, [labels])
        truth[name] = (images, labels)
    return members, truth


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def no_system_dirs(monkeypatch, tmp_path):
    """Keep Debian's files and the user's cache out of every test unless a test opts in."""
    monkeypatch.setattr(sources, "SEARCH_DIRS", {"fashion-mnist": (tmp_path / "no-system",)})
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "env-cache"))


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    ipath = write_idx(tmp_path / "img", images, gz=gz)
    lpath = write_idx(tmp_path / "lab", labels, gz=gz)
    got = read_idx_images(ipath)
    assert got.shape == (5, 1, 28, 28) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[:, 0], images)
    got_labels = read_idx_labels(lpath)
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_labels, labels)


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # float elements: not supported
    with pytest.raises(DataFormatError, match=r"x\.idx.*not an IDX file.*0x00000d03"):
        read_idx(path)
    path.write_bytes(b"GIF89a-------")
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated(tmp_path, gz):
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-100]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte: truncated IDX file.*3136"):
        read_idx(path)


def test_idx_truncated_gzip_stream_and_trailing_data(tmp_path):
    whole = gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.gz.*(truncated|corrupt)"):
        read_idx(cut)
    extra = tmp_path / "extra"
    extra.write_bytes(idx_bytes(np.zeros((2, 3), np.uint8)) + b"\x01")
    with pytest.raises(DataFormatError, match="data past"):
        read_idx(extra)
    header_only = tmp_path / "short"
    header_only.write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataFormatError, match="short: truncated IDX file"):
        read_idx(header_only)


def test_idx_wrong_kind(tmp_path):
    labels = write_idx(tmp_path / "labels.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataFormatError, match="expected an IDX image file"):
        read_idx_images(labels)
    images = write_idx(tmp_path / "images.gz", np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(DataFormatError, match="expected an IDX label file"):
        read_idx_labels(images)


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_archive(tmp_path):
    members, truth = cifar10_members()
    archive = write_tar_gz(tmp_path / "data" / "cifar10" / "cifar-10-binary.tar.gz", members)
    images, labels = read_cifar(archive, catalog.CIFAR10.train_members, 1)
    assert images.shape == (15, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:3], truth["data_batch_1.bin"][0])
    np.testing.assert_array_equal(images[12:], truth["data_batch_5.bin"][0])
    np.testing.assert_array_equal(labels[:3], truth["data_batch_1.bin"][1])

    x, y, info = load_split("cifar10", "test", data_dir=tmp_path / "data", download=False)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape == (3, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(truth["test_batch.bin"][0]))
    assert y.tolist() == truth["test_batch.bin"][1].tolist()
    assert info.num_classes == 10 and info.class_names[0] == "airplane"


def test_cifar100_uses_fine_label(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    coarse, fine = np.array([1, 2, 3, 4]), np.array([99, 0, 57, 12])
    data = cifar_records(images, [coarse, fine])
    write_tar_gz(
        tmp_path / "cifar100" / "cifar-100-binary.tar.gz",
        {"cifar-100-binary/train.bin": data, "cifar-100-binary/test.bin": data[: 2 * 3074]},
    )
    x, y, info = load_split("cifar100", "train", data_dir=tmp_path, download=False)
    assert y.tolist() == [99, 0, 57, 12]
    assert torch.equal(x, torch.from_numpy(images))
    assert info.class_names[99] == "worm"
    x, y, _ = load_split("cifar100", "test", data_dir=tmp_path, download=False)
    assert y.tolist() == [99, 0]


def test_cifar_extracted_folder(tmp_path):
    members, truth = cifar10_members(per_file=2)
    for name, data in members.items():
        (tmp_path / "cifar10" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cifar10" / name).write_bytes(data)
    x, y, _ = load_split("cifar10", "train", data_dir=tmp_path, download=False)
    assert x.shape == (10, 3, 32, 32)
    assert torch.equal(x[-2:], torch.from_numpy(truth["data_batch_5.bin"][0]))


def test_cifar_truncated_and_missing_members(tmp_path):
    members, _ = cifar10_members()
    members["cifar-10-batches-bin/data_batch_2.bin"] = members[
        "cifar-10-batches-bin/data_batch_2.bin"
    ][:-5]
    archive = write_tar_gz(tmp_path / "a.tar.gz", members)
    with pytest.raises(DataFormatError, match=r"data_batch_2\.bin holds 9214 bytes.*3073-byte"):
        read_cifar(archive, catalog.CIFAR10.train_members, 1)
    with pytest.raises(DataFormatError, match=r"missing cifar-100-binary/train\.bin"):
        read_cifar(archive, catalog.CIFAR100.train_members, 2)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataFormatError, match=r"broken\.tar\.gz: corrupt or truncated"):
        read_cifar(broken, catalog.CIFAR10.train_members, 1)


# --------------------------------------------------------------------------- finding files


def test_idx_dataset_found_in_raw_folder_ungzipped(tmp_path):
    truth = write_idx_dataset(tmp_path / "mnist" / "raw", gz=False)
    x, y, info = load_split("mnist", "train", data_dir=tmp_path, download=False)
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], torch.from_numpy(truth["train"][0]))
    assert y.tolist() == truth["train"][1].tolist()
    assert info.name == "mnist" and info.class_names == tuple("0123456789")
    first, labels, _ = load_split("mnist:train=7", "train", data_dir=tmp_path, download=False)
    assert torch.equal(first, x[:7]) and torch.equal(labels, y[:7])
    assert load_split("mnist:train=7", "test", data_dir=tmp_path, download=False)[0].shape[0] == 20


def test_torchvision_layout_and_env_data_dir(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "tv" / "FashionMNIST" / "raw")
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "tv"))
    assert default_data_dir() == tmp_path / "tv"
    x, _, info = load_split("fashion-mnist", "test", download=False)
    assert x.shape == (20, 1, 28, 28) and info.class_names[-1] == "Ankle boot"
    monkeypatch.delenv("RESNETLAB_DATA")
    assert default_data_dir() == Path.home() / ".cache" / "resnetlab"


def test_system_search_dir(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "usr-share")
    monkeypatch.setattr(sources, "SEARCH_DIRS", {"fashion-mnist": (tmp_path / "usr-share",)})
    x, _, _ = load_split("fashion-mnist", "train", data_dir=tmp_path / "empty", download=False)
    assert x.shape == (30, 1, 28, 28)


def test_bad_labels_and_mismatched_counts(tmp_path):
    folder = tmp_path / "mnist"
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([0, 1], np.uint8))
    with pytest.raises(DataFormatError, match="holds 3 images but .*holds 2 labels"):
        load_split("mnist", "test", data_dir=tmp_path, download=False)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 12], np.uint8))
    with pytest.raises(DataFormatError, match=r"labels in \[0, 12\], expected 0\.\.9"):
        load_split("mnist", "test", data_dir=tmp_path, download=False)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(DataFormatError, match=r"shape \(1, 32, 32\), expected \(1, 28, 28\)"):
        load_split("mnist", "test", data_dir=tmp_path, download=False)


def test_missing_without_download(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_split("fashion-mnist", "test", data_dir=tmp_path, download=False)
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert str(tmp_path / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "bef4ecab320f06d8554ea6380940ec79" in msg


# --------------------------------------------------------------------------- downloading


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 serving files from a temporary folder."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def serve_mnist(monkeypatch, www: Path, bases: list[str], *, md5_override: str | None = None):
    write_idx_dataset(www)
    files = tuple(
        catalog.RemoteFile(
            f.filename, md5_override or md5(www / f.filename), tuple(b + f.filename for b in bases)
        )
        for f in catalog.MNIST.files
    )
    monkeypatch.setitem(catalog.CATALOG, "mnist", dataclasses.replace(catalog.MNIST, files=files))


def test_download_verifies_and_places_files(tmp_path, http_root, monkeypatch):
    www, base = http_root
    serve_mnist(monkeypatch, www, [closed_port_url(), base])  # first mirror is down
    data = tmp_path / "data"
    x, y, _ = load_split("mnist", "test", data_dir=data, download=True)
    assert x.shape == (20, 1, 28, 28)
    got = sorted(p.name for p in (data / "mnist").iterdir())
    assert got == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # no temp files
    assert md5(data / "mnist" / got[0]) == md5(www / got[0])
    # now on disk: no network needed
    x2, y2, _ = load_split("mnist", "test", data_dir=data, download=False)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_download_checksum_mismatch(tmp_path, http_root, monkeypatch):
    www, base = http_root
    serve_mnist(monkeypatch, www, [base], md5_override="0" * 32)
    data = tmp_path / "data"
    with pytest.raises(ChecksumError) as err:
        load_split("mnist", "test", data_dir=data)
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in msg
    assert "expected " + "0" * 32 in msg
    assert f"got {md5(www / 't10k-images-idx3-ubyte.gz')}" in msg
    assert list((data / "mnist").iterdir()) == []  # temp file deleted, nothing placed


def test_download_unreachable_host(tmp_path, monkeypatch):
    dead = closed_port_url()
    files = tuple(
        dataclasses.replace(f, urls=(dead + f.filename,)) for f in catalog.FASHION_MNIST.files
    )
    monkeypatch.setitem(
        catalog.CATALOG, "fashion-mnist", dataclasses.replace(catalog.FASHION_MNIST, files=files)
    )
    with pytest.raises(DownloadError) as err:
        load_split("fashion-mnist", "train", data_dir=tmp_path / "data")
    msg = str(err.value)
    assert "could not download train-images-idx3-ubyte.gz" in msg
    assert "refused" in msg.lower()
    assert str(tmp_path / "data" / "fashion-mnist") in msg
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert name in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    leftovers = list((tmp_path / "data" / "fashion-mnist").glob("*"))
    assert leftovers == []


def test_download_http_404(tmp_path, http_root, monkeypatch):
    _, base = http_root
    files = tuple(
        dataclasses.replace(f, urls=(base + "nope.tar.gz",)) for f in catalog.CIFAR10.files
    )
    monkeypatch.setitem(
        catalog.CATALOG, "cifar10", dataclasses.replace(catalog.CIFAR10, files=files)
    )
    with pytest.raises(DownloadError, match=r"(?s)cifar-10-binary\.tar\.gz.*HTTP 404.*extracted"):
        load_split("cifar10", "train", data_dir=tmp_path)


def test_download_file_progress_and_atomic(tmp_path, http_root):
    www, base = http_root
    (www / "blob.bin").write_bytes(b"x" * 3_000_000)
    dest = sources.download_file(base + "blob.bin", tmp_path / "out" / "blob.bin", progress=True)
    assert dest.read_bytes() == b"x" * 3_000_000
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]


# --------------------------------------------------------------------------- real data

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_debian(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SEARCH_DIRS", {"fashion-mnist": (DEBIAN_FASHION,)})
    x, y, info = load_split("fashion-mnist", "test", data_dir=tmp_path, download=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [1000] * 10
    # the catalog's published mean/std hold for the real pixels (train stats, test close)
    pixels = x.float() / 255
    assert abs(pixels.mean().item() - info.mean[0]) < 0.005
    assert abs(pixels.std().item() - info.std[0]) < 0.005
