"""Atomic file writes: write to a temporary name in the same folder, then rename.

A killed process leaves either the old file or the new one, never half of one; the
temporary file is removed on error (a SIGKILL can leave a ``.<stem>.<random>.tmp<suffix>``
file behind, which batch jobs delete before they redo that output).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(target: Path) -> Path:
    """A new, empty file beside ``target`` with a unique hidden name and normal permissions.

    The name keeps the suffix of ``target`` so that writers which pick a format from the
    suffix (Pillow, tifffile) still work. The file is created with mode 0666 minus the
    umask, as ``open()`` would.
    """
    while True:
        tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def commit(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Flush a finished temporary file to disk and rename it to ``target`` (the last step
    of every atomic write, also for writers that stream into a temporary themselves)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; if the block succeeds, flush it to disk and
    rename it to ``path``; otherwise delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    try:
        yield tmp
        commit(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
