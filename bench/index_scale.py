"""Benchmark: a CAMELYON-scale patch index (500 slides x 66,000 patches = 33 M rows).

Writes one Parquet file per slide with the real writer (``write_slide_index``), then, each
in a fresh process so that peak RSS belongs to that step: count the rows, read two columns
of the tumour rows of the train split (filter pushed down), and draw a class-balanced
sample. The baseline is reading the whole index into memory (``to_table()``).
Usage: ``python bench/index_scale.py [--slides 500] [--rows 66000] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUERIES = {
    "count rows": "index.count_rows()",
    "read whole index (baseline)": "index.to_table().num_rows",
    "train tumour rows, 2 columns": "index.to_table(columns=['slide_id', 'x'], filter="
                                    "(ds.field('split') == 'train') & "
                                    "(ds.field('label') == 'tumour')).num_rows",
    "balanced by label, 100k per class": "balanced_sample(index, ('label',), 100_000).num_rows",
}

SCRIPT = """
import json, sys, time
import pyarrow.dataset as ds
from exaslide.patches import balanced_sample, open_index
from exaslide.resources import peak_rss_mb
index = open_index(sys.argv[1])
start = time.perf_counter()
rows = eval(sys.argv[2])
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - start,
                  "rss": peak_rss_mb()}))
"""


def write_index(folder: Path, slides: int, rows: int) -> float:
    from exaslide.patches.index import make_table, write_slide_index

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for s in range(slides):
        slide_id = f"slide_{s:04d}"
        x = (np.arange(rows) % 256) * 256
        y = (np.arange(rows) // 256) * 256
        table = make_table({
            "key": [f"{slide_id}_x{a}_y{b}" for a, b in zip(x, y, strict=True)],
            "slide_id": slide_id, "x": x, "y": y, "level": 0, "mpp": None, "size": 256,
            "footprint": 256.0, "label": np.where(rng.random(rows) < 0.1, "tumour", "normal"),
            "tissue_fraction": rng.random(rows, dtype=np.float32),
            "tumour_fraction": rng.random(rows, dtype=np.float32),
            "split": ("train", "val", "test")[s % 3], "centre": str(s % 5), "shard": None})
        write_slide_index(table, folder / "index" / f"{slide_id}.parquet")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=500)
    parser.add_argument("--rows", type=int, default=66_000)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="exaslide-index-"))
    if not (folder / "index").is_dir():
        seconds = write_index(folder, args.slides, args.rows)
        print(f"wrote {args.slides} x {args.rows:,} rows in {seconds:.0f} s")
    size = sum(p.stat().st_size for p in (folder / "index").iterdir()) / 2**20
    print(f"index: {size:,.0f} MB on disk\n")
    print("| query | rows | seconds | peak RSS MB |")
    print("|---|---|---|---|")
    for name, expression in QUERIES.items():
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), expression],
                              check=True, capture_output=True, text=True)
        result = json.loads(done.stdout)
        print(f"| {name} | {result['rows']:,} | {result['seconds']:.2f} | "
              f"{result['rss']:,.0f} |")


if __name__ == "__main__":
    main()
