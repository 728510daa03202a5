"""What a remote file is: its size and version (ETag / last-modified), from fsspec."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from exaslide.errors import StorageError

# The keys fsspec implementations use for the same facts (HTTP, s3fs, gcsfs, adlfs, ...).
_ETAG_KEYS = ("ETag", "etag", "e_tag", "md5Hash", "Content-MD5", "checksum")
_MODIFIED_KEYS = ("Last-Modified", "LastModified", "last_modified", "updated", "mtime",
                  "modified", "time_modified")


@dataclass(frozen=True)
class RemoteInfo:
    """The identity of one version of a remote file.

    Attributes:
        url: the URL as given.
        size: size in bytes, or ``None`` when the server does not say.
        etag: the ETag (or the store's checksum), or ``None``.
        last_modified: the modification time as the store reports it (text), or ``None``.
    """

    url: str
    size: int | None
    etag: str | None = None
    last_modified: str | None = None

    @property
    def version(self) -> str:
        """A short token that changes whenever size, ETag or last-modified change; it names
        the cache folder of this version, so blocks of two versions never mix."""
        text = f"{self.size}|{self.etag}|{self.last_modified}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored as the cache entry's ``meta.json``)."""
        return {"url": self.url, "size": self.size, "etag": self.etag,
                "last_modified": self.last_modified, "version": self.version}


def _first(info: dict, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = info.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def remote_info(url: str, fs=None, path: str | None = None, **storage_options) -> RemoteInfo:
    """Ask the store for a file's size, ETag and modification time (one HEAD request for
    HTTP). ``fs`` and ``path`` may be given when the caller already resolved the URL.

    Raises:
        StorageError: the file does not exist or the store cannot be reached.
    """
    from exaslide.storage.urls import filesystem

    if fs is None:
        fs, path = filesystem(url, **storage_options)
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:  # fsspec's HTTP client reports every failure so
        cause = exc.__cause__           # the real reason is the chained cause
        if cause is None or getattr(cause, "status", None) in (404, 410):
            raise StorageError(f"{url}: no such remote file") from exc
        raise StorageError(f"{url}: cannot reach the file: {type(cause).__name__}: {cause}") \
            from exc
    except Exception as exc:  # network, permissions, protocol errors of any fsspec backend
        raise StorageError(f"{url}: cannot reach the file: {type(exc).__name__}: {exc}") \
            from exc
    if info.get("type") == "directory":
        raise StorageError(f"{url}: is a directory; give the file itself")
    size = info.get("size")
    return RemoteInfo(url=url, size=int(size) if size is not None else None,
                      etag=_first(info, _ETAG_KEYS), last_modified=_first(info, _MODIFIED_KEYS))
