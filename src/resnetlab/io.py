"""Files written whole or not at all, and files read without hanging or exhausting memory.

Every file resnetlab produces (weights and their sidecar, checkpoints, exports, configs)
goes through :func:`atomic_write`: the bytes go to a temporary file with a unique name in
the destination's folder, the file is fsynced, renamed over the destination, and the
folder is fsynced. A reader, a crash or a second writer to the same path therefore sees the
old file or a complete new one, never half of one; a crash leaves at most a stray
``.<name>.<random>.tmp`` beside it. The new file gets the permissions a plain ``open()``
would give it (``0o666`` less the umask), not ``tempfile.mkstemp``'s ``0o600``.

A failed write (a full disk, a missing permission, a read-only file system, a file where
a folder should be) raises :class:`StorageError`, a :class:`~resnetlab.errors.ResnetlabError`
and an ``OSError``, whose message names the path and what to do; the destination is left
as it was.

Reading: :func:`require_regular_file` refuses FIFOs, sockets and devices, whose reading
blocks forever or never ends, and :func:`read_json` reads a bounded JSON file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ResnetlabError

__all__ = [
    "JSONFileError",
    "MAX_JSON_BYTES",
    "StorageError",
    "atomic_file",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "blocking_file",
    "ensure_parent_dir",
    "fsync_dir",
    "read_json",
    "require_regular_file",
]

# What a created file's mode starts from before the umask, as for open(path, "w").
FILE_MODE = 0o666
# Larger JSON files are refused unread: a sidecar or a config is kilobytes.
MAX_JSON_BYTES = 64 * 2**20
# Bytes handed to one os.write call (Linux writes at most ~2 GiB per call).
_WRITE_CHUNK = 64 * 2**20
# Room kept in a file name for the temporary file's ".<name>.<random>.tmp" (NAME_MAX 255).
_MAX_TEMP_STEM = 200

# errno -> (what happened, what to do about it)
_WRITE_ADVICE = {
    errno.ENOSPC: ("no space left on device", "free some space and try again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or raise the quota, then try again"),
    errno.EACCES: ("permission denied", "fix the folder's permissions or write elsewhere"),
    errno.EPERM: ("permission denied", "fix the folder's permissions or write elsewhere"),
    errno.EROFS: ("read-only file system", "write to another folder"),
    errno.EISDIR: ("a folder is in the way", "give a file name, not a folder"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter name"),
}


class StorageError(ResnetlabError, OSError):
    """A file could not be written or read: a full disk, a permission, a FIFO, a missing file.

    ``errno``, ``strerror`` and ``filename`` are those of the ``OSError`` behind it, when
    there is one; ``str()`` is the whole message, naming the path and what to do.
    """

    def __init__(self, message: str, path: str | os.PathLike, code: int | None = None) -> None:
        if code is None:
            super().__init__(message)
        else:
            super().__init__(code, os.strerror(code), str(path))
        self.message = message
        self.path = Path(path)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.path, self.errno))


class JSONFileError(ResnetlabError, ValueError):
    """A file that should hold JSON does not (or holds far too much of it)."""


def blocking_file(path: str | os.PathLike) -> Path | None:
    """The nearest existing ancestor folder of ``path`` when it is not a folder, else None.

    ``out/model.onnx`` cannot be written when ``out`` is a regular file.
    """
    for parent in Path(path).parents:
        if os.path.lexists(parent):
            return None if parent.is_dir() else parent
    return None


def _write_error(e: OSError, path: Path, existed: bool) -> StorageError:
    code = e.errno
    if code in (errno.ENOTDIR, errno.EEXIST) and (blocker := blocking_file(path)) is not None:
        return StorageError(
            f"cannot write {path}: {blocker} is a file, not a folder; write somewhere else or "
            "move that file away",
            path,
            errno.ENOTDIR,
        )
    kept = "the previous file is unchanged" if existed else "nothing was written"
    if code in _WRITE_ADVICE:
        what, advice = _WRITE_ADVICE[code]
        return StorageError(f"{what}: {path} ({kept}); {advice}", path, code)
    reason = e.strerror or str(e)
    return StorageError(f"could not write {path}: {reason} ({kept})", path, code)


def ensure_parent_dir(path: str | os.PathLike) -> Path:
    """Create the folders above ``path``; a file in the way is a :class:`StorageError`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(e, path, existed=False) from None
    return path.parent


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in folder ``path`` durable (where the file system supports it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (and platforms) cannot fsync a folder; the rename still happened.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _create_temp(path: Path) -> tuple[int, Path]:
    # Hand-written rather than tempfile.mkstemp: mkstemp creates the file with mode 0o600,
    # and the final file keeps its temporary file's mode; created here with 0o666 the
    # kernel applies the umask exactly as it does for open(). O_EXCL with a random name
    # keeps two writers of one path off each other's temporary file.
    stem = path.name[:_MAX_TEMP_STEM]
    for _ in range(100):
        tmp = path.with_name(f".{stem}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view[:_WRITE_CHUNK])
        view = view[written:]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[tuple[int, Path]]:
    """A new temporary file beside ``path``, as ``(fd, tmp)``, renamed to ``path`` when the
    block ends without an exception and removed when it raises.

    The block writes through ``fd`` (and closes it) or through ``tmp``. Its exceptions pass
    unchanged, for writers whose content comes from elsewhere (a download's network errors
    are not storage errors); :func:`atomic_write` is the one to use for files written here.
    """
    path = Path(path)
    ensure_parent_dir(path)
    fd, tmp = _create_temp(path)
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _commit(path: Path, fill: Callable[[int, Path], None]) -> Path:
    """Create a temporary file beside ``path``; ``fill(fd, tmp)`` writes, fsyncs and closes
    it; then rename it to ``path``. On any failure the temporary file is removed."""
    ensure_parent_dir(path)
    existed = os.path.lexists(path)
    try:
        with atomic_file(path) as (fd, tmp):
            fill(fd, tmp)
    except StorageError:
        raise
    except OSError as e:
        raise _write_error(e, path, existed) from e
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Write ``path`` whole or not at all; ``write(tmp)`` writes the content to file ``tmp``.

    ``tmp`` is an empty file in the same folder (so that the final rename is atomic), which
    ``write`` may open, truncate or overwrite. Once ``write`` returns, ``tmp`` is fsynced and
    renamed to ``path``. If anything fails, ``tmp`` is removed and ``path`` is left as it
    was; an ``OSError`` becomes a :class:`StorageError` naming ``path``. Prefer
    :func:`atomic_write_bytes` where the content can be had as bytes: a library that writes
    to a path itself may report a full disk as something other than an ``OSError``.
    """

    def fill(fd: int, tmp: Path) -> None:
        os.close(fd)
        write(str(tmp))
        _fsync_path(tmp)  # ``write`` closed its own file: sync through a fresh descriptor

    return _commit(Path(path), fill)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` whole or not at all (see :func:`atomic_write`)."""

    def fill(fd: int, tmp: Path) -> None:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    return _commit(Path(path), fill)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` whole or not at all (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def require_regular_file(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """``os.stat(path)`` if ``path`` is a regular file (symlinks followed), else StorageError.

    A FIFO blocks its reader until something writes to it, and a device may never end;
    neither is ever opened. (The file is looked at before it is opened: one swapped for a
    FIFO in between is not caught, which only someone with write access to it can do.)
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StorageError(f"{what} not found: {path}", path, errno.ENOENT) from None
    except OSError as e:
        raise StorageError(f"cannot read {what} {path}: {e.strerror or e}", path, e.errno) from None
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(
            f"{path} is {_file_kind(st.st_mode)}, not a regular file: a {what} must be a "
            "regular file (reading anything else could block forever)",
            path,
        )
    return st


def read_json(
    path: str | os.PathLike, what: str = "JSON file", *, max_bytes: int = MAX_JSON_BYTES
) -> Any:
    """The JSON value in ``path``, a regular UTF-8 file of at most ``max_bytes``.

    Missing, unreadable and non-regular files raise :class:`StorageError`; a file that is
    too large, not UTF-8 or not JSON raises :class:`JSONFileError`; both name the file.
    """
    path = Path(path)
    st = require_regular_file(path, what)
    if st.st_size > max_bytes:
        raise JSONFileError(
            f"{what} {path} is {st.st_size} bytes, more than the {max_bytes} a {what} can be: "
            "is it the right file?"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise StorageError(f"cannot read {what} {path}: {e.strerror or e}", path, e.errno) from None
    if len(data) > max_bytes:  # it grew since it was looked at
        raise JSONFileError(f"{what} {path} is larger than {max_bytes} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise JSONFileError(f"{what} {path} is not UTF-8 text: {e}") from None
    except json.JSONDecodeError as e:
        raise JSONFileError(f"{what} {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise JSONFileError(f"{what} {path} nests its JSON too deeply to be read") from None
