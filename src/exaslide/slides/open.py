"""``open_slide``: pick a backend for a file, falling back to the next one on failure."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from exaslide.errors import SlideOpenError
from exaslide.slides.base import Slide

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
        SlideOpenError: for other URL schemes (remote reading is not part of this release)
            or when the file does not exist.
    """
    text = os.fspath(path_or_url)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        text = unquote(parsed.path)
    elif len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise SlideOpenError(
            f"{text}: remote URLs ({parsed.scheme}://) are not supported in this version; "
            "copy the slide to a local disk"
        )
    if not Path(text).exists():
        raise SlideOpenError(f"{text}: no such file")
    if Path(text).is_dir():
        raise SlideOpenError(f"{text}: is a directory; give the slide file itself")
    return text


def _check_tiff_structure(path: str) -> None:
    """Refuse a TIFF whose directory chain is damaged (usually a truncated copy)."""
    from exaslide.slides.tifffile_backend import is_tiff, tiff_structure_problem

    if not is_tiff(path):
        return
    try:
        problem = tiff_structure_problem(path)
    except OSError as exc:
        raise SlideOpenError(f"{path}: cannot read: {exc}") from exc
    except Exception as exc:  # struct errors on garbage headers
        problem = f"unreadable TIFF header ({exc})"
    if problem:
        raise SlideOpenError(f"{path}: truncated or damaged TIFF: {problem}")


def _auto_order(path: str) -> list[str]:
    from exaslide.slides.tifffile_backend import is_tiff, prefers_tifffile

    if not is_tiff(path):
        return list(BACKEND_NAMES)
    # Pillow reads only a TIFF's first page: never a silent fallback for a TIFF that
    # OpenSlide and tifffile both refuse (``backend="image"`` still forces it)
    if prefers_tifffile(path):
        return ["tifffile", "openslide"]
    return ["openslide", "tifffile"]


def open_slide(path_or_url: str | os.PathLike, backend: str | None = None) -> Slide:
    """Open a whole-slide image with the first backend that can read it.

    Args:
        path_or_url: a local path or ``file://`` URL.
        backend: force one backend (``"openslide"``, ``"tifffile"`` or ``"image"``);
            by default each backend whose format check accepts the file is tried in
            :data:`BACKEND_NAMES` order (tifffile first for OME-TIFF, QPTIFF, SubIFD
            pyramids and non-8-bit or multi-channel TIFF) and the first that opens it wins.

    Returns:
        An open :class:`Slide`; use it as a context manager to close it.

    Raises:
        SlideOpenError: no backend could open the file. The message names the file and
            what each backend reported.
    """
    path = local_path(path_or_url)
    _check_tiff_structure(path)
    names = [backend] if backend else _auto_order(path)
    failures = []
    for name in names:
        cls = backend_class(name)
        if not backend and not cls.can_open(path):
            continue
        try:
            return cls(path)
        except SlideOpenError as exc:
            logger.debug("backend %s failed on %s: %s", name, path, exc)
            failures.append(f"{name}: {str(exc).removeprefix(path + ': ')}")
    if not failures:
        raise SlideOpenError(f"{path}: not a recognised slide or image format")
    raise SlideOpenError(f"{path}: cannot open as a slide ({'; '.join(failures)})")
