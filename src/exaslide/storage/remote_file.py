"""A seekable, read-only file object over an fsspec URL, cached block by block on disk.

Reads are served, in order, from a small in-memory LRU of recent blocks, from the disk
cache (:class:`~exaslide.storage.disk_cache.DiskCache`), from the whole-file copy when one
exists, and only then from the network: the missing blocks of one read are fetched with
one range request per run of consecutive blocks (runs are fetched concurrently for async
stores: HTTP, S3, GCS, Azure). Every block fetched is checked against the size the store
reported, so a truncated remote file is an error, never silently short data.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterable

from exaslide.errors import StorageError
from exaslide.lru import LRU
from exaslide.storage.disk_cache import DiskCache, default_cache
from exaslide.storage.info import RemoteInfo, remote_info
from exaslide.storage.urls import cache_key, filesystem

logger = logging.getLogger(__name__)

#: Largest single range request (longer runs of missing blocks are split).
MAX_REQUEST_BYTES = 64 << 20
#: Recently used blocks kept in memory per open file (tifffile makes many small reads).
MEMORY_BYTES = 8 << 20

_totals = {"bytes_fetched": 0, "bytes_from_cache": 0, "requests": 0}
_totals_lock = threading.Lock()


def io_stats() -> dict[str, int]:
    """This process's totals over every remote file: ``bytes_fetched`` (network),
    ``bytes_from_cache`` (disk cache or whole-file copy) and ``requests`` (range requests)."""
    with _totals_lock:
        return dict(_totals)


def reset_io_stats() -> None:
    """Set the process totals of :func:`io_stats` to zero."""
    with _totals_lock:
        for key in _totals:
            _totals[key] = 0


class RemoteFile(io.RawIOBase):
    """A read-only binary file over an fsspec URL (``read``, ``seek``, ``tell``, ``pread``).

    Opening asks the store for the file's size and version (one HEAD request for HTTP) and
    drops the cached data of an older version. Counters: :attr:`bytes_fetched` (network),
    :attr:`bytes_from_cache`, :attr:`requests`.

    Args:
        url: an fsspec URL (``https://...``, ``s3://...``, ...).
        cache: the disk cache (default :func:`default_cache`).
        info: the file's :class:`RemoteInfo` when the caller already has it.
        storage_options: passed to fsspec (credentials, endpoint, ...).

    A store that does not report the file's size (an HTTP server sending no
    Content-Length) cannot be read by byte ranges: the whole file is then streamed into
    the disk cache once (like :func:`~exaslide.storage.fetch.local_copy`) and read from
    that copy; ``size`` is the copy's size.

    Raises:
        StorageError: the file cannot be reached (or, without a reported size, cannot be
            downloaded).
    """

    remote = True
    mode = "rb"

    def __init__(self, url: str, *, cache: DiskCache | None = None,
                 info: RemoteInfo | None = None, storage_options: dict | None = None):
        super().__init__()
        self.url = self.name = str(url)
        self._options = dict(storage_options or {})
        self._fs = self._path = None
        self._fs_pid = -1
        self.cache = cache if cache is not None else default_cache()
        self.info = info if info is not None else remote_info(self.url, *self._filesystem())
        self.size = self.info.size
        self.block_size = self.cache.block_size
        self.token = ("url", cache_key(self.url), self.info.version)  # tile cache keys
        self.cache.validate(self.info)
        self._lock = threading.Lock()
        self._memory = LRU(MEMORY_BYTES, size_of=len, keep_newest=True)
        self._inflight: dict[int, threading.Event] = {}
        self._pos = 0
        self._whole_fd: int | None = None
        self._warned_no_range = False
        self.bytes_fetched = self.bytes_from_cache = self.requests = 0
        if self.info.size is None:
            self._stream_whole_file()
        else:
            self._use_whole_file()

    def __repr__(self) -> str:
        return f"RemoteFile({self.url!r}, size={self.size})"

    # --------------------------------------------------------------- file-object API
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        data = self.pread(size, self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        lock = getattr(self, "_lock", None)  # None: __init__ failed early
        if lock is None:
            super().close()
            return
        with lock:
            fd, self._whole_fd = self._whole_fd, None
        if fd is not None:
            os.close(fd)
        super().close()

    # ---------------------------------------------------------------- block access
    def pread(self, size: int, offset: int) -> bytes:
        """``size`` bytes at ``offset`` (fewer at the end of the file); the position is
        not moved, so concurrent threads may call it."""
        if self.closed:
            raise ValueError(f"{self.url}: read of a closed file")
        if offset < 0 or size < 0:
            raise ValueError(f"{self.url}: pread needs a size and offset >= 0, got size "
                             f"{size} at offset {offset}")
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        if self._whole_fd is not None:
            data = os.pread(self._whole_fd, end - offset, offset)
            self._count(cached=len(data))
            return data
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        blocks = self._blocks(range(first, last + 1))
        if first == last:
            return blocks[first][offset - first * bs : end - first * bs]
        data = b"".join(blocks[i] for i in range(first, last + 1))
        return data[offset - first * bs : end - first * bs]

    def prefetch(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Make sure the blocks of every ``(offset, size)`` range are cached, fetching the
        missing ones concurrently (e.g. all the tiles of a region before decoding them)."""
        if self._whole_fd is not None:
            return
        bs = self.block_size
        wanted = sorted({i for offset, size in ranges if size > 0
                         for i in range(offset // bs, (min(offset + size, self.size) - 1) // bs
                                        + 1)})
        if wanted:
            self._blocks(wanted)

    def copy_to(self, out, chunk_bytes: int = 16 << 20) -> None:
        """Write the whole file to the binary file ``out``: blocks already cached are used,
        the rest is fetched in large range requests and not added to the block cache."""
        if self._whole_fd is not None:
            for offset in range(0, self.size, chunk_bytes):
                out.write(self.pread(chunk_bytes, offset))
            return
        bs = self.block_size
        per_chunk = max(1, chunk_bytes // bs)
        count = -(-self.size // bs)
        for first in range(0, count, per_chunk):
            indices = range(first, min(count, first + per_chunk))
            blocks = self._blocks(indices, store=False)
            for i in indices:
                out.write(blocks[i])

    def stats(self) -> dict[str, int]:
        """This file's ``bytes_fetched``, ``bytes_from_cache`` and ``requests``."""
        return {"bytes_fetched": self.bytes_fetched, "bytes_from_cache": self.bytes_from_cache,
                "requests": self.requests}

    # ------------------------------------------------------------------- internals
    def _filesystem(self):
        if self._fs is None or self._fs_pid != os.getpid():  # fsspec clients are per process
            self._fs, self._path = filesystem(self.url, **self._options)
            self._fs_pid = os.getpid()
        return self._fs, self._path

    def _use_whole_file(self) -> bool:
        """Read from the whole-file copy from now on, if there is one (True)."""
        if self._whole_fd is not None:
            return True
        path = self.cache.whole_file(self.info)
        if path is None:
            return False
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        with self._lock:  # two threads may get here at once: keep one descriptor
            if self._whole_fd is None and not self.closed:
                self._whole_fd, fd = fd, None
        if fd is not None:
            os.close(fd)
        return self._whole_fd is not None

    def _stream_whole_file(self) -> None:
        """No reported size, so no byte ranges: copy the whole file into the cache by one
        streaming download (unless it is there already) and read from the copy."""
        if self.cache.whole_file(self.info) is None:
            fs, path = self._filesystem()
            logger.info("%s: the store does not report the file's size; downloading the "
                        "whole file", self.url)

            def fill(tmp) -> None:
                stream_whole_file(fs, path, self.url, tmp)
                with self._lock:
                    self.bytes_fetched += os.path.getsize(tmp)
                    self.requests += 1

            self.cache.store_whole_file(self.info, fill)
        if not self._use_whole_file():
            raise StorageError(f"{self.url}: the store does not report the file's size, and "
                               "its whole-file copy left the cache at once (is the cache "
                               "limit too small?)")
        self.size = os.fstat(self._whole_fd).st_size

    def _block_length(self, index: int) -> int:
        return min(self.block_size, self.size - index * self.block_size)

    def _blocks(self, indices: Iterable[int], store: bool = True) -> dict[int, bytes]:
        indices = list(indices)
        found: dict[int, bytes] = {}
        for i in indices:
            block = self._memory.get(i)
            if block is not None:
                found[i] = block
        missing = []
        for i in indices:
            if i in found:
                continue
            block = self.cache.read_block(self.info, i)
            if block is not None and len(block) == self._block_length(i):
                found[i] = block
                self._count(cached=len(block))
                if store:
                    self._remember(i, block)
            else:
                missing.append(i)
        if missing and store and self._use_whole_file():  # another process copied it all
            for i in missing:
                found[i] = os.pread(self._whole_fd, self._block_length(i), i * self.block_size)
                self._count(cached=len(found[i]))
            missing = []
        if missing:
            found.update(self._fetch_once(missing) if store else self._fetch(missing, False))
        return found

    def _fetch_once(self, indices: list[int]) -> dict[int, bytes]:
        """Fetch blocks that no other thread is fetching; wait for those that one is."""
        mine, waits = [], []
        out: dict[int, bytes] = {}
        with self._lock:
            for i in indices:
                event = self._inflight.get(i)
                if i in self._memory:  # fetched by another thread since we looked
                    out[i] = self._memory.peek(i)
                elif event is None:
                    self._inflight[i] = threading.Event()
                    mine.append(i)
                else:
                    waits.append((i, event))
        try:
            if mine:
                out.update(self._fetch(mine, True))
        finally:
            with self._lock:
                for i in mine:
                    self._inflight.pop(i).set()
        for i, event in waits:
            event.wait()
            block = self._memory.peek(i)
            if block is None:  # the other fetch failed, or the block left memory already
                block = self.cache.read_block(self.info, i) or self._fetch([i], True)[i]
            out[i] = block
        return out

    def _fetch(self, indices: list[int], store: bool) -> dict[int, bytes]:
        bs = self.block_size
        runs = _runs(indices, max(1, MAX_REQUEST_BYTES // bs))
        starts = [run[0] * bs for run in runs]
        ends = [min(self.size, (run[-1] + 1) * bs) for run in runs]
        out = {}
        for run, start, end, data in zip(runs, starts, ends, self._get_ranges(starts, ends),
                                         strict=True):
            data = self._checked(data, start, end)
            self._count(fetched=len(data), requests=1)
            for k, i in enumerate(run):
                block = data[k * bs : (k + 1) * bs]
                out[i] = block
                if store:
                    self.cache.write_block(self.info, i, block)
                    self._remember(i, block)
        return out

    def _get_ranges(self, starts: list[int], ends: list[int]) -> list[bytes]:
        fs, path = self._filesystem()
        where = f"bytes {starts[0]}-{ends[-1] - 1}"
        extra = self._if_match(fs)
        try:
            if len(starts) == 1:
                results = [fs.cat_file(path, start=starts[0], end=ends[0], **extra)]
            else:
                results = fs.cat_ranges([path] * len(starts), starts, ends, on_error="return",
                                        **extra)
        except Exception as exc:
            raise self._error(exc, where) from exc
        for result, start, end in zip(results, starts, ends, strict=True):
            if isinstance(result, BaseException):
                raise self._error(result, f"bytes {start}-{end - 1}") from result
        return results

    def _if_match(self, fs) -> dict:
        """HTTP only: ask for the version that was opened (``If-Match: <strong ETag>``), so
        a file replaced while a handle is open fails with 412 instead of mixing versions.

        fsspec's HTTP file system replaces (does not merge) its ``headers`` request option
        with one given per call, so the caller's headers (``storage_options={"headers":
        {"Authorization": ...}}``, kept in ``fs.kwargs``) are copied in."""
        protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
        etag = self.info.etag
        if etag and not etag.startswith("W/") and {"http", "https"} & set(protocols):
            headers = dict((getattr(fs, "kwargs", None) or {}).get("headers") or {})
            headers["If-Match"] = etag
            return {"headers": headers}
        return {}

    def _error(self, exc: BaseException, where: str) -> StorageError:
        if isinstance(exc, FileNotFoundError):
            return StorageError(f"{self.url}: no such remote file (removed after it was "
                                "opened?)")
        if "payload" in type(exc).__name__.lower():  # aiohttp: body shorter than announced
            return StorageError(f"{self.url}: truncated remote file: the connection closed "
                                f"before the end of {where} ({exc})")
        if getattr(exc, "status", None) == 412:
            return StorageError(f"{self.url}: the remote file changed while it was open "
                                f"(HTTP 412 for {where}); open it again")
        if getattr(exc, "status", None) == 416:
            return StorageError(f"{self.url}: truncated remote file: the server refuses {where} "
                                f"of a file it reports as {self.size} bytes (HTTP 416)")
        from exaslide.storage.errors import describe

        return StorageError(describe(exc, self.url, f"read {where}"))

    def _checked(self, data: bytes, start: int, end: int) -> bytes:
        """The body of a range request, after checking its length."""
        if len(data) == end - start:
            return data
        if len(data) == self.size and end - start < self.size:  # server ignored Range
            if not self._warned_no_range:
                logger.warning("%s: the server ignores byte-range requests: every read "
                               "downloads the whole file", self.url)
                self._warned_no_range = True
            return data[start:end]
        raise StorageError(
            f"{self.url}: truncated or changed remote file: bytes {start}-{end - 1} of a "
            f"{self.size}-byte file came back as {len(data)} bytes (the server sends less "
            "than the size it reports); that range was not cached")

    def _remember(self, index: int, block: bytes) -> None:
        if index not in self._memory:
            self._memory.put(index, block)

    def _count(self, fetched: int = 0, cached: int = 0, requests: int = 0) -> None:
        with self._lock:
            self.bytes_fetched += fetched
            self.bytes_from_cache += cached
            self.requests += requests
        with _totals_lock:
            _totals["bytes_fetched"] += fetched
            _totals["bytes_from_cache"] += cached
            _totals["requests"] += requests


def stream_whole_file(fs, path: str, url: str, tmp) -> None:
    """Download a whole file to ``tmp`` with one streaming read (no byte ranges, no size
    check: for stores that report no size). ``fs.get_file`` is one GET for HTTP, where
    ``fs.open`` would first probe the size again."""
    try:
        fs.get_file(path, os.fspath(tmp))
    except OSError:
        raise
    except Exception as exc:
        raise StorageError(f"{url}: cannot download: {type(exc).__name__}: {exc}") from exc
    with _totals_lock:
        _totals["bytes_fetched"] += os.path.getsize(tmp)
        _totals["requests"] += 1


def _runs(indices: list[int], max_len: int) -> list[list[int]]:
    """Sorted indices grouped into runs of consecutive values, at most ``max_len`` long."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][-1] == i - 1 and len(runs[-1]) < max_len:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
