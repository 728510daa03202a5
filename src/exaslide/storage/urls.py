"""Local paths versus fsspec URLs.

A *remote* location is any URL whose scheme is longer than one letter and is not
``file`` (``http://``, ``https://``, ``s3://``, ``gs://``, ``az://``, ``abfs://``...).
Local paths and ``file://`` URLs are read directly; remote ones go through fsspec and the
disk cache. One-letter schemes are Windows drives (``C:\\slides``), hence local.
"""

from __future__ import annotations

import os
import posixpath
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit


def _scheme(text: str) -> str:
    if "://" not in text:
        return ""
    return urlparse(text).scheme


def is_remote(path_or_url: str | os.PathLike) -> bool:
    """True for an fsspec URL that is not a local file (``http(s)://``, ``s3://``...)."""
    if not isinstance(path_or_url, str):
        return False  # a PathLike is always local
    scheme = _scheme(path_or_url)
    return len(scheme) > 1 and scheme != "file"


def to_local(path_or_url: str | os.PathLike) -> str:
    """The local path of a path or ``file://`` URL (remote URLs are returned unchanged)."""
    text = os.fspath(path_or_url)
    if _scheme(text) == "file":
        return unquote(urlparse(text).path)
    return text


def url_basename(url: str) -> str:
    """The last path component of a URL, without query or fragment (``"slide.svs"``)."""
    name = posixpath.basename(unquote(urlsplit(url).path.rstrip("/")))
    return name or "file"


def join_url(base: str, relative: str) -> str:
    """``relative`` resolved against the folder of the URL ``base`` (like a relative path in
    a remote manifest); an absolute URL is returned unchanged."""
    if is_remote(relative) or _scheme(relative) == "file":
        return relative
    parts = urlsplit(base)
    folder = posixpath.dirname(parts.path)
    path = posixpath.normpath(posixpath.join(folder, relative))
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def filesystem(url: str, **storage_options):
    """``(fs, path)`` for an fsspec URL; a missing protocol package (s3fs, gcsfs, adlfs)
    raises :class:`~exaslide.errors.StorageError` with the install hint."""
    import fsspec

    from exaslide.errors import StorageError

    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as exc:
        raise StorageError(f"{url}: reading {_scheme(url)}:// URLs needs an extra package: "
                           f"{exc}") from exc
    except ValueError as exc:
        raise StorageError(f"{url}: not a URL fsspec can read: {exc}") from exc
