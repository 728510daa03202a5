"""The output lock: one run at a time per output folder.

A second run into the same ``--out`` exits 2 with the lock holder's pid, host and start
time instead of deleting the first run's temporaries. The lock is an OS file lock
(``filelock``), released by the kernel when its process dies, so a killed run never
leaves a stale lock.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from exaslide.jobs.stage import JobError

LOCK_NAME = ".exaslide.lock"


class OutputLockedError(JobError):
    """Another run holds the output folder's lock."""


class OutputLock:
    """Context manager holding ``OUT/.exaslide.lock`` (per rank under torchrun: ranks of
    one run share the folder, two runs do not).

    Args:
        out: the output folder (created if missing).
        name: the lock file's name.
        wait: seconds to wait for the lock (0: fail at once).
    """

    def __init__(self, out: str | os.PathLike, name: str = LOCK_NAME, wait: float = 0.0):
        self.out = Path(out)
        self.path = self.out / name
        self.info = self.out / f"{name}.json"
        self.wait = wait
        self._lock = None

    def __enter__(self) -> OutputLock:
        from filelock import FileLock, Timeout

        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path), timeout=self.wait)
        try:
            self._lock.acquire()
        except Timeout:
            raise OutputLockedError(f"{self.out}: another exaslide run is writing here "
                                    f"({self._holder()}); wait for it to finish or use "
                                    "another --out") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.info.write_text(json.dumps(holder) + "\n", encoding="utf-8")
        return self

    def _holder(self) -> str:
        try:
            holder = json.loads(self.info.read_text(encoding="utf-8"))
            return f"pid {holder['pid']} on {holder['host']}, since {holder['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self.info.unlink(missing_ok=True)
            self._lock.release()
            self._lock = None
