"""Whole-file copies in the disk cache: their checksum record, its verification, and the
lock that lets one process make a copy while the others wait for it.

Each copy ``<version>/file/<name>`` has a record ``<version>/whole.json`` (``{"name",
"size", "crc32"}``), written before the copy is renamed into place; the CRC32 is computed
while the copy is written (:class:`ChecksumWriter`) or, for a fill that writes the file
itself, read back from it. A copy is checked against its record, and against the remote
size, before it is reused (see :meth:`~exaslide.storage.disk_cache.DiskCache.whole_file`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Bytes read at a time when a copy's CRC32 is computed from the file.
CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class Checksum:
    """Size and CRC32 of a whole file."""

    size: int
    crc32: int

    @property
    def hex(self) -> str:
        """The CRC32 as 8 hex digits (as stored in the record)."""
        return f"{self.crc32:08x}"


class ChecksumWriter:
    """A binary file wrapper that counts and CRC32s the bytes written through it (for a
    ``fill`` of :meth:`~exaslide.storage.disk_cache.DiskCache.store_whole_file`, which
    returns :attr:`checksum`)."""

    def __init__(self, fh):
        self._fh = fh
        self._size = 0
        self._crc = 0

    def write(self, data) -> int:
        """Write ``data`` to the file and add it to the checksum."""
        written = self._fh.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        return written

    @property
    def checksum(self) -> Checksum:
        """What was written so far."""
        return Checksum(self._size, self._crc)


def checksum_of(path: Path) -> Checksum:
    """Size and CRC32 of a file, read in :data:`CHUNK_BYTES` chunks."""
    crc, size = 0, 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return Checksum(size, crc)


def write_record(path: Path, name: str, checksum: Checksum) -> None:
    """Write a copy's record atomically."""
    from exaslide.atomic import write_text

    record = {"name": name, "size": checksum.size, "crc32": checksum.hex}
    write_text(path, json.dumps(record) + "\n")


def copy_problem(copy: Path, record_path: Path, size: int, remote_size: int | None) -> str | None:
    """Why the copy (``size`` bytes on disk) cannot be used, or None when its size and
    CRC32 match its record (and the size the store reports, when it reports one)."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("crc32"), str) \
            or record.get("name") != copy.name:
        return "no checksum was recorded for it"
    if size != record.get("size"):
        return f"{size} bytes on disk, {record.get('size')} were written"
    if remote_size is not None and size != remote_size:
        return f"{size} bytes on disk, the remote file has {remote_size}"
    try:
        found = checksum_of(copy)
    except OSError as exc:
        return f"cannot read it: {exc}"
    if found.size != size:
        return f"it changed while it was checked ({found.size} bytes read)"
    if found.hex != record["crc32"]:
        return f"CRC32 {found.hex}, {record['crc32']} was recorded"
    return None


@contextlib.contextmanager
def whole_file_lock(path: Path, url: str) -> Iterator[None]:
    """Hold the lock file ``path`` (:class:`filelock.FileLock`: an OS lock, released when
    the holder dies, so a killed process never blocks the others); log once when another
    process holds it and wait. The holder deletes the file before it releases the lock
    (filelock notices a deleted lock file and retries on a new one)."""
    from filelock import FileLock, Timeout

    lock = FileLock(path)
    for attempt in range(3):
        try:
            lock.acquire(timeout=0)
            break
        except Timeout:
            logger.info("%s: another process is copying the whole file into the cache; "
                        "waiting for it", url)
            lock.acquire()
            break
        except FileNotFoundError:  # another process removed the empty folders just now
            if attempt == 2:
                raise
            os.makedirs(path.parent, exist_ok=True)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        lock.release()


def remove_free_lock(path: Path) -> bool:
    """Delete a lock file nobody holds (True); leave a held one (False)."""
    from filelock import FileLock, Timeout

    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except (Timeout, OSError):
        return False
    try:
        with contextlib.suppress(OSError):
            os.unlink(path)
    finally:
        lock.release()
    return True
