"""Finding, downloading and reading the built-in datasets.

Files are looked for, in order, in

* ``DATA_DIR/<name>/`` and ``DATA_DIR/<name>/raw/``,
* torchvision's folders ``DATA_DIR/<Alias>/raw/`` (``FashionMNIST``, ``MNIST``),
* the system folders of :data:`SEARCH_DIRS` (Debian's ``dataset-fashion-mnist`` package
  installs Fashion-MNIST in ``/usr/share/datasets/fashion-mnist/``),

where ``DATA_DIR`` is the ``data_dir`` argument or :func:`default_data_dir`. IDX files are
accepted gzipped (``*.gz``) or not; CIFAR as the ``.tar.gz`` archive or its extracted folder.

A missing file is downloaded (when ``download=True``) into ``DATA_DIR/<name>/``: streamed to a
temporary file with a progress bar, checked against the published md5, then renamed into place
atomically. The md5 is checked on download only: files found on disk are validated by the
readers instead (magic numbers, sizes, label range), because redistributions such as Debian's
re-compress the same data, which changes the checksum of the ``.gz`` file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..io import atomic_file
from . import catalog
from .catalog import DatasetSpec, RemoteFile
from .errors import ChecksumError, DataFormatError, DownloadError, MissingDataError
from .formats import read_cifar, read_idx_images, read_idx_labels

__all__ = [
    "DOWNLOAD_TIMEOUT",
    "SEARCH_DIRS",
    "SYSTEM_PACKAGES",
    "default_data_dir",
    "download_file",
    "find_file",
    "load_official_split",
    "locate",
]

#: Extra folders searched per dataset (after the data dir). Tests monkeypatch this.
SEARCH_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

#: System packages that install a dataset into one of :data:`SEARCH_DIRS`.
SYSTEM_PACKAGES: dict[str, str] = {"fashion-mnist": "dataset-fashion-mnist"}

#: Seconds to wait for a server before trying the next mirror.
DOWNLOAD_TIMEOUT: float = 30.0

_CHUNK = 1 << 20


def default_data_dir() -> Path:
    """``$RESNETLAB_DATA`` if set, else ``~/.cache/resnetlab``."""
    env = os.environ.get("RESNETLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "resnetlab"


def _spec(name: str) -> DatasetSpec:
    try:
        return catalog.CATALOG[name]
    except KeyError:
        raise ConfigError(
            f"unknown built-in dataset {name!r}; known: {', '.join(sorted(catalog.CATALOG))}"
        ) from None


def _search_dirs(spec: DatasetSpec, data_dir: Path) -> list[Path]:
    dirs = [data_dir / spec.name, data_dir / spec.name / "raw"]
    for alias in spec.folder_aliases:
        dirs += [data_dir / alias / "raw", data_dir / alias]
    dirs += list(SEARCH_DIRS.get(spec.name, ()))
    return dirs


def find_file(spec: DatasetSpec, filename: str, data_dir: Path) -> Path | None:
    """The first existing copy of ``filename`` (or its un-gzipped twin) for ``spec``, or None."""
    names = [filename]
    if filename.endswith(".gz") and spec.format == "idx":
        names.append(filename[: -len(".gz")])
    for folder in _search_dirs(spec, data_dir):
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def _find_extracted(spec: DatasetSpec, data_dir: Path) -> Path | None:
    # A CIFAR archive someone already extracted: the folder holding "cifar-10-batches-bin/".
    for folder in _search_dirs(spec, data_dir):
        if all((folder / m).is_file() for m in spec.train_members + spec.test_members):
            return folder
    return None


def _needed_files(spec: DatasetSpec, split: str) -> list[RemoteFile]:
    if spec.format == "idx":
        wanted = set(spec.members(split))
        return [f for f in spec.files if f.filename in wanted]
    return list(spec.files)


def _instructions(spec: DatasetSpec, files: list[RemoteFile], data_dir: Path) -> str:
    target = data_dir / spec.name
    how = "gzipped or not" if spec.format == "idx" else "the archive, or its extracted folder"
    lines = [f"To install {spec.name} by hand, put these files in {target}/ ({how}):"]
    for f in files:
        lines.append(f"  {f.filename}  md5 {f.md5}  from {f.urls[0]}")
    package = SYSTEM_PACKAGES.get(spec.name)
    if package:
        where = ", ".join(str(d) for d in SEARCH_DIRS.get(spec.name, ()))
        lines.append(
            f"or install the system package: apt-get install {package}  (files in {where})"
        )
    lines.append("or set $RESNETLAB_DATA (or --data-dir) to a folder that already has them.")
    return "\n".join(lines)


def download_file(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    *,
    progress: bool = True,
    timeout: float | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying ``md5`` when given.

    The data is streamed to a temporary file next to ``dest`` and renamed into place only once
    complete and verified (:func:`~resnetlab.io.atomic_file`), so an interrupted download
    never leaves a partial ``dest``. Network failures propagate as
    ``urllib.error.URLError``/``OSError``/``http.client.HTTPException``; a checksum mismatch
    deletes the temporary file and raises :class:`ChecksumError`.
    """
    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": "resnetlab"})
    with atomic_file(dest) as (fd, _):
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(
                request, timeout=DOWNLOAD_TIMEOUT if timeout is None else timeout
            ) as response,
        ):
            actual = _copy(response, out, dest.name, progress)
        if md5 is not None and actual != md5.lower():
            raise ChecksumError(
                f"{dest.name}: md5 mismatch for the file downloaded from {url}: "
                f"expected {md5}, got {actual}. The download was deleted; try again, or put a "
                f"good copy at {dest}"
            )
    return dest


