"""Downloading weights into the torch hub cache: resumable, verified, atomic.

A file goes to ``torch.hub.get_dir()/checkpoints/<filename>`` (``$TORCH_HOME/hub`` when set,
the place torchvision's own downloads go, so each side reuses the other's files). Bytes are
streamed into ``<filename>.partial``; a later call continues it with an HTTP ``Range``
request. Only a file whose sha256 matches is renamed into place, so the cache never holds a
truncated or corrupt file under the final name.

This is urllib rather than ``torch.hub.download_url_to_file``: that one cannot resume (it
writes to a fresh temporary file each time), and weights run to hundreds of megabytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from .weights import WeightsError

__all__ = ["DOWNLOAD_TIMEOUT", "cache_dir", "cache_path", "download", "sha256_file"]

#: Seconds to wait for the server to connect or send the next bytes.
DOWNLOAD_TIMEOUT = 30.0
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")

try:  # POSIX: downloads of the same file by several processes (DDP ranks) take turns
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, each process downloads
    fcntl = None  # type: ignore[assignment]


class _Interrupted(Exception):
    """The connection ended before the announced length arrived; the partial file stays."""


def cache_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where downloaded weights live."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(filename: str) -> Path:
    """The cache path of a weights file (it may not exist yet)."""
    return cache_dir() / filename


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verify_cached(path: Path, sha256: str | None) -> Path:
    """Check a cached file against the known hash, else the one recorded at download."""
    record = _record_path(path)
    expected = sha256 or (record.read_text().strip() if record.exists() else None)
    if expected is None:
        warnings.warn(
            f"{path}: no checksum is known for this file (it was not downloaded here); "
            "using it unverified",
            stacklevel=3,
        )
        return path
    actual = sha256_file(path)
    if not actual.startswith(expected.lower()):
        raise WeightsError(
            f"the cached file {path} is corrupt or another file: sha256 {actual}, expected "
            f"{expected}. Delete it to download it again"
        )
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock``, removed again by its holder."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock = path.with_name(path.name + ".lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        # The previous holder removed the lock file while this process waited: lock anew.
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of every redirect: the Hugging Face hub announces a file's sha256
    on the redirect to its CDN, not on the CDN's response."""

    def __init__(self) -> None:
        self.headers: list[http.client.HTTPMessage] = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _announced_sha256(headers: list[http.client.HTTPMessage]) -> str | None:
    """The sha256 a server announces: ``X-Linked-Etag`` (the LFS object id on the Hugging
    Face hub), else an ``ETag`` that is a sha256 (64 hex digits; a git blob's is 40)."""
    for key in ("X-Linked-Etag", "ETag"):
        for h in headers:
            value = (h.get(key) or "").strip().removeprefix("W/").strip('"').lower()
            if _SHA256.fullmatch(value):
                return value
    return None


def _one_line(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return " ".join(str(reason).split()) or type(error).__name__


def _transfer(url: str, partial: Path, *, progress: bool, timeout: float) -> str | None:
    """Fetch ``url`` into ``partial``, continuing what is there. Returns the announced sha256.

    Connection failures propagate as ``urllib.error.URLError``/``OSError``; a transfer cut
    short raises :class:`_Interrupted`.
    """
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": "resnetlab"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    redirects = _RecordRedirects()
    opener = urllib.request.build_opener(redirects)
    try:
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the partial file is not a prefix of this one
            e.close()
            partial.unlink()
            return _transfer(url, partial, progress=progress, timeout=timeout)
        raise
    with response:
        if offset and response.status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match[1]) != offset:
                response.close()
                partial.unlink()
                return _transfer(url, partial, progress=progress, timeout=timeout)
        elif offset:  # 200: the server ignored the Range header and sends it all again
            offset = 0
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else None
        received = offset
        bar = tqdm(total=expected, initial=offset, unit="B", unit_scale=True,
                   unit_divisor=1024, desc=partial.name.removesuffix(".partial"),
                   disable=not progress, leave=False)  # fmt: skip
        with bar, open(partial, "ab" if offset else "wb") as out:
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise _Interrupted(f"{received} of {expected or '?'} bytes: {_one_line(e)}") from e
            finally:
                out.flush()
                os.fsync(out.fileno())
        # http.client returns b"" when the connection closes early: compare with the length.
        if expected is not None and received < expected:
            raise _Interrupted(f"{received} of {expected} bytes: the connection closed")
        return _announced_sha256([*redirects.headers, response.headers])


def download(
    url: str,
    filename: str,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT,
    retries: int = 2,
) -> Path:
    """The verified cache file of ``url``: ``cache_dir()/filename``, downloaded if missing.

    ``sha256`` is the hex digest or a prefix of it (torchvision's 8-digit file name rule).
    Without it the file is checked against the sha256 the server announces, which is then
    recorded in ``<filename>.sha256`` so that the cached file can be checked offline later;
    a server that announces none is an error. A cached file is verified and reused without
    any network access. A transfer cut short is continued up to ``retries`` times, and a
    later call continues it too. Failures raise :class:`WeightsError`: a checksum mismatch
    deletes the download and names both hashes; no connection names the URL and the path
    to put the file at.
    """
    dest = cache_path(filename)
    if dest.exists():
        return _verify_cached(dest, sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with _locked(dest):
        if dest.exists():  # another process finished it while this one waited
            return _verify_cached(dest, sha256)
        for attempt in range(retries + 1):
            try:
                announced = _transfer(url, partial, progress=progress, timeout=timeout)
                break
            except _Interrupted as e:
                if attempt == retries:
                    raise WeightsError(
                        f"the download of {url} was interrupted ({e}); run again to continue "
                        f"it from {partial}"
                    ) from None
            except urllib.error.HTTPError as e:
                raise WeightsError(
                    f"cannot download {url}: HTTP {e.code} {e.reason}; to use these weights "
                    f"offline, put the file at {dest}"
                ) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                raise WeightsError(
                    f"cannot download {url} ({_one_line(e)}); to use these weights offline, "
                    f"put the file at {dest}"
                ) from None
        expected = sha256 or announced
        if expected is None:
            partial.unlink()
            raise WeightsError(
                f"cannot verify {url}: no checksum is known and the server announced no "
                f"sha256; the download was deleted (put a file you trust at {dest})"
            )
        actual = sha256_file(partial)
        if not actual.startswith(expected.lower()):
            partial.unlink()
            raise WeightsError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}; the "
                "download was deleted (run again to retry)"
            )
        if sha256 is None:
            _record_path(dest).write_text(actual + "\n")
        os.replace(partial, dest)
    return dest
