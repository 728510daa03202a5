"""Whole files and file objects for any path or URL: :func:`open_file`, :func:`local_copy`,
:func:`remote_fingerprint`."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, Any

from exaslide.errors import StorageError
from exaslide.storage.disk_cache import DiskCache, default_cache
from exaslide.storage.info import remote_info
from exaslide.storage.remote_file import RemoteFile, stream_whole_file
from exaslide.storage.urls import filesystem, is_remote, to_local
from exaslide.storage.whole_copy import Checksum, ChecksumWriter


def open_file(path_or_url: str | os.PathLike, mode: str = "rb", *,
              cache: DiskCache | None = None, storage_options: dict | None = None) -> IO:
    """Open a local path (any ``mode``) or a remote URL (``"rb"``, or ``"r"`` for UTF-8
    text) as a seekable file object; remote reads go through the block cache.

    Raises:
        StorageError: a remote URL opened for writing, or unreachable.
        OSError: a local file that cannot be opened.
    """
    if not is_remote(path_or_url):
        encoding = None if "b" in mode else "utf-8"
        return open(to_local(path_or_url), mode, encoding=encoding)
    if mode not in ("rb", "r", "rt"):
        raise StorageError(f"{path_or_url}: remote files are read-only; open them with "
                           f"mode 'rb' or 'r', not {mode!r}")
    remote = RemoteFile(str(path_or_url), cache=cache, storage_options=storage_options)
    if mode == "rb":
        return remote
    return io.TextIOWrapper(io.BufferedReader(remote), encoding="utf-8")


def local_copy(path_or_url: str | os.PathLike, *, cache: DiskCache | None = None,
               storage_options: dict | None = None) -> Path:
    """A local path holding the file: local paths (and ``file://`` URLs) as they are; a
    remote file is copied whole into the disk cache (blocks already cached are reused) and
    the cached copy is returned while the remote file is unchanged and the copy matches
    the size and CRC32 recorded when it was written (a damaged copy is fetched again).

    Raises:
        StorageError: unreachable, truncated, or larger than the cache limit.
    """
    if not is_remote(path_or_url):
        return Path(to_local(path_or_url))
    url, options = str(path_or_url), dict(storage_options or {})
    cache = cache if cache is not None else default_cache()
    fs, path = filesystem(url, **options)
    info = remote_info(url, fs, path)
    cache.validate(info)
    existing = cache.whole_file(info)
    if existing is not None:
        return existing
    if info.size is None:  # no size: stream it (no byte ranges, no truncation check)
        return cache.store_whole_file(info, lambda tmp: stream_whole_file(fs, path, url, tmp))

    def fill(tmp: Path) -> Checksum:
        with RemoteFile(url, cache=cache, info=info, storage_options=options) as remote, \
                open(tmp, "wb") as out:
            writer = ChecksumWriter(out)
            remote.copy_to(writer)
        return writer.checksum

    return cache.store_whole_file(info, fill)


def remote_fingerprint(url: str, **storage_options) -> dict[str, Any]:
    """``{"path", "size", "etag", "last_modified"}`` of a remote file (no data is read):
    what resumable jobs compare to notice a changed input."""
    info = remote_info(url, **storage_options)
    return {"path": url, "size": info.size, "etag": info.etag,
            "last_modified": info.last_modified}
