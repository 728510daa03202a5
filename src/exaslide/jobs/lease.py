"""The output lock on an object store: a lease object with an expiry.

Object stores have no ``flock``. A run that writes to ``s3://bucket/run`` holds the lease
``s3://bucket/run/.exaslide.lock.json``::

    {"owner": "<random token>", "host": "...", "pid": 123, "started": "...",
     "expires": 1764950000.0, "rank": null}

- **taking it**: when no live lease is there (none, or one past its ``expires``), the run
  writes its own, waits :data:`SETTLE_SECONDS` and reads it back: if another run wrote
  in between, the later write won and the loser stops with the holder's name (a store
  gives read-after-write consistency, as S3, Azure Blob and GCS do);
- **holding it**: a thread renews it every third of its time to live; a renewal that
  finds another owner (this run stalled past the expiry and another took over) marks the
  lease lost, and the engine writes no status after that (:meth:`ObjectLease.check`);
- **letting go**: deleted at the end of the run; a killed run's lease expires by itself
  (:data:`TTL_SECONDS`, ``EXASLIDE_LEASE_SECONDS``).

Ranks of one ``torchrun`` job each hold ``.exaslide.lock.rank<r>.json``; a plain run
refuses a folder with a live rank lease and the ranks refuse one with a live plain lease,
as with the local lock (:mod:`exaslide.jobs.lock`). The clocks of the machines that write
one folder must agree to within a fraction of the time to live (NTP does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import socket
import threading
import time

from exaslide.jobs.lock import LOCK_NAME, OutputLockedError
from exaslide.jobs.stage import JobError

logger = logging.getLogger(__name__)

#: seconds a lease lives without renewal (a killed run's folder is free after this)
TTL_SECONDS = 60.0
#: the longest time to live ``EXASLIDE_LEASE_SECONDS`` may set
MAX_TTL_SECONDS = 86400.0
#: seconds between writing a lease and reading it back to see who won
SETTLE_SECONDS = 0.5


class LeaseLostError(JobError):
    """This run's output lease was taken over by another run: it must write nothing
    more into the folder."""


def _expires(holder: dict) -> float:
    """A lease's expiry time; 0 (expired) when it is no number, NaN, or further ahead than
    the longest time to live allows (an edited or forged lease is replaced, not
    trusted)."""
    try:
        value = float(holder.get("expires") or 0)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if math.isnan(value) or value > time.time() + MAX_TTL_SECONDS + 60:
        return 0.0
    return value


def ttl_seconds() -> float:
    """``$EXASLIDE_LEASE_SECONDS`` or :data:`TTL_SECONDS` (at least 2 s)."""
    text = os.environ.get("EXASLIDE_LEASE_SECONDS")
    if not text:
        return TTL_SECONDS
    try:
        value = float(text)
    except ValueError:
        raise JobError(f"EXASLIDE_LEASE_SECONDS={text!r} is not a number of seconds") \
            from None
    if not 2 <= value <= MAX_TTL_SECONDS:
        raise JobError(f"EXASLIDE_LEASE_SECONDS={text!r}: give 2 to 86400 seconds")
    return value


class ObjectLease:
    """Context manager holding the lease of an object-store output folder.

    Args:
        fs, root: the fsspec file system and the folder's path in it.
        url: the folder's URL (for messages; without secrets).
        rank: the torchrun rank when ranks share the folder, else None.
    """

    def __init__(self, fs, root: str, url: str, rank: int | None = None):
        self.fs, self.root, self.url, self.rank = fs, root.rstrip("/"), url, rank
        self.token = secrets.token_hex(8)
        self.ttl = ttl_seconds()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _path(self, rank: int | None) -> str:
        suffix = "" if rank is None else f".rank{rank}"
        return f"{self.root}/{LOCK_NAME}{suffix}.json"

    @property
    def path(self) -> str:
        return self._path(self.rank)

    def _read(self, path: str) -> dict | None:
        with contextlib.suppress(FileNotFoundError):
            try:
                value = json.loads(self.fs.cat_file(path))
            except ValueError:
                return None  # unreadable: treated as absent (it is replaced)
            return value if isinstance(value, dict) else None
        return None

    def _live_holders(self) -> list[dict]:
        """The live leases that forbid this run: the same name (another owner), a plain
        run's for a rank, any rank's for a plain run."""
        names = [self.path]
        if self.rank is not None:
            names.append(self._path(None))
        else:
            with contextlib.suppress(FileNotFoundError):
                names += [p for p in self.fs.ls(self.root, detail=False)
                          if p.rsplit("/", 1)[-1].startswith(f"{LOCK_NAME}.rank")]
        now = time.time()
        found = []
        for name in names:
            holder = self._read(name)
            if holder and holder.get("owner") != self.token and \
                    _expires(holder) > now:
                found.append(holder)
        return found

    def _write(self) -> None:
        body = {"owner": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "expires": time.time() + self.ttl, "rank": self.rank}
        self.fs.pipe_file(self.path, (json.dumps(body) + "\n").encode())

    def _refuse(self, holders: list[dict]):
        text = "; ".join(
            f"pid {h.get('pid')} on {h.get('host')}"
            f"{'' if h.get('rank') is None else ' rank ' + str(h.get('rank'))}, since "
            f"{h.get('started')}, lease until "
            f"{time.strftime('%H:%M:%S', time.localtime(min(_expires(h), 4e9)))}"
            for h in holders)
        return OutputLockedError(
            f"{self.url}: another exaslide run is writing here ({text}); wait for it to "
            f"finish or use another --out (a killed run's lease expires after "
            f"{self.ttl:.0f} s; or delete {self.url}/{self.path.rsplit('/', 1)[-1]} if "
            "that run is dead)")

    def __enter__(self) -> ObjectLease:
        holders = self._live_holders()
        if holders:
            raise self._refuse(holders)
        self._write()
        time.sleep(SETTLE_SECONDS)
        mine = self._read(self.path)
        if not mine or mine.get("owner") != self.token:
            raise self._refuse([mine] if mine else [])
        self._thread = threading.Thread(target=self._renew, daemon=True,
                                        name="exaslide-lease")
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                current = self._read(self.path)
                if current is not None and current.get("owner") != self.token:
                    self.lost = True
                    logger.error("%s: the output lease was taken over by pid %s on %s; "
                                 "this run stops writing", self.url, current.get("pid"),
                                 current.get("host"))
                    return
                self._write()
            except Exception as exc:  # a store hiccup: try again at the next renewal
                logger.warning("%s: cannot renew the output lease: %s", self.url,
                               type(exc).__name__)

    def check(self) -> None:
        """Raise :class:`JobError` when the lease was lost (nothing may be written)."""
        if self.lost:
            raise LeaseLostError(f"{self.url}: this run lost its output lease to another run; "
                           "it stopped writing (rerun when the other run is done)")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if not self.lost:
            with contextlib.suppress(Exception):
                current = self._read(self.path)
                if current is not None and current.get("owner") == self.token:
                    self.fs.rm_file(self.path)
