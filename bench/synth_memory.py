"""Benchmark: time and peak memory of writing synthetic slides of growing size.

Each size runs in a fresh subprocess (so ``ru_maxrss`` is that slide's peak). The baseline
is the raw level-0 RGB size, which a writer that holds the image in memory would need at
least: the ratio ``peak / raw`` shows that memory stays flat while the slide grows.
Usage: ``python bench/synth_memory.py [--sizes 10000 25000 50000]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

SCRIPT = """
import sys
from exaslide.resources import peak_rss_mb
from exaslide.synth import SynthSpec, write_synthetic_slide
side = int(sys.argv[2])
write_synthetic_slide(sys.argv[1], SynthSpec(width=side, height=side, tumours=4, seed=1))
print(peak_rss_mb())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 25_000, 50_000])
    args = parser.parse_args()
    print("| side (px) | pixels | seconds | peak RSS MB | raw RGB MB | peak / raw | file MB |")
    print("|-----------|--------|---------|-------------|------------|------------|---------|")
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sizes:
            path = os.path.join(tmp, f"s{side}.tif")
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", SCRIPT, path, str(side)],
                                  check=True, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            peak = float(done.stdout.strip())
            raw = side * side * 3 / 2**20
            size = os.path.getsize(path) / 2**20
            print(f"| {side:9d} | {side * side / 1e9:5.2f}G | {seconds:7.1f} | {peak:11.0f} "
                  f"| {raw:10.0f} | {peak / raw:10.3f} | {size:7.0f} |")
            os.unlink(path)


if __name__ == "__main__":
    main()
