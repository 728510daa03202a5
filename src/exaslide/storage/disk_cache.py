"""The disk cache of remote files: byte-range blocks and whole-file copies, LRU-evicted.

Layout (see ``docs/storage.md``)::

    <root>/<sha256(key)[:32]>/meta.json               key, size, etag, last_modified, version
    <root>/<sha256(key)[:32]>/<version>/blocks-<B>/<i> block i (bytes [i*B, (i+1)*B)) + CRC32
    <root>/<sha256(key)[:32]>/<version>/file/<name>    whole-file copy (for OpenSlide & co.)
    <root>/<sha256(key)[:32]>/<version>/whole.lock     held while one process makes the copy

``key`` is the URL without the query parameters of presigned URLs
(:func:`~exaslide.storage.urls.cache_key`), so a file presigned again hits the cache.

``<version>`` is a hash of the remote size, ETag and last-modified time, so blocks of two
versions of a file never mix. Every file is written under a temporary name and renamed,
so any number of processes share one cache (at worst two fetch the same block); only a
whole-file copy takes a lock (``<version>/whole.lock``), so that one process downloads it
while the others wait for it. Eviction: least recently used first, by file mtime (a hit
touches the file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from exaslide.atomic import atomic_path, temporary_sibling, write_text
from exaslide.errors import StorageError
from exaslide.storage.info import RemoteInfo

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
#: A whole-file lock not touched for this long is stale (its owner died on another host
#: or hangs); the owner touches it every ``LOCK_STALE_SECONDS / 20`` while it downloads.
LOCK_STALE_SECONDS = 600
#: How often a process waiting for another's whole-file copy looks again.
LOCK_POLL_SECONDS = 0.2
LOCK_NAME = "whole.lock"
META_NAME = "meta.json"

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
_TEMP = re.compile(r"^\..*\.[0-9a-f]{8}\.tmp")


def parse_size(value: int | float | str) -> int:
    """Bytes from ``123``, ``"500MB"``, ``"50 GB"``, ``"1.5GiB"`` (KB/MB/GB/TB are powers of
    1000, KiB/MiB/GiB/TiB powers of 1024).

    Raises:
        StorageError: unreadable text.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise StorageError(f"cache size {value!r} is not a size; write e.g. 50GB, 500MB, "
                           "2GiB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(nbytes: float) -> str:
    """``"12.3 MB"``-style text (powers of 1000, as :func:`parse_size` reads them)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(nbytes) < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


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

    def __repr__(self) -> str:
        return f"DiskCache({str(self.root)!r}, max_bytes={self.max_bytes})"

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

        return self.entry_dir(info.url) / info.version / "file" / url_basename(info.url)

    # ------------------------------------------------------------------- validation
    def validate(self, info: RemoteInfo) -> bool:
        """Record ``info`` as the current version of its URL and delete the cached data of
        any other version (the remote file changed). Returns True when something was
        dropped."""
        from exaslide.storage.urls import cache_key

        entry = self.entry_dir(info.url)
        key = cache_key(info.url)
        meta = _read_json(entry / META_NAME)
        if meta is not None and meta.get("version") == info.version:
            return False
        stale = [d for d in _subdirs(entry) if d.name != info.version]
        if meta is not None and meta.get("url") == key:
            logger.warning("%s changed since it was cached (size %s -> %s, etag %s -> %s, "
                           "last modified %s -> %s): dropping the cached copy", info.url,
                           meta.get("size"), info.size, meta.get("etag"), info.etag,
                           meta.get("last_modified"), info.last_modified)
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        try:
            record = {**info.to_dict(), "url": key}  # no signature in the cache's files
            write_text(entry / META_NAME, json.dumps(record, indent=1) + "\n")
        except OSError as exc:
            logger.warning("cannot write to the cache %s: %s", self.root, exc)
        return bool(stale)

    # ----------------------------------------------------------------------- blocks
    def read_block(self, info: RemoteInfo, index: int) -> bytes | None:
        """A cached block (touched, so it counts as recently used), or ``None`` when it is
        missing or damaged (a damaged block is deleted)."""
        path = self._block_path(info, index)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        body, crc = data[:-4], data[-4:]
        if len(data) < 4 or zlib.crc32(body).to_bytes(4, "little") != crc:
            logger.warning("damaged cache block %s: deleted", path)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        _touch(path)
        return body

    def write_block(self, info: RemoteInfo, index: int, data: bytes) -> None:
        """Store a block atomically (body + CRC32). A full or read-only disk is logged and
        ignored: the cache never makes a read fail."""
        path = self._block_path(info, index)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
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
        """The complete local copy of this version (touched), or ``None``."""
        path = self.whole_file_path(info)
        if not path.is_file():
            return None
        _touch(path)
        return path

    def store_whole_file(self, info: RemoteInfo, fill: Callable[[Path], None]) -> Path:
        """Create the whole-file copy: ``fill(tmp)`` writes the content to a temporary path,
        which is renamed into place. Room is made first (LRU eviction); the now redundant
        blocks of this version are deleted afterwards.

        One process (or thread) at a time fills a given version: it holds
        ``<version>/whole.lock`` (its host, pid and start time; touched while it works),
        the others wait for its copy and return it. A lock whose owner is dead (same host)
        or that has not been touched for :data:`LOCK_STALE_SECONDS` is removed and the copy
        made again; when the owner fails, a waiter takes over.

        Raises:
            StorageError: the file is larger than the cache limit.
        """
        if info.size is not None and info.size > self.max_bytes:
            raise StorageError(
                f"{info.url}: the file ({format_size(info.size)}) is larger than the disk "
                f"cache limit ({format_size(self.max_bytes)}); raise {CACHE_SIZE_ENV}")
        target = self.whole_file_path(info)
        lock = target.parent.parent / LOCK_NAME
        held = _acquire_whole_file_lock(lock, target, info.url)
        if held is None:  # another process made the copy while we waited
            _touch(target)
            return target
        try:
            if target.is_file():  # made between our last look and taking the lock
                _touch(target)
                return target
            if info.size:
                self.prune(int(self.max_bytes * PRUNE_TO) - info.size, only_if_over=True)
            with _heartbeat(lock), atomic_path(target) as tmp:
                fill(tmp)
            freed = 0
            for folder in _subdirs(target.parent.parent):
                if folder.name.startswith("blocks-"):
                    freed += sum(_size(f) for f in _walk_files(folder))
                    shutil.rmtree(folder, ignore_errors=True)
            self._account(target.stat().st_size, freed=freed)
            return target
        finally:
            _release_whole_file_lock(lock, held)

    # --------------------------------------------------------------- size and eviction
    def _account(self, written: int, freed: int = 0) -> None:
        """Add a write of ``written`` bytes (which deleted ``freed`` bytes) to the running
        total; measure the total by a scan the first time and after every tenth of the
        limit written; prune when over the limit."""
        with self._lock:
            if self._estimate is None or self._since_scan > self.max_bytes // 10:
                self._estimate, self._since_scan = self.total_bytes(), 0
            else:
                self._estimate += written - freed
                self._since_scan += written
            over = self._estimate > self.max_bytes
        if over:
            self.prune()

    def _is_meta(self, path: Path) -> bool:
        """True for an entry's ``meta.json`` (not for a cached file of that name)."""
        return path.name == META_NAME and path.parent.parent == self.root

    def _files(self) -> Iterator[tuple[Path, int, float, bool]]:
        """``(path, size, mtime, evictable)`` of every cached data file, and of every
        temporary being written (counted toward the limit, but not evictable: a process is
        writing it). Entries' ``meta.json`` and whole-file locks are left out. Temporaries
        and locks left by killed processes are deleted."""
        now = time.time()
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = Path(folder, name)
                try:
                    stat = path.stat()
                except OSError:
                    continue
                if name == LOCK_NAME and path.parent.parent.parent == self.root:
                    if now - stat.st_mtime > LOCK_STALE_SECONDS:
                        with contextlib.suppress(OSError):
                            path.unlink()
                    continue
                if _TEMP.match(name):
                    if now - stat.st_mtime > STALE_TEMP_SECONDS:
                        with contextlib.suppress(OSError):
                            path.unlink()
                    else:
                        yield path, stat.st_size, stat.st_mtime, False
                    continue
                if not self._is_meta(path):
                    yield path, stat.st_size, stat.st_mtime, True

    def total_bytes(self) -> int:
        """Bytes of cached data on disk, temporaries being written included (a scan of the
        cache folder)."""
        return sum(size for _, size, _, _ in self._files())

    def prune(self, target_bytes: int | None = None, *, only_if_over: bool = False) -> int:
        """Delete the least recently used files (oldest mtime first) until the total is at
        most ``target_bytes`` (default 90% of the limit); returns the bytes deleted. With
        ``only_if_over``, nothing is deleted unless the total exceeds ``target_bytes``."""
        target = int(self.max_bytes * PRUNE_TO) if target_bytes is None else target_bytes
        files = list(self._files())
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
        for entry in _subdirs(self.root):
            meta = entry / META_NAME
            if not any(f != meta for f in _walk_files(entry)):
                shutil.rmtree(entry, ignore_errors=True)

    # ------------------------------------------------------------------ listing, clear
    def entries(self) -> list[CacheEntry]:
        """Every cached URL, most recently used first."""
        found = []
        for entry in _subdirs(self.root):
            meta = _read_json(entry / META_NAME) or {}
            cached, newest, whole = 0, 0.0, False
            for path in _walk_files(entry):
                if path == entry / META_NAME or _TEMP.match(path.name) or (
                        path.name == LOCK_NAME and path.parent.parent == entry):
                    continue
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    cached += stat.st_size
                    newest = max(newest, stat.st_mtime)
                    whole = whole or (path.parent.name == "file"
                                      and path.parent.parent.name == meta.get("version"))
            found.append(CacheEntry(url=meta.get("url", "?"), path=entry, size=meta.get("size"),
                                    etag=meta.get("etag"),
                                    last_modified=meta.get("last_modified"),
                                    cached_bytes=cached, whole_file=whole, last_used=newest))
        return sorted(found, key=lambda e: -e.last_used)

    def clear(self, pattern: str | None = None) -> list[CacheEntry]:
        """Delete every entry, or those whose URL matches the glob ``pattern`` (e.g.
        ``"s3://bucket/*"``); returns the entries deleted."""
        removed = [e for e in self.entries() if pattern is None or fnmatch(e.url, pattern)]
        for entry in removed:
            shutil.rmtree(entry.path, ignore_errors=True)
        with self._lock:
            self._estimate = None
        return removed


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ------------------------------------------------------------------- whole-file locks
def _acquire_whole_file_lock(lock: Path, target: Path, url: str) -> int | None:
    """Create ``lock`` (returns its inode) or wait until ``target`` exists (returns
    ``None``). Stale locks are removed on the way."""
    waiting = False
    while True:
        if target.is_file():
            return None
        inode = _try_lock(lock)
        if inode is not None:
            return inode
        if not waiting:
            logger.info("%s: another process is copying the whole file into the cache; "
                        "waiting for it", url)
            waiting = True
        _remove_if_stale(lock)
        time.sleep(LOCK_POLL_SECONDS)


def _try_lock(lock: Path) -> int | None:
    """Create the lock file with our host, pid and time; its inode, or None if it exists."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    except FileNotFoundError:  # the version folder was just removed (a newer version)
        return None
    try:
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        os.write(fd, json.dumps(owner).encode())
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def _remove_if_stale(lock: Path) -> bool:
    """Delete a lock whose owner is dead (same host) or that has not been touched for
    :data:`LOCK_STALE_SECONDS`; True when it was deleted."""
    try:
        stat = lock.stat()
        text = lock.read_text(encoding="utf-8")
    except OSError:
        return False
    age = time.time() - stat.st_mtime
    reason = None
    if age > LOCK_STALE_SECONDS:
        reason = f"not touched for {age:.0f} s"
    else:
        try:
            owner = json.loads(text)
        except ValueError:
            return False  # being written
        if isinstance(owner, dict) and owner.get("host") == socket.gethostname() \
                and not _pid_alive(owner.get("pid")):
            reason = f"its process {owner.get('pid')} is gone"
    if reason is None:
        return False
    try:  # only the lock judged stale, not one another waiter has created since
        now = lock.stat()
        if (now.st_ino, now.st_mtime_ns) != (stat.st_ino, stat.st_mtime_ns):
            return False
        lock.unlink()
    except OSError:
        return False
    logger.warning("removed the stale whole-file lock %s (%s)", lock, reason)
    return True


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: rely on the age of the lock
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _release_whole_file_lock(lock: Path, inode: int) -> None:
    with contextlib.suppress(OSError):
        if lock.stat().st_ino == inode:  # still ours (not removed as stale and retaken)
            lock.unlink()


@contextlib.contextmanager
def _heartbeat(lock: Path) -> Iterator[None]:
    """Touch ``lock`` regularly while the block runs, so that waiters never take a long
    download for a dead one."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(LOCK_STALE_SECONDS / 20):
            _touch(lock)

    thread = threading.Thread(target=beat, name="exaslide-cache-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return []


def _walk_files(folder: Path) -> Iterator[Path]:
    for parent, _, names in os.walk(folder):
        for name in names:
            yield Path(parent, name)


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
