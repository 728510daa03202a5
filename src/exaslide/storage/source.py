"""Byte sources for readers that fetch their own byte ranges (the tifffile backend).

Both kinds offer ``size``, ``pread(size, offset)``, ``prefetch(ranges)``, ``token`` (a
hashable identity of the file's content, for tile-cache keys), ``remote`` and ``close()``:

- :class:`LocalSource`: ``os.pread`` on a local file descriptor.
- :class:`~exaslide.storage.remote_file.RemoteFile`: byte ranges through the disk cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from exaslide.storage.remote_file import RemoteFile
from exaslide.storage.urls import is_remote, to_local


class LocalSource:
    """A local file read with ``os.pread`` (thread-safe, no shared position)."""

    remote = False

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd: int | None = os.open(self.path, os.O_RDONLY)
        stat = os.fstat(self._fd)
        self.size = stat.st_size
        self.token = ("file", os.path.realpath(self.path), stat.st_size, stat.st_mtime_ns)

    def pread(self, size: int, offset: int) -> bytes:
        """``size`` bytes at ``offset`` (fewer at the end of the file)."""
        if self._fd is None:
            raise ValueError(f"{self.path}: read of a closed file")
        return os.pread(self._fd, size, offset)

    def prefetch(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Nothing to do for a local file."""

    def close(self) -> None:
        """Close the descriptor. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_source(path_or_url: str | os.PathLike, **kwargs) -> LocalSource | RemoteFile:
    """A :class:`LocalSource` for a path or ``file://`` URL, a :class:`RemoteFile` for a
    remote URL (``kwargs`` go to :class:`RemoteFile`)."""
    if is_remote(path_or_url):
        return RemoteFile(str(path_or_url), **kwargs)
    return LocalSource(to_local(path_or_url))
