"""The disk cache of remote files: byte-range blocks and whole-file copies, LRU-evicted.

Layout (see ``docs/storage.md`` and :mod:`~exaslide.storage.cache_layout`)::

    <root>/CACHEDIR.TAG                                marks the folder as exaslide's cache
    <root>/<sha256(key)[:32]>/meta.json               key, size, etag, last_modified, version
    <root>/<sha256(key)[:32]>/<version>/blocks-<B>/<i> block i (bytes [i*B, (i+1)*B)) + CRC32
    <root>/<sha256(key)[:32]>/<version>/file/<name>    whole-file copy (for OpenSlide & co.)
    <root>/<sha256(key)[:32]>/<version>/whole.json     the copy's size and CRC32
    <root>/<sha256(key)[:32]>/<version>/whole.lock     held while one process makes the copy

``key`` is the URL without the query parameters of presigned URLs
(:func:`~exaslide.storage.urls.cache_key`), so a file presigned again hits the cache.

``<version>`` is a hash of the remote size, ETag and last-modified time, so blocks of two
versions of a file never mix. Every file is written under a temporary name and renamed,
so any number of processes share one cache (at worst two fetch the same block); only a
whole-file copy takes a lock (an OS file lock on ``<version>/whole.lock``), so that one
process downloads it while the others wait for it. Eviction: least recently used first,
by file mtime (a hit touches the block, or the record of a whole-file copy).

The cache only ever touches its own files: those of the layout above, in a folder that
holds its marker (see :func:`~exaslide.storage.cache_layout.claim`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from exaslide.atomic import atomic_path, temporary_sibling, write_text
from exaslide.errors import StorageError
from exaslide.storage import cache_layout as layout
from exaslide.storage import whole_copy
from exaslide.storage.cache_layout import LOCK_NAME, META_NAME, RECORD_NAME
from exaslide.storage.info import RemoteInfo
from exaslide.storage.whole_copy import Checksum

logger = logging.getLogger(__name__)

#: Cache folder (default ``$XDG_CACHE_HOME/exaslide``, else ``~/.cache/exaslide``).
CACHE_DIR_ENV = "EXASLIDE_CACHE_DIR"
#: Size limit, e.g. ``50GB``, ``500MB``, ``2GiB`` or a number of bytes.
CACHE_SIZE_ENV = "EXASLIDE_CACHE_SIZE"
DEFAULT_CACHE_BYTES = 50 * 10**9
#: Block size of byte-range caching: a few stored tiles (10-100 KB each), so a random
#: patch costs one small request, while long reads (tile offset tables, whole levels) are
#: coalesced into one request per run of missing blocks.
DEFAULT_BLOCK_SIZE = 256 * 1024
#: After a write takes the total over the limit, files are deleted down to this fraction.
PRUNE_TO = 0.9
#: Temporary files older than this are leftovers of killed processes and are deleted.
STALE_TEMP_SECONDS = 3600
#: A whole-file copy verified by this process is checked again only when its stat
#: changed, or when it last changed less than this long before it was verified (a write
#: within the file system's timestamp granularity would not show in its stat).
RACY_SECONDS = 2.0

_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_size(value: int | float | str) -> int:
    """Bytes from ``123``, ``"500MB"``, ``"50 GB"``, ``"1.5GiB"`` (KB/MB/GB/TB are powers of
    1000, KiB/MiB/GiB/TiB powers of 1024; read by :func:`dask.utils.parse_bytes`).

    Raises:
        StorageError: unreadable text.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    from dask.utils import parse_bytes

    try:
        if not _SIZE.fullmatch(str(value)):
            raise ValueError(value)
        return int(parse_bytes(str(value).strip()))
    except ValueError as exc:
        raise StorageError(f"cache size {value!r} is not a size; write e.g. 50GB, 500MB, "
                           "2GiB or a number of bytes") from exc


