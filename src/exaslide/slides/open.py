"""``open_slide``: pick a backend for a file, falling back to the next one on failure.

Local paths and ``file://`` URLs are opened in place. Remote URLs (``http(s)://``,
``s3://``, ``gs://``... through fsspec): a TIFF-family file is read by the tifffile
backend over byte ranges (only the blocks that hold the tiles read are fetched, through
the disk cache); anything else, a TIFF that tifffile cannot open, a TIFF vendor format
whose pyramid OpenSlide assembles differently (NDPI, SCN, Philips, BIF) or a forced
``openslide`` / ``image`` backend is first copied whole into the disk cache. Either way
``slide.path`` is the URL.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from exaslide.errors import SlideOpenError
from exaslide.slides.base import Slide
from exaslide.slides.tile_cache import DEFAULT, TileCache, resolve_tile_cache

logger = logging.getLogger(__name__)

#: Backends in the order they are tried. OpenSlide is the reference reader for every vendor
#: format; tifffile covers what OpenSlide refuses or misreads (OME-TIFF, QPTIFF, flat,
#: multi-channel and 16-bit TIFF) and goes first for those; plain images (PNG, JPEG...)
#: are one-level slides.
BACKEND_NAMES = ("openslide", "tifffile", "image")


def backend_class(name: str) -> type[Slide]:
    """The :class:`Slide` subclass for a backend name."""
    if name == "openslide":
        from exaslide.slides.openslide_backend import OpenSlideSlide

        return OpenSlideSlide
    if name == "tifffile":
        from exaslide.slides.tifffile_backend import TiffFileSlide

        return TiffFileSlide
    if name == "image":
        from exaslide.slides.image_backend import ImageSlide

        return ImageSlide
    raise SlideOpenError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


def local_path(path_or_url: str | os.PathLike) -> str:
    """A local filesystem path for a path or ``file://`` URL.

    Raises:
        SlideOpenError: for remote URLs (see :func:`open_slide` for those) or when the file
            does not exist.
    """
    from exaslide.storage.urls import is_remote, to_local

    text = os.fspath(path_or_url)
    if is_remote(text):  # exaslide.storage's rules: Windows drives and "ab:c" names are local
        scheme = text.split("://", 1)[0]
        raise SlideOpenError(f"{text}: a remote URL ({scheme}://) has no local path; "
                             "open it with open_slide or exaslide.storage.local_copy")
    text = to_local(text)
    if not Path(text).exists():
        raise SlideOpenError(f"{text}: no such file")
    if Path(text).is_dir():
        raise SlideOpenError(f"{text}: is a directory; give the slide file itself")
    return text


def _check_tiff_structure(path: str, source=None) -> None:
    """Refuse a TIFF whose directory chain is damaged (usually a truncated copy) or, for a
    local file, whose directories claim an implausible layout (a forged or damaged header:
    see :func:`~exaslide.slides.tifffile_backend.tiff_layout_problem`), before any backend
    sizes a buffer from it. ``source``: the file's byte source when it is remote (``path``
    is then its URL; the tifffile backend checks the levels it reads itself)."""
    from exaslide.errors import StorageError
    from exaslide.slides.tifffile_backend import is_tiff, tiff_structure_problem

    target = path if source is None else source
    if not is_tiff(target):
        return
    try:
        problem = tiff_structure_problem(target)
    except StorageError:
        raise
    except OSError as exc:
        raise SlideOpenError(f"{path}: cannot read: {exc}") from exc
    except Exception as exc:  # struct errors on garbage headers
        problem = f"unreadable TIFF header ({exc})"
    if problem:
        raise SlideOpenError(f"{path}: truncated or damaged TIFF: {problem}")
    if source is None:
        _check_tiff_layout(path)


def _check_tiff_layout(path: str) -> None:
    """Raise :class:`SlideOpenError` for the first layout problem of a local TIFF."""
    from exaslide.slides.tifffile_backend import tiff_layout_problem

    try:
        problem = tiff_layout_problem(path)
    except OSError as exc:
        raise SlideOpenError(f"{path}: cannot read: {exc}") from exc
    except Exception as exc:  # tifffile refuses the file: the backends will say why
        logger.debug("%s: layout not checked: %s", path, exc)
        return
    if problem:
        raise SlideOpenError(f"{path}: {problem}")


def _auto_order(path: str) -> list[str]:
    from exaslide.slides.tifffile_backend import is_tiff, prefers_tifffile

    if not is_tiff(path):
        return list(BACKEND_NAMES)
    # Pillow reads only a TIFF's first page: never a silent fallback for a TIFF that
    # OpenSlide and tifffile both refuse (``backend="image"`` still forces it)
    if prefers_tifffile(path):
        return ["tifffile", "openslide"]
    return ["openslide", "tifffile"]


def open_slide(path_or_url: str | os.PathLike, backend: str | None = None,
               tile_cache: TileCache | int | None = DEFAULT) -> Slide:
    """Open a whole-slide image with the first backend that can read it.

    Args:
        path_or_url: a local path, a ``file://`` URL or a remote fsspec URL
            (``https://``, ``s3://``, ``gs://``, ``az://``...; see ``docs/storage.md``).
        backend: force one backend (``"openslide"``, ``"tifffile"`` or ``"image"``);
            by default each backend whose format check accepts the file is tried in
            :data:`BACKEND_NAMES` order (tifffile first for OME-TIFF, QPTIFF, SubIFD
            pyramids and non-8-bit or multi-channel TIFF) and the first that opens it wins.
        tile_cache: decoded-tile cache of the handle: a :class:`TileCache` (shared with
            other handles), a number of bytes (a private cache of that size) or ``None`` /
            ``0`` (none). Default: a private cache of
            :data:`~exaslide.slides.tile_cache.DEFAULT_TILE_CACHE_BYTES` (64 MiB). OpenSlide
            handles give the same budget to OpenSlide's own cache.

    Returns:
        An open :class:`Slide`; use it as a context manager to close it.

    Raises:
        SlideOpenError: no backend could open the file. The message names the file and
            what each backend reported.
        StorageError: a remote file cannot be reached, or is truncated.
    """
    from exaslide.storage.urls import is_remote

    cache = resolve_tile_cache(tile_cache)
    if backend is not None:
        backend_class(backend)  # an unknown name fails before any download
    if is_remote(path_or_url):
        return _open_remote(str(path_or_url), backend, cache)
    path = local_path(path_or_url)
    _check_tiff_structure(path)
    return _open_local(path, backend, cache)


def _open_local(path: str, backend: str | None, cache: TileCache | None) -> Slide:
    names = [backend] if backend else _auto_order(path)
    failures = []
    for name in names:
        cls = backend_class(name)
        if not backend and not cls.can_open(path):
            continue
        try:
            return cls(path, tile_cache=cache) if cls.accepts_tile_cache else cls(path)
        except SlideOpenError as exc:
            logger.debug("backend %s failed on %s: %s", name, path, exc)
            failures.append(f"{name}: {str(exc).removeprefix(path + ': ')}")
    if not failures:
        raise SlideOpenError(f"{path}: not a recognised slide or image format")
    raise SlideOpenError(f"{path}: cannot open as a slide ({'; '.join(failures)})")


def _open_remote(url: str, backend: str | None, cache: TileCache | None) -> Slide:
    """Byte ranges through the tifffile backend when possible, else a whole-file copy."""
    from exaslide.slides.tifffile_backend import TiffFileSlide, is_tiff, is_vendor_tiff
    from exaslide.storage import RemoteFile, local_copy

    remote = RemoteFile(url)
    try:
        if is_tiff(remote):
            _check_tiff_structure(url, remote)
            if backend == "tifffile" or (backend is None and not is_vendor_tiff(remote)):
                try:
                    slide, remote = TiffFileSlide(url, source=remote, tile_cache=cache), None
                    return slide
                except SlideOpenError as exc:
                    if backend:
                        raise
                    logger.info("%s: tifffile cannot read it by byte ranges (%s); fetching "
                                "the whole file", url, exc)
    finally:
        if remote is not None:
            remote.close()
    local = str(local_copy(url))
    try:
        _check_tiff_structure(local)
        slide = _open_local(local, backend, cache)
    except SlideOpenError as exc:
        raise SlideOpenError(str(exc).replace(local, url)) from exc
    slide.path = url
    return slide
