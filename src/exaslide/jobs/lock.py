"""The output lock: one run at a time per output folder.

A second run into the same ``--out`` exits 2 with the lock holder's pid, host and start
time instead of deleting the first run's temporaries. The lock is an OS file lock
(``flock``), released by the kernel when its process dies, so a killed run never leaves a
stale lock. The ranks of one ``torchrun`` job share the folder: each holds
``OUT/.exaslide.lock`` *shared* and its own ``OUT/.exaslide.lock.rank<r>`` exclusively,
so a plain run (which needs ``.exaslide.lock`` exclusively) and a torchrun job cannot
write the same folder at once, nor can two jobs' ranks of the same number.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from exaslide.jobs.stage import JobError

LOCK_NAME = ".exaslide.lock"


class OutputLockedError(JobError):
    """Another run holds the output folder's lock."""


class _FileLock:
    """One ``flock`` on one file (shared or exclusive, never waiting)."""

    def __init__(self, path: Path, shared: bool = False):
        self.path, self.shared, self.fd = path, shared, None

    def acquire(self) -> bool:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


class OutputLock:
    """Context manager holding the output folder's lock (see the module doc).

    Args:
        out: the output folder (created if missing).
        rank: this process's torchrun rank when the folder is shared by ranks (None: a
            plain run, which takes the folder for itself).
    """

    def __init__(self, out: str | os.PathLike, rank: int | None = None):
        self.out = Path(out)
        self.rank = rank
        self._locks: list[_FileLock] = []
        self._created = False

    @property
    def info(self) -> Path:
        """Where the holder writes its pid, host and start time."""
        suffix = "" if self.rank is None else f".rank{self.rank}"
        return self.out / f"{LOCK_NAME}{suffix}.json"

    def __enter__(self) -> OutputLock:
        self._created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        wanted = [_FileLock(self.out / LOCK_NAME, shared=self.rank is not None)]
        if self.rank is not None:
            wanted.append(_FileLock(self.out / f"{LOCK_NAME}.rank{self.rank}"))
        for lock in wanted:
            if not lock.acquire():
                self._release()
                raise OutputLockedError(f"{self.out}: another exaslide run is writing here "
                                        f"({self._holders()}); wait for it to finish or "
                                        "use another --out")
            self._locks.append(lock)
        try:
            from exaslide.atomic import write_text

            write_text(self.info, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                              "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                              "rank": self.rank}) + "\n")
        except BaseException:
            self._release()
            raise
        return self

    def _holders(self) -> str:
        found = []
        for path in sorted(self.out.glob(f"{LOCK_NAME}*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                holder = json.loads(path.read_text(encoding="utf-8"))
                rank = "" if holder.get("rank") is None else f" rank {holder['rank']}"
                found.append(f"pid {holder['pid']} on {holder['host']}{rank}, since "
                             f"{holder['started']}")
        return "; ".join(found) or "holder unknown"

    def _release(self) -> None:
        for lock in reversed(self._locks):
            lock.release()
        self._locks = []

    def __exit__(self, *exc) -> None:
        if self._locks:
            self.info.unlink(missing_ok=True)
            self._release()
        if self._created:  # a folder this run made and left empty (it failed early) goes
            with contextlib.suppress(OSError):
                if all(p.name.startswith(LOCK_NAME) for p in self.out.iterdir()):
                    for path in self.out.iterdir():
                        path.unlink()
                    self.out.rmdir()