def _copy(response: Any, out: BinaryIO, name: str, progress: bool) -> str:
    """Copy an HTTP response's body to ``out`` with a progress bar; its md5 (hex)."""
    digest = hashlib.md5(usedforsecurity=False)
    total = response.headers.get("Content-Length")
    with tqdm(
        total=int(total) if total and total.isdigit() else None,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not progress,
        leave=False,
    ) as bar:
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _fetch(spec: DatasetSpec, remote: RemoteFile, data_dir: Path, progress: bool) -> Path:
    dest = data_dir / spec.name / remote.filename
    failures = []
    for url in remote.urls:
        try:
            return download_file(url, dest, remote.md5, progress=progress)
        except ChecksumError:
            raise
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
    raise DownloadError(
        f"could not download {remote.filename} for {spec.name}:\n  "
        + "\n  ".join(failures)
        + "\n"
        + _instructions(spec, list(spec.files), data_dir)
    )


def locate(
    name: str,
    split: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> list[Path]:
    """Paths of the files holding the official ``split`` of a built-in dataset.

    For IDX datasets: ``[images, labels]``; for CIFAR: ``[archive or extracted folder]``.
    Downloads what is missing when ``download`` is true, else raises
    :class:`MissingDataError` saying what to put where.
    """
    spec = _spec(name)
    spec.members(split)  # validates split
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    needed = _needed_files(spec, split)
    found: dict[str, Path | None] = {f.filename: find_file(spec, f.filename, root) for f in needed}
    if spec.format == "cifar" and None in found.values():
        extracted = _find_extracted(spec, root)
        if extracted is not None:
            return [extracted]
    missing = [f for f in needed if found[f.filename] is None]
    if missing and not download:
        raise MissingDataError(
            f"{spec.name}: {', '.join(f.filename for f in missing)} not found (looked in "
            f"{', '.join(str(d) for d in _search_dirs(spec, root))}) and download=False.\n"
            + _instructions(spec, needed, root)
        )
    for remote in missing:
        found[remote.filename] = _fetch(spec, remote, root, progress)
    if spec.format == "idx":
        return [found[m] for m in spec.members(split)]  # type: ignore[misc]
    return [found[needed[0].filename]]  # type: ignore[list-item]


def load_official_split(
    name: str,
    split: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``train`` or ``test`` split of a built-in dataset, read into memory.

    Returns uint8 images (N, C, H, W) and int64 labels (N,).
    """
    spec = _spec(name)
    paths = locate(name, split, data_dir=data_dir, download=download, progress=progress)
    if spec.format == "idx":
        images, labels = read_idx_images(paths[0]), read_idx_labels(paths[1])
        if len(images) != len(labels):
            raise DataFormatError(
                f"{spec.name} {split}: {paths[0]} holds {len(images)} images but {paths[1]} "
                f"holds {len(labels)} labels"
            )
        where = paths[1]
    else:
        images, labels = read_cifar(paths[0], spec.members(split), spec.label_bytes)
        where = paths[0]
    shape = (spec.channels, spec.image_size, spec.image_size)
    if tuple(images.shape[1:]) != shape:
        raise DataFormatError(
            f"{spec.name} {split}: images in {paths[0]} have shape {tuple(images.shape[1:])}, "
            f"expected {shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataFormatError(
            f"{spec.name} {split}: {where} has labels in [{labels.min()}, {labels.max()}], "
            f"expected 0..{spec.num_classes - 1}"
        )
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)
