"""What a remote file is: its size and version (ETag / last-modified), from fsspec."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from exaslide.errors import StorageError
from exaslide.storage.errors import redact_url, storage_error

#: fsspec protocols whose first path component is a bucket (or container)
_BUCKET_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}

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


def etag_of(info: dict) -> str | None:
    """The ETag (or the store's checksum) in an fsspec ``info`` dict of any backend."""
    return _first(info, _ETAG_KEYS)


def _first(info: dict, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = info.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def _bucket_missing(fs, path: str) -> bool:
    """True when ``path``'s bucket (or container) is known not to exist on an object
    store (one more request, made only after a "not found"); False when it exists, when
    that cannot be told, or for stores without buckets (HTTP)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    bucket = path.strip("/").split("/", 1)[0]
    if not (_BUCKET_PROTOCOLS & set(protocols)) or not bucket or bucket == path.strip("/"):
        return False
    try:
        fs.invalidate_cache(bucket)
        fs.info(bucket)
    except FileNotFoundError:
        return True
    except Exception:  # denied, unreachable...: say what the object request said
        return False
    return False


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
            if _bucket_missing(fs, path):  # adlfs and gcsfs say "not found" for both
                raise StorageError(f"{redact_url(url)}: the bucket (or container) does not "
                                   "exist") from exc
            raise StorageError(f"{redact_url(url)}: no such remote file") from exc
        raise storage_error(cause, url, "reach the file") from exc
    except Exception as exc:  # network, permissions, protocol errors of any fsspec backend
        raise storage_error(exc, url, "reach the file") from exc
    if info.get("type") == "directory":
        raise StorageError(f"{url}: is a directory; give the file itself")
    size = info.get("size")
    return RemoteInfo(url=url, size=int(size) if size is not None else None,
                      etag=etag_of(info), last_modified=_first(info, _MODIFIED_KEYS))
