"""peak_rss_mb measures this process, not a parent's peak."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from exaslide.resources import peak_rss_mb


def _current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))


def test_peak_grows_with_allocation_and_is_per_process():
    block = np.ones(300 * 2**20, np.uint8)  # touch 300 MB on top of what is resident now
    resident = _current_rss_mb()
    assert peak_rss_mb() >= resident > 300
    del block
    child = subprocess.run([sys.executable, "-c", "from exaslide.resources import "
                            "peak_rss_mb; print(peak_rss_mb())"], capture_output=True,
                           text=True, check=True)
    assert float(child.stdout) < 200  # not our peak (ru_maxrss would report it)
