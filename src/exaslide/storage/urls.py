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


# Query parameters that sign a URL rather than name the file: they change at every
# presigning, so they are left out of the disk cache's key (see :func:`cache_key`).
_SIGNATURE_PREFIXES = ("x-amz-", "x-goog-")  # S3 / GCS V4 presigned URLs
# Groups removed only when their signature parameter is present, since these short names
# may mean something else on other servers: S3 V2, GCS V2 and CloudFront (``Signature``);
# Azure shared access signatures (``sig``).
_SIGNATURE_GROUPS = {
    "signature": {"signature", "expires", "awsaccesskeyid", "googleaccessid", "key-pair-id",
                  "policy", "x-amz-security-token"},
    "sig": {"sig", "sv", "ss", "srt", "sp", "se", "st", "spr", "sip", "si", "sr", "sdd",
            "skoid", "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid", "ses",
            "rscc", "rscd", "rsce", "rscl", "rsct"},
}


def cache_key(url: str) -> str:
    """The URL that names a remote file in the disk cache: ``url`` without the query
    parameters of a presigned URL (S3 and GCS ``X-Amz-*`` / ``X-Goog-*``; ``Signature``
    with ``Expires``, ``AWSAccessKeyId``, ``GoogleAccessId``, ``Key-Pair-Id``, ``Policy``;
    an Azure SAS's ``sig`` with ``sv``, ``se``, ``sp``, ...), so that the same file
    presigned twice is cached once. Other query parameters are kept (they may select the
    file), and so are the names of a group whose signature parameter is absent."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = [pair for pair in parts.query.split("&") if pair]
    names = [unquote(pair.split("=", 1)[0]).lower() for pair in pairs]
    drop = {name for name in names if name.startswith(_SIGNATURE_PREFIXES)}
    for signature, group in _SIGNATURE_GROUPS.items():
        if signature in names:
            drop |= group
    if not drop:
        return url
    kept = [pair for pair, name in zip(pairs, names, strict=True) if name not in drop]
    return urlunsplit(parts._replace(query="&".join(kept)))


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
