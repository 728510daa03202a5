"""What the disk cache owns: its marker file, the layout of its entries, and the walking
and deleting that never leave that layout.

The cache folder holds a marker file, ``CACHEDIR.TAG`` (the `Cache Directory Tagging
Specification <https://bford.info/cachedir/>`_, so backup tools skip the folder, with a
line naming exaslide), and entries::

    <root>/<32 hex>/meta.json
    <root>/<32 hex>/<16 hex>/whole.json | whole.lock
    <root>/<32 hex>/<16 hex>/blocks-<digits>/<digits>
    <root>/<32 hex>/<16 hex>/file/<name>
    + temporaries (``.<stem>.<8 hex>.tmp<suffix>``) in each of these folders

Everything else in the folder is not the cache's: it is never listed, counted, evicted or
deleted, and neither is a symbolic link anywhere in it (links are not followed either).
Folders are removed only with ``rmdir`` once empty, so a folder holding anything the cache
did not write stays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from exaslide.errors import StorageError

logger = logging.getLogger(__name__)

MARKER_NAME = "CACHEDIR.TAG"
MARKER_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
MARKER_TEXT = (f"{MARKER_SIGNATURE}\n"
               "# This file marks the disk cache of remote files of exaslide (layout 1).\n"
               "# exaslide deletes only the files of its own layout here (see its\n"
               "# docs/storage.md); backup tools may skip this folder.\n")
META_NAME = "meta.json"
RECORD_NAME = "whole.json"
LOCK_NAME = "whole.lock"
COPY_FOLDER = "file"

_ENTRY = re.compile(r"[0-9a-f]{32}")
_VERSION = re.compile(r"[0-9a-f]{16}")
_BLOCKS = re.compile(r"blocks-[0-9]+")
_BLOCK = re.compile(r"[0-9]+")
TEMP = re.compile(r"\..*\.[0-9a-f]{8}\.tmp")
_MARKER_TEMP = re.compile(r"\.CACHEDIR\.[0-9a-f]{8}\.tmp\.TAG")

#: The kinds of files of the layout (what :func:`walk` yields).
DATA_KINDS = ("block", "copy")


def _folder_level(level: str, name: str) -> str | None:
    """The level of a sub-folder ``name`` of a ``level`` folder, or None (not the cache's)."""
    if level == "root":
        return "entry" if _ENTRY.fullmatch(name) else None
    if level == "entry":
        return "version" if _VERSION.fullmatch(name) else None
    if level == "version":
        if _BLOCKS.fullmatch(name):
            return "blocks"
        return "file" if name == COPY_FOLDER else None
    return None


def _file_kind(level: str, name: str) -> str | None:
    """The kind of a file ``name`` in a ``level`` folder, or None (not the cache's)."""
    if level == "root":
        if name == MARKER_NAME:
            return "marker"
        return "temp" if _MARKER_TEMP.fullmatch(name) else None
    if TEMP.match(name):
        return "temp"
    if level == "entry":
        return "meta" if name == META_NAME else None
    if level == "version":
        return {RECORD_NAME: "record", LOCK_NAME: "lock"}.get(name)
    if level == "blocks":
        return "block" if _BLOCK.fullmatch(name) else None
    return "copy" if level == "file" else None


def _scan(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as found:
            return list(found)
    except OSError:
        return []


def walk(folder: Path, level: str = "root",
         foreign: list[Path] | None = None) -> Iterator[tuple[Path, str, os.stat_result]]:
    """``(path, kind, lstat)`` of every regular file of the layout under ``folder`` (a
    folder of the given ``level``: ``root``, ``entry``, ``version``, ``blocks``, ``file``).
    Links are never followed nor yielded; what is not the cache's is appended to
    ``foreign`` when given (its folders are not entered)."""
    for item in _scan(folder):
        path = Path(item.path)
        try:
            info = item.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and (sub := _folder_level(level, item.name)):
            yield from walk(path, sub, foreign)
        elif stat.S_ISREG(info.st_mode) and (kind := _file_kind(level, item.name)):
            yield path, kind, info
        elif foreign is not None:
            foreign.append(path)


def folders(folder: Path, level: str) -> list[tuple[Path, str]]:
    """``(path, level)`` of the real (not linked) sub-folders of the layout in ``folder``."""
    found = []
    for item in _scan(folder):
        sub = _folder_level(level, item.name)
        if sub and item.is_dir(follow_symlinks=False):
            found.append((Path(item.path), sub))
    return found


def remove_empty_folders(folder: Path, level: str) -> None:
    """``rmdir`` the layout's folders under ``folder`` (``folder`` included) that are
    empty, deepest first; a folder holding anything else stays."""
    for sub, sub_level in folders(folder, level):
        remove_empty_folders(sub, sub_level)
    with contextlib.suppress(OSError):
        os.rmdir(folder)


def make_folders(root: Path, folder: Path) -> None:
    """Create ``folder`` (under ``root``, which exists) and the folders between; one that
    exists must be a real folder: a link or a file there is an error, never followed.

    Raises:
        StorageError: a link or a file stands where the cache needs a folder.
    """
    current = root
    for part in folder.relative_to(root).parts:
        current = current / part
        try:
            os.mkdir(current)
            continue
        except FileExistsError:
            pass
        info = os.lstat(current)
        if not stat.S_ISDIR(info.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "a file"
            raise StorageError(f"{current}: the disk cache needs a folder here and found "
                               f"{what}, which it neither follows nor deletes; remove it")


def real_folders(root: Path, path: Path) -> bool:
    """True when every folder between ``root`` and ``path`` (its parent included) is a
    real folder, not a link: ``path`` can then be read or deleted without following one."""
    current = root
    for part in path.parent.relative_to(root).parts:
        current = current / part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return False
        except OSError:
            return False
    return True


def has_marker(root: Path) -> bool:
    """True when ``root`` holds exaslide's ``CACHEDIR.TAG`` (a regular file)."""
    path = root / MARKER_NAME
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    return head.startswith(MARKER_SIGNATURE.encode()) and b"exaslide" in head


def write_marker(root: Path) -> None:
    """Write the marker file (atomically)."""
    from exaslide.atomic import write_text

    write_text(root / MARKER_NAME, MARKER_TEXT)


def claim(root: Path, create: bool) -> bool:
    """Make sure ``root`` is the cache's own folder before it is used: True when it is,
    False when it does not exist or is empty and ``create`` is False (nothing to list).

    A missing folder is created (with ``create``), an empty one is marked; a folder with
    the marker is the cache's. An unmarked folder written by an earlier exaslide (every
    file and folder in it matching the layout) is adopted: marked, with a log line.

    Raises:
        StorageError: ``root`` is a file, or a non-empty folder that is not a cache.
    """
    try:
        info = os.stat(root)  # the root itself may be a link: the user's choice
    except FileNotFoundError:
        if not create:
            return False
        root.mkdir(parents=True, exist_ok=True)
        write_marker(root)
        return True
    if not stat.S_ISDIR(info.st_mode):
        raise StorageError(f"{root}: the disk cache folder is a file; pick an empty or new "
                           "folder for the cache (EXASLIDE_CACHE_DIR, or --dir)")
    if has_marker(root):
        return True
    foreign: list[Path] = []
    found = bool(list(walk(root, "root", foreign))) or bool(folders(root, "root"))
    if foreign:
        example = os.path.relpath(foreign[0], root)
        raise StorageError(
            f"{root}: not an exaslide disk cache (no {MARKER_NAME} file) and not empty (it "
            f"holds {example!r}); the cache deletes what it stores, so pick an empty or new "
            "folder for it (EXASLIDE_CACHE_DIR, or --dir)")
    if not found and not create:
        return False
    if found:
        logger.info("%s: adopting the disk cache of an earlier exaslide (no %s file)",
                    root, MARKER_NAME)
    try:
        write_marker(root)
    except OSError as exc:  # a read-only cache can still be read
        logger.warning("cannot mark the disk cache %s: %s", root, exc)
    return True
