"""Which files are images, and listing the files under a folder without following loops.

:data:`IMAGE_EXTENSIONS` is the one list of image extensions (torchvision's, plus GIF, whose
first frame :func:`~resnetlab.data.images.load_image` decodes); image folders, their scan and
``predict`` all use it through :func:`is_image_file`.

:func:`walk_files` lists a folder tree the way a person expects it to be read: every file
once. A folder tree can hold symbolic links that lead back up (``cat/loop -> ..``), to a
sibling, or out of the tree, and hard links or file links that reach the same file twice.
Links to folders below the top are never followed: one that leads inside the tree only
repeats files found at their own path, one that leads up makes a loop (a folder of 18 images
read as 738), one that leads out brings in files that are not part of the folder. A folder
met twice (a bind mount) is read once. Links to files are followed wherever they point,
since folders of links to one pool of images are a common way to make splits; each real
file, by ``(st_dev, st_ino)``, is listed once, under the first path that reaches it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = ["IMAGE_EXTENSIONS", "FileWalk", "file_key", "is_image_file", "walk_files"]

#: Extensions (lower case) of the files read as images: torchvision's list and GIF.
IMAGE_EXTENSIONS: tuple[str, ...] = (*IMG_EXTENSIONS, ".gif")

#: A file's identity on this machine: ``(st_dev, st_ino)``.
FileKey = tuple[int, int]


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a file whose name has an image extension and is not hidden (``.name``)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def file_key(path: str | os.PathLike) -> FileKey | None:
    """The identity of the file ``path`` leads to (through links), or None if it has none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass
class FileWalk:
    """What :func:`walk_files` found under ``root``."""

    root: str
    #: every file, each real file once, sorted by folder then name (torchvision's order)
    files: list[str] = field(default_factory=list)
    #: links to folders that were not followed
    skipped_links: list[str] = field(default_factory=list)
    #: files left out because their real file was listed already (or is in ``seen``)
    repeated: list[str] = field(default_factory=list)

    @property
    def images(self) -> list[str]:
        return [f for f in self.files if is_image_file(f)]

    @property
    def others(self) -> list[str]:
        """The files without an image extension."""
        return [f for f in self.files if not is_image_file(f)]

    def describe_others(self) -> str:
        """``3 other file(s): 2 .txt, 1 .csv`` (or ``no file``), for messages."""
        others = self.others
        if not others:
            return "no file" if not self.files else "no other file"
        kinds = Counter(Path(f).suffix.lower() or "(no extension)" for f in others)
        return f"{len(others)} other file(s): " + ", ".join(f"{n} {k}" for k, n in kinds.items())

    def notes(self) -> list[str]:
        """Warning lines about the links not followed and the files met twice."""
        out = []
        if self.skipped_links:
            out.append(
                f"{len(self.skipped_links)} link(s) to folders not followed in {self.root} "
                f"(a folder link repeats files or leads out of the folder), e.g. "
                f"{self.skipped_links[0]}; copy or move those images into the folder to use them"
            )
        if self.repeated:
            out.append(
                f"{len(self.repeated)} file(s) in {self.root} left out as another path to a file "
                f"already read (a link or hard link), e.g. {self.repeated[0]}"
            )
        return out


def walk_files(root: str | os.PathLike, *, seen: set[FileKey] | None = None) -> FileWalk:
    """Every non-hidden file under ``root``, each real file once (see the module docstring).

    ``root`` itself may be a link. ``seen``: identities already taken (e.g. by the other
    class folders of a split); the files found are added to it. Broken links are listed (so
    that reading them fails with their name); sockets, pipes and devices are not.
    """
    top = os.fspath(root)
    seen = set() if seen is None else seen
    walk = FileWalk(root=top)
    folders: list[tuple[str, list[str]]] = []
    visited: set[FileKey] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        key = file_key(folder)
        if key is None or key in visited:
            continue  # gone, or a folder met twice (a bind mount of a parent)
        visited.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue  # unreadable folder: nothing to list
        names, subfolders = [], []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    if entry.is_symlink():
                        walk.skipped_links.append(entry.path)
                    else:
                        subfolders.append(entry.path)
                elif entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
                    names.append(entry.name)
            except OSError:
                continue
        folders.append((folder, names))
        stack.extend(reversed(subfolders))
    for folder, names in sorted(folders):
        for name in names:
            path = os.path.join(folder, name)
            key = file_key(path)
            if key is not None and key in seen:
                walk.repeated.append(path)
                continue
            if key is not None:
                seen.add(key)
            walk.files.append(path)
    return walk
