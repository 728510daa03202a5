"""WebDataset-compatible tar shards: ``<key>.png`` (or ``.jpg``) + ``<key>.json`` per patch.

Shards are byte-for-byte deterministic: GNU tar format (so keys may be longer than 100
characters), fixed member order, mode 0644, mtime 0, uid/gid 0, no user names. The tar
headers are written here directly (:func:`tar_member`, :func:`tar_end`), byte-identical
to what :mod:`tarfile` writes for the same members (tested), at a fraction of its cost.

- :class:`ShardWriter` writes samples into shards of at most ``max_samples`` each.
- :class:`RowShardWriter` writes one extraction chunk: shard ``k`` of a slide holds the
  samples of its plan rows ``[k * size, (k + 1) * size)``, so the shards do not depend on
  how the rows were split into chunks. A shard that lies across two chunks is written as
  parts that :func:`join_parts` concatenates.

Every file is written to a temporary name and renamed when complete, so a killed run
never leaves a truncated shard under its final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.atomic import commit, temporary_sibling

FORMATS = ("png", "jpeg")
EXTENSIONS = {"png": "png", "jpeg": "jpg"}

BLOCK = 512  #: tar block size
RECORD = 20 * BLOCK  #: tarfile pads an archive to a multiple of this
_GNU_MAGIC = b"ustar  \x00"
_MAX_SIZE = 8**11  # the largest size an 11-digit octal field holds (8 GiB)


def encode(patch: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """Encode an RGB patch as PNG (lossless, fast zlib level 1) or JPEG (``quality``,
    4:2:0, libjpeg-turbo: the same bytes as ``cv2.imencode`` of the BGR patch, tested)."""
    if fmt == "jpeg":
        import imagecodecs

        return imagecodecs.jpeg8_encode(patch, level=int(quality))
    import cv2

    if fmt != "png":
        raise ValueError(f"unknown image format {fmt!r}; choose one of {FORMATS}")
    ok, buf = cv2.imencode(".png", cv2.cvtColor(patch, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"cannot encode a {patch.shape} patch as {fmt}")
    return buf.tobytes()


_IDS, _MTIME = b"0000000\x000000000\x00", b"00000000000\x00"  # uid, gid; mtime
_TAILS = {t: t + bytes(100) + _GNU_MAGIC + bytes(32 + 32 + 8 + 8 + 155 + 12)
          for t in (b"0", b"L")}  # type flag, link name, magic, user names, devices, prefix
_TAIL_SUMS = {t: sum(tail) + sum(_IDS) + sum(_MTIME) + 8 * 32 for t, tail in _TAILS.items()}


def _header(name: bytes, size: int, mode: bytes, typeflag: bytes) -> bytes:
    """One 512-byte header block, as ``tarfile`` writes it in GNU format (the checksum
    counts its own field as spaces)."""
    name = name[:100].ljust(100, b"\0")
    size_field = b"%011o\x00" % size
    checksum = sum(name) + sum(mode) + sum(size_field) + _TAIL_SUMS[typeflag]
    return b"".join((name, mode, _IDS, size_field, _MTIME, b"%06o\x00 " % checksum,
                     _TAILS[typeflag]))


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def tar_parts(name: str, data: bytes) -> tuple[bytes, ...]:
    """The pieces of :func:`tar_member` (joined once by the caller)."""
    if len(data) >= _MAX_SIZE:
        raise ValueError(f"a tar member of {len(data)} bytes is too large (max 8 GiB)")
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100:
        payload = raw + b"\0"
        return (_header(b"././@LongLink", len(payload), b"0000000\x00", b"L"), payload,
                _padding(len(payload)), _header(raw, len(data), b"0000644\x00", b"0"),
                data, _padding(len(data)))
    return _header(raw, len(data), b"0000644\x00", b"0"), data, _padding(len(data))


def tar_member(name: str, data: bytes) -> bytes:
    """A regular file member (header, data, padding to 512 bytes): the bytes
    ``tarfile.TarFile.addfile`` writes in GNU format for a ``TarInfo`` with mode 0644,
    mtime 0, uid/gid 0 and empty user names. Names over 100 bytes get GNU's
    ``././@LongLink`` record first.

    Raises:
        ValueError: ``data`` of 8 GiB or more.
    """
    return b"".join(tar_parts(name, data))


def tar_end(size: int) -> bytes:
    """What ``tarfile`` writes on closing an archive whose members take ``size`` bytes:
    two zero blocks, then zeros up to a multiple of 10,240 bytes."""
    return bytes(2 * BLOCK + (-(size + 2 * BLOCK) % RECORD))


def sample_members(key: str, extension: str, image: bytes, meta: bytes) -> bytes:
    """One sample: ``<key>.<extension>`` then ``<key>.json``."""
    return b"".join((*tar_parts(f"{key}.{extension}", image),
                     *tar_parts(f"{key}.json", meta)))


class ShardWriter:
    """Writes samples into ``<prefix>-NNNNN.tar`` shards of at most ``max_samples`` each.

    Args:
        directory: the shard folder.
        prefix: shard name prefix (e.g. ``<slide_id>-<chunk>``).
        fmt: ``"png"`` or ``"jpeg"``.
        quality: JPEG quality.
        max_samples: samples per shard.
    """

    def __init__(self, directory: str | Path, prefix: str, fmt: str = "png",
                 quality: int = 90, max_samples: int = 1000):
        if fmt not in FORMATS:
            raise ValueError(f"unknown image format {fmt!r}; choose one of {FORMATS}")
        self.directory, self.prefix = Path(directory), prefix
        self.fmt, self.quality, self.max_samples = fmt, quality, max_samples
        self.extension = EXTENSIONS[fmt]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shards: list[str] = []
        self._file = None
        self._tmp: Path | None = None
        self._count = self._size = 0

    def add(self, key: str, patch: np.ndarray, metadata: dict[str, Any]) -> str:
        """Add one sample; returns the name of the shard that holds it."""
        if self._file is None or self._count >= self.max_samples:
            self._finish()
            self._open()
        meta = json.dumps(metadata, sort_keys=True).encode()
        data = sample_members(key, self.extension, encode(patch, self.fmt, self.quality),
                              meta)
        self._file.write(data)
        self._size += len(data)
        self._count += 1
        return self.shards[-1]

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):05d}.tar"
        self.shards.append(name)
        self._tmp = temporary_sibling(self.directory / name)
        self._file = open(self._tmp, "wb")  # noqa: SIM115
        self._count = self._size = 0

    def _finish(self) -> None:
        if self._file is None:
            return
        self._file.write(tar_end(self._size))
        self._file.close()
        commit(self._tmp, self.directory / self.shards[-1])
        self._file = self._tmp = None

    def close(self) -> list[str]:
        """Finish the last shard; returns every shard name written."""
        self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (on error)."""
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._file = self._tmp = None


