"""peak_rss_mb measures this process, not a parent's peak."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from exaslide.resources import peak_rss_mb


def test_peak_grows_with_allocation_and_is_per_process():
    before = peak_rss_mb()
    block = np.ones(200 * 2**20, np.uint8)  # touch 200 MB
    assert peak_rss_mb() - before > 150
    del block
    child = subprocess.run([sys.executable, "-c", "from exaslide.resources import "
                            "peak_rss_mb; print(peak_rss_mb())"], capture_output=True,
                           text=True, check=True)
    assert float(child.stdout) < before + 100  # not our 200 MB peak (ru_maxrss would be)