def format_size(nbytes: float) -> str:
    """``"11.77 MiB"``-style text (:func:`dask.utils.format_bytes`, powers of 1024)."""
    from dask.utils import format_bytes

    return format_bytes(int(nbytes))
def default_cache_dir() -> Path:
    """``$EXASLIDE_CACHE_DIR``, else ``$XDG_CACHE_HOME/exaslide``, else ``~/.cache/exaslide``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "exaslide"


def default_cache_bytes() -> int:
    """``$EXASLIDE_CACHE_SIZE`` in bytes, else 50 GB."""
    text = os.environ.get(CACHE_SIZE_ENV)
    return parse_size(text) if text else DEFAULT_CACHE_BYTES


@dataclass
class CacheEntry:
    """One remote file in the cache (what ``exaslide cache info`` lists)."""

    url: str
    path: Path  #: the entry's folder
    size: int | None  #: the remote file's size
    etag: str | None
    last_modified: str | None
    cached_bytes: int  #: bytes on disk (blocks and whole-file copy)
    whole_file: bool  #: a complete local copy exists
    last_used: float  #: newest mtime of its files (seconds since the epoch)

    def to_dict(self) -> dict:
        """JSON-ready form (``exaslide cache info --json``)."""
        return {"url": self.url, "path": str(self.path), "size": self.size, "etag": self.etag,
                "last_modified": self.last_modified, "cached_bytes": self.cached_bytes,
                "whole_file": self.whole_file,
                "last_used": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.last_used))}


class DiskCache:
    """A size-limited disk cache of remote files, shared by every process that uses ``root``.

    The folder is claimed at first use (:func:`~exaslide.storage.cache_layout.claim`):
    created and marked when missing or empty, refused when it holds other files.

    Args:
        root: cache folder (default :func:`default_cache_dir`).
        max_bytes: size limit, bytes or text such as ``"50GB"`` (default
            :func:`default_cache_bytes`).
        block_size: bytes per cached block (default :data:`DEFAULT_BLOCK_SIZE`).
    """

    def __init__(self, root: str | os.PathLike | None = None,
                 max_bytes: int | str | None = None, block_size: int = DEFAULT_BLOCK_SIZE):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.max_bytes = parse_size(max_bytes) if max_bytes is not None else \
            default_cache_bytes()
        if self.max_bytes <= 0 or block_size <= 0:
            raise StorageError(f"cache size and block size must be positive, got "
                               f"{self.max_bytes} and {block_size}")
        self.block_size = int(block_size)
        self._lock = threading.Lock()
        self._estimate: int | None = None  # total bytes, measured by the last scan + writes
        self._since_scan = 0
        self._owned = False  # the root was claimed (see _claim)
        self._verified: dict[str, tuple[tuple, int]] = {}  # copy -> (stat key, checked at)

    def __repr__(self) -> str:
        return f"DiskCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    def _claim(self, create: bool = True) -> bool:
        """True when the root is this cache's folder (created when ``create``); False
        when there is nothing to read yet.

        Raises:
            StorageError: the folder holds files that are not the cache's.
        """
        if not self._owned or (create and not self.root.is_dir()):  # (removed meanwhile)
            self._owned = layout.claim(self.root, create)
        return self._owned

    # ----------------------------------------------------------------------- layout
    def entry_dir(self, url: str) -> Path:
        """The folder of one URL (named by a hash of its
        :func:`~exaslide.storage.urls.cache_key`: the URL without presigning
        parameters)."""
        from exaslide.storage.urls import cache_key

        return self.root / hashlib.sha256(cache_key(url).encode()).hexdigest()[:32]

    def _block_path(self, info: RemoteInfo, index: int) -> Path:
        return self.entry_dir(info.url) / info.version / f"blocks-{self.block_size}" / str(index)

    def whole_file_path(self, info: RemoteInfo) -> Path:
        """Where the whole-file copy of this version lives (it may not exist); the file keeps
        the URL's name, since some readers pick the format from the extension."""
        from exaslide.storage.urls import url_basename

        return self.entry_dir(info.url) / info.version / layout.COPY_FOLDER / \
            url_basename(info.url)

    # ------------------------------------------------------------------- validation
    def validate(self, info: RemoteInfo) -> bool:
        """Record ``info`` as the current version of its URL and delete the cached data of
        any other version (the remote file changed). Returns True when something was
        dropped.

        Raises:
            StorageError: the cache folder holds files that are not the cache's.
        """
        from exaslide.storage.urls import cache_key

        self._claim()
        entry = self.entry_dir(info.url)
        key = cache_key(info.url)
        meta = _read_json(entry / META_NAME)
        if meta is not None and meta.get("version") == info.version:
            return False
        stale = [d for d, _ in layout.folders(entry, "entry") if d.name != info.version]
        if meta is not None and meta.get("url") == key:
            logger.warning("%s changed since it was cached (size %s -> %s, etag %s -> %s, "
                           "last modified %s -> %s): dropping the cached copy", info.url,
                           meta.get("size"), info.size, meta.get("etag"), info.etag,
                           meta.get("last_modified"), info.last_modified)
        for folder in stale:
            self._delete(folder, "version")
        try:
            layout.make_folders(self.root, entry)
            record = {**info.to_dict(), "url": key}  # no signature in the cache's files
            write_text(entry / META_NAME, json.dumps(record, indent=1) + "\n")
        except OSError as exc:
            logger.warning("cannot write to the cache %s: %s", self.root, exc)
        return bool(stale)

    # ----------------------------------------------------------------------- blocks
    def read_block(self, info: RemoteInfo, index: int) -> bytes | None:
        """A cached block (touched, so it counts as recently used), or ``None`` when it is
        missing or damaged (a damaged block is deleted; a link is neither read nor
        deleted)."""
        path = self._block_path(info, index)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            with open(fd, "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        body, crc = data[:-4], data[-4:]
        if len(data) < 4 or zlib.crc32(body).to_bytes(4, "little") != crc:
            if layout.real_folders(self.root, path):
                logger.warning("damaged cache block %s: deleted", path)
                with contextlib.suppress(OSError):
                    path.unlink()
            return None
        _touch(path)
        return body

    def write_block(self, info: RemoteInfo, index: int, data: bytes) -> None:
        """Store a block atomically (body + CRC32). A full or read-only disk is logged and
        ignored: the cache never makes a read fail.

        Raises:
            StorageError: the cache folder holds files that are not the cache's.
        """
        self._claim()
        path = self._block_path(info, index)
        try:
            layout.make_folders(self.root, path.parent)
            tmp = temporary_sibling(path)
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.write(zlib.crc32(data).to_bytes(4, "little"))
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        except OSError as exc:
            logger.warning("cannot write to the cache %s: %s", self.root, exc)
            return
        self._account(len(data) + 4)

    # -------------------------------------------------------------------- whole file
    def whole_file(self, info: RemoteInfo) -> Path | None:
        """The complete local copy of this version, or ``None``. The copy is verified
        first (its size against its record and the remote size, its CRC32 against its
        record) the first time this cache object uses it, and again whenever its stat
        changed; a damaged copy is deleted with a warning (the caller fetches it again).
        A use touches the copy's record (its time of last use)."""
        path = self.whole_file_path(info)
        try:
            found = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(found.st_mode) or not layout.real_folders(self.root, path):
            return None  # reached through a link, or a link: not the cache's
        key = _stat_key(found)
        record = path.parent.parent / RECORD_NAME
        with self._lock:
            verified = self._verified.get(str(path))
        if verified is None or verified[0] != key or not record.exists() or \
                found.st_ctime_ns >= verified[1] - int(RACY_SECONDS * 1e9):  # exact ints
            checked_at = time.time_ns()
            problem = whole_copy.copy_problem(path, record, found.st_size, info.size)
            if problem is not None:
                self._drop_copy(info, path, found, problem)
                return None
            with self._lock:
                self._verified[str(path)] = (key, checked_at)
        _touch(record)
        return path

    def _drop_copy(self, info: RemoteInfo, path: Path, found: os.stat_result,
                   problem: str) -> None:
        """Delete a damaged copy (unless another process has replaced it since)."""
        logger.warning("%s: the cached whole-file copy %s is damaged (%s): deleted, fetching "
                       "it again", info.url, path, problem)
        with self._lock:
            self._verified.pop(str(path), None)
        with contextlib.suppress(OSError):
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == (found.st_dev, found.st_ino):
                path.unlink()

    def store_whole_file(self, info: RemoteInfo,
                         fill: Callable[[Path], Checksum | None]) -> Path:
        """Create the whole-file copy: ``fill(tmp)`` writes the content to a temporary path
        and may return its :class:`~exaslide.storage.whole_copy.Checksum` (computed while
        writing, e.g. by a :class:`~exaslide.storage.whole_copy.ChecksumWriter`; else
        the file is read back). The size and CRC32 are recorded, then the copy is renamed
        into place. Room is made first (LRU eviction); the now redundant blocks of this
        version are deleted afterwards.

        One process (or thread) at a time fills a given version: it holds an OS lock on
        ``<version>/whole.lock`` (:class:`filelock.FileLock`, released by the OS if the
        process dies); the others wait and return its copy, or make it themselves when
        the owner failed.

        Raises:
            StorageError: the file is larger than the cache limit, the download is shorter
                than the store's size, or the cache folder is not the cache's.
        """
        if info.size is not None and info.size > self.max_bytes:
            raise StorageError(
                f"{info.url}: the file ({format_size(info.size)}) is larger than the disk "
                f"cache limit ({format_size(self.max_bytes)}); raise {CACHE_SIZE_ENV}")
        self._claim()
        target = self.whole_file_path(info)
        version = target.parent.parent
        layout.make_folders(self.root, target.parent)
        with whole_copy.whole_file_lock(version / LOCK_NAME, info.url):
            existing = self.whole_file(info)  # made while we waited for the lock
            if existing is not None:
                return existing
            if info.size:
                self.prune(int(self.max_bytes * PRUNE_TO) - info.size, only_if_over=True)
            layout.make_folders(self.root, target.parent)  # (pruning may remove folders)
            with atomic_path(target) as tmp:
                checksum = self._fill(info, tmp, fill)
                whole_copy.write_record(version / RECORD_NAME, target.name, checksum)
            made = os.lstat(target)
            with self._lock:  # checked while written: no re-read while its stat holds
                self._verified[str(target)] = (_stat_key(made), made.st_ctime_ns +
                                               int(RACY_SECONDS * 1e9) + 1)
            freed = sum(self._delete(folder, "blocks")
                        for folder, level in layout.folders(version, "version")
                        if level == "blocks")
            self._account(checksum.size, freed=freed)
            return target

    @staticmethod
    def _fill(info: RemoteInfo, tmp: Path, fill: Callable[[Path], Checksum | None]) -> Checksum:
        """Run ``fill(tmp)``; the checksum it returns (checked against the file's size) or,
        when it returns none, the one read back from the file."""
        returned = fill(tmp)
        size = os.path.getsize(tmp)
        checksum = returned if isinstance(returned, Checksum) else whole_copy.checksum_of(tmp)
        if checksum.size != size or (info.size is not None and size != info.size):
            raise StorageError(f"{info.url}: truncated download: {size} bytes written of "
                               f"{info.size if info.size is not None else checksum.size}; "
                               "not cached")
        return checksum

    # --------------------------------------------------------------- size and eviction
    def _account(self, written: int, freed: int = 0) -> None:
        """Add a write of ``written`` bytes (which deleted ``freed`` bytes) to the running
        total; measure the total by a scan the first time and after every tenth of the
        limit written; prune when over the limit."""
        with self._lock:
            if self._estimate is None or self._since_scan > self.max_bytes // 10:
                estimate = None
            else:
                self._estimate += written - freed
                self._since_scan += written
                estimate = self._estimate
        if estimate is None:  # scanned outside the lock (whole_file takes it)
            estimate = self.total_bytes()
            with self._lock:
                self._estimate, self._since_scan = estimate, 0
        if estimate > self.max_bytes:
            self.prune()

    def _files(self) -> list[tuple[Path, int, float, bool]]:
        """``(path, size, mtime, evictable)`` of every cached data file (blocks and
        whole-file copies; a copy's time is that of its record too, which each use
        touches), and of every temporary being written (counted toward the limit, but not
        evictable: a process is writing it). Temporaries left by killed processes are
        deleted. Only files of the layout are considered (never the folder's other files,
        nor links)."""
        if not self._claim(create=False):
            return []
        now = time.time()
        found = []
        for path, kind, info in layout.walk(self.root):
            if kind == "temp":
                if now - info.st_mtime > STALE_TEMP_SECONDS:
                    with contextlib.suppress(OSError):
                        path.unlink()
                else:
                    found.append((path, info.st_size, info.st_mtime, False))
            elif kind == "copy":
                used = max(info.st_mtime, _mtime(path.parent.parent / RECORD_NAME))
                found.append((path, info.st_size, used, True))
            elif kind == "block":
                found.append((path, info.st_size, info.st_mtime, True))
        return found

    def total_bytes(self) -> int:
        """Bytes of cached data on disk, temporaries being written included (a scan of the
        cache folder's layout)."""
        return sum(size for _, size, _, _ in self._files())

    def prune(self, target_bytes: int | None = None, *, only_if_over: bool = False) -> int:
        """Delete the least recently used files (oldest mtime first) until the total is at
        most ``target_bytes`` (default 90% of the limit); returns the bytes deleted. With
        ``only_if_over``, nothing is deleted unless the total exceeds ``target_bytes``."""
        target = int(self.max_bytes * PRUNE_TO) if target_bytes is None else target_bytes
        files = self._files()
        total = sum(size for _, size, _, _ in files)
        freed = 0
        if not only_if_over or total > target:
            evictable = sorted((f for f in files if f[3]), key=lambda f: f[2])
            for path, size, _, _ in evictable:
                if total - freed <= target:
                    break
                with contextlib.suppress(OSError):
                    path.unlink()
                    freed += size
            if freed:
                logger.info("disk cache %s: evicted %s (least recently used) to stay under "
                            "%s", self.root, format_size(freed), format_size(self.max_bytes))
                self._remove_empty_entries()
        with self._lock:
            self._estimate, self._since_scan = total - freed, 0
        return freed

    def _remove_empty_entries(self) -> None:
        """Delete the entries that hold no data (their ``meta.json``, records and free
        locks) and their folders."""
        for entry, _ in layout.folders(self.root, "root"):
            files = list(layout.walk(entry, "entry"))
            if any(kind in ("block", "copy", "temp") for _, kind, _ in files):
                continue
            if all(whole_copy.remove_free_lock(path) for path, kind, _ in files
                   if kind == "lock"):  # (a held lock: a copy is being made)
                self._delete(entry, "entry")

    def _delete(self, folder: Path, level: str) -> int:
        """Delete the layout's files under ``folder`` (a folder of ``level``), except
        temporaries being written and locks being held, then its folders left empty;
        returns the bytes of data deleted. Links and files that are not the cache's stay,
        and so do the folders holding them."""
        now, freed = time.time(), 0
        for path, kind, info in layout.walk(folder, level):
            if kind == "lock":
                whole_copy.remove_free_lock(path)
                continue
            if kind == "temp" and now - info.st_mtime <= STALE_TEMP_SECONDS:
                continue  # another process is writing it
            with contextlib.suppress(OSError):
                path.unlink()
                freed += info.st_size if kind in layout.DATA_KINDS else 0
        layout.remove_empty_folders(folder, level)
        return freed

    # ------------------------------------------------------------------ listing, clear
    def entries(self) -> list[CacheEntry]:
        """Every cached URL, most recently used first (only the cache's own entries).

        Raises:
            StorageError: the cache folder holds files that are not the cache's.
        """
        if not self._claim(create=False):
            return []
        found = []
        for entry, _ in layout.folders(self.root, "root"):
            meta = _read_json(entry / META_NAME)
            if meta is None:
                continue  # not an entry the cache wrote
            cached, newest, whole = 0, 0.0, False
            for path, kind, info in layout.walk(entry, "entry"):
                if kind in ("record", *layout.DATA_KINDS):
                    newest = max(newest, info.st_mtime)
                if kind in layout.DATA_KINDS:
                    cached += info.st_size
                if kind == "copy" and path.parent.parent.name == meta.get("version"):
                    whole = True
            found.append(CacheEntry(url=meta.get("url", "?"), path=entry, size=meta.get("size"),
                                    etag=meta.get("etag"),
                                    last_modified=meta.get("last_modified"),
                                    cached_bytes=cached, whole_file=whole, last_used=newest))
        return sorted(found, key=lambda e: -e.last_used)

    def clear(self, pattern: str | None = None) -> list[CacheEntry]:
        """Delete every entry, or those whose URL matches the glob ``pattern`` (e.g.
        ``"s3://bucket/*"``); returns the entries deleted. Only the cache's own files are
        deleted; a copy being made (its lock held) and temporaries being written stay.

        Raises:
            StorageError: the cache folder holds files that are not the cache's.
        """
        removed = [e for e in self.entries() if pattern is None or fnmatch(e.url, pattern)]
        folders = [e.path for e in removed] if pattern is not None else \
            [path for path, _ in layout.folders(self.root, "root")]  # (with no meta.json too)
        for folder in folders:
            self._delete(folder, "entry")
        with self._lock:
            self._estimate = None
            self._verified.clear()
        return removed


def _stat_key(found: os.stat_result) -> tuple:
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _mtime(path: Path) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0.0


def _read_json(path: Path) -> dict | None:
    """A JSON object from a regular file (a link is not followed), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with open(fd, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------- the process's default
_settings: dict[str, object] = {}
_instances: dict[tuple, DiskCache] = {}
_instances_lock = threading.Lock()


def configure_cache(root: str | os.PathLike | None = None, max_bytes: int | str | None = None,
                    block_size: int | None = None) -> DiskCache:
    """Set this process's default cache (arguments left ``None`` keep the environment's or
    built-in value) and return it. For library code; the settings stay in this process
    (worker processes that it spawns do not see them: set ``EXASLIDE_CACHE_DIR`` /
    ``EXASLIDE_CACHE_SIZE`` for those). The CLI does not use it: a config file's ``cache``
    section sets those environment variables, so that Dask workers inherit them."""
    _settings.update({k: v for k, v in (("root", root), ("max_bytes", max_bytes),
                                        ("block_size", block_size)) if v is not None})
    return default_cache()


def default_cache() -> DiskCache:
    """The cache that reads use unless given another: :func:`configure_cache` settings,
    else ``EXASLIDE_CACHE_DIR`` / ``EXASLIDE_CACHE_SIZE``, else the defaults (the
    environment is read on every call, so a changed variable takes effect)."""
    root = Path(_settings.get("root") or default_cache_dir()).expanduser()
    max_bytes = parse_size(_settings["max_bytes"]) if "max_bytes" in _settings else \
        default_cache_bytes()
    block_size = int(_settings.get("block_size") or DEFAULT_BLOCK_SIZE)
    key = (str(root), max_bytes, block_size)
    with _instances_lock:
        if key not in _instances:
            _instances[key] = DiskCache(root, max_bytes, block_size)
        return _instances[key]