def shard_name(prefix: str, number: int) -> str:
    """The name of shard ``number`` of a slide: ``<prefix>-NNNNN.tar``."""
    return f"{prefix}-{number:05d}.tar"


def part_name(prefix: str, number: int, first_row: int) -> str:
    """The part of shard ``number`` that starts at plan row ``first_row``."""
    return f"{shard_name(prefix, number)}.{first_row:010d}.part"


#: A part file's name: the shard's name, the first plan row (10 digits), ``.part``.
_PART = re.compile(r"(?P<shard>.+\.tar)\.\d{10}\.part")


def group_parts(names) -> dict[str, list[str]]:
    """The part files among ``names`` (see :func:`part_name`), grouped by the shard they
    belong to, each group sorted (in row order, as :func:`join_parts` wants them); other
    names are left out. The shard's name is the part's name without its exact
    ``.<first row>.part`` suffix, so a slide id containing ``.tar.`` is kept whole.

    Raises:
        ValueError: a name ending in ``.part`` that :func:`part_name` did not make.
    """
    parts: dict[str, list[str]] = {}
    for name in sorted(names):
        if not name.endswith(".part"):
            continue
        match = _PART.fullmatch(name)
        if match is None:
            raise ValueError(f"{name}: not a shard part (<shard>.tar.<10 digits>.part)")
        parts.setdefault(match["shard"], []).append(name)
    return parts


class RowShardWriter:
    """Writes the samples of plan rows ``[start, stop)`` of a slide with ``total`` rows.

    Shard ``k`` (``<prefix>-<k:05d>.tar``) holds the samples kept among plan rows
    ``[k * shard_size, (k + 1) * shard_size)``, in row order; a shard with no sample is
    not written. A shard whose rows all lie in ``[start, stop)`` is written whole; one
    that the range covers only in part is written as a part
    (``<shard>.<first row>.part``, no end-of-archive blocks) for :func:`join_parts`.
    Files are written under temporary names and renamed when complete, and flushed to
    disk by a background thread while the next ones are encoded (the job engine's flush
    when it moves them into place then has nothing left to wait for); :meth:`close`
    waits for those flushes and raises their errors.
    """

    def __init__(self, directory: str | Path, prefix: str, shard_size: int, start: int,
                 stop: int, total: int):
        self.directory, self.prefix = Path(directory), prefix
        self.shard_size, self.start, self.stop, self.total = shard_size, start, stop, total
        self.directory.mkdir(parents=True, exist_ok=True)
        self.written: list[str] = []
        self._file = None
        self._tmp: Path | None = None
        self._name = ""
        self._shard = -1
        self._whole = False
        self._size = 0
        self._pool = None
        self._flushes: list = []

    def add(self, row: int, data: bytes) -> str:
        """Append the members of plan row ``row`` (rows in increasing order); returns the
        name of the shard that holds them."""
        shard = row // self.shard_size
        if shard != self._shard:
            self._finish()
            self._open(shard, row)
        self._file.write(data)
        self._size += len(data)
        return shard_name(self.prefix, shard)

    def _open(self, shard: int, row: int) -> None:
        first = shard * self.shard_size
        last = min(first + self.shard_size, self.total)
        self._whole = self.start <= first and last <= self.stop
        self._name = shard_name(self.prefix, shard) if self._whole else \
            part_name(self.prefix, shard, max(first, self.start))
        self._tmp = temporary_sibling(self.directory / self._name)
        self._file = open(self._tmp, "wb", buffering=1 << 20)  # noqa: SIM115
        self._shard, self._size = shard, 0

    def _finish(self) -> None:
        if self._file is None:
            return
        if self._whole:
            self._file.write(tar_end(self._size))
        self._file.close()
        target = self.directory / self._name
        os.replace(self._tmp, target)
        self.written.append(self._name)
        self._file = self._tmp = None
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="exaslide-flush")
        self._flushes.append(self._pool.submit(_flush_file, target))

    def _wait(self) -> None:
        """Wait for the background flushes; raise the first error."""
        flushes, self._flushes = self._flushes, []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for flush in flushes:
            flush.result()

    def close(self) -> list[str]:
        """Finish the last file and wait until all are on disk; returns the names
        written (shards and parts)."""
        self._finish()
        self._wait()
        return self.written

    def abort(self) -> None:
        """Delete the file being written and those already written (on error)."""
        with contextlib.suppress(OSError):
            self._wait()
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._file = self._tmp = None
        for name in self.written:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()


def _flush_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def join_parts(directory: str | Path, name: str, parts: list[str]) -> Path:
    """Concatenate a shard's parts (in row order) and end the archive: the bytes of the
    shard written whole. The parts are removed; returns the shard's path."""
    directory = Path(directory)
    first = directory / parts[0]
    with open(first, "ab") as out:
        for part in parts[1:]:
            with open(directory / part, "rb") as src:
                _append(src, out)
        out.write(tar_end(out.tell()))
    target = directory / name
    os.replace(first, target)
    for part in parts[1:]:
        (directory / part).unlink()
    return target


def _append(src, out) -> None:
    """Copy the file ``src`` to the end of ``out`` (in the kernel where it can)."""
    out.flush()
    size = os.fstat(src.fileno()).st_size
    copied = 0
    if hasattr(os, "copy_file_range"):
        try:
            while copied < size:
                n = os.copy_file_range(src.fileno(), out.fileno(), size - copied)
                if n == 0:
                    break
                copied += n
        except OSError:  # e.g. across file systems on old kernels: copy below
            pass
    src.seek(copied)
    out.seek(0, os.SEEK_END)
    shutil.copyfileobj(src, out, 1 << 20)
