"""Benchmark: patch extraction from a synthetic 40,000 x 40,000 slide (256-px JPEG tiles).

Same run, same patches (the 256-px level-0 grid over tissue, read in region order):
  (a) naive loop: ``openslide.OpenSlide.read_region`` per patch (CLAM, histolab style),
  (b) exaslide engine on a Dask LocalCluster with 1 worker,
  (c) the same with 2 workers (region chunks of the slide run in parallel),
  (d) JPEG decode ceiling: every needed tile's bytes decoded once from memory,
and the engine alone in this process (the two interleaved, best of 3 each).
Then: random-per-class sampling (2,000 per class: mask + sampling + reading) on the same
slide, and peak RSS of the engine on a 10,000- and a 50,000-pixel slide (fresh processes).

Usage: ``python bench/extract.py [--side 40000] [--naive 1500] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_slide(folder: Path, side: int) -> Path:
    from exaslide.synth import SynthSpec, write_synthetic_slide

    path = folder / f"bench_{side}.tif"
    if not path.exists():
        spec = SynthSpec(width=side, height=side, tumours=6, seed=40, mpp=0.25, quality=85)
        write_synthetic_slide(path, spec)
    return path


def grid_patches(path: Path):
    from exaslide.annotations import read_annotations
    from exaslide.patches import PatchSpec, SamplingOptions, sample_patches
    from exaslide.patches.job import region_order
    from exaslide.slides import open_slide

    with open_slide(path) as slide:
        sampled = sample_patches(slide, read_annotations(path.with_suffix(".xml")),
                                 PatchSpec(size=256), SamplingOptions())
    order = region_order(sampled.x, sampled.y, 4096)
    x, y = sampled.x[order], sampled.y[order]
    return x, y, [np.arange(a, min(a + 512, len(x))) for a in range(0, len(x), 512)]


def read_chunk(path: str, xs, ys) -> tuple[int, float]:
    """A Dask task: read patches with the engine; returns (count, worker peak RSS MB)."""
    from exaslide.patches import PatchReader, PatchSpec
    from exaslide.resources import peak_rss_mb

    with PatchReader(path, PatchSpec(size=256)) as reader:
        n = sum(1 for _ in reader.iter_patches(xs, ys))
    return n, peak_rss_mb()


def naive(path: Path, x, y, count: int) -> float:
    import openslide

    pick = np.random.default_rng(0).choice(len(x), min(count, len(x)), replace=False)
    slide = openslide.OpenSlide(str(path))
    start = time.perf_counter()
    for i in np.sort(pick):
        slide.read_region((int(x[i]), int(y[i])), 0, (256, 256))
    return len(pick) / (time.perf_counter() - start)


def dask_rate(path: Path, x, y, chunks, workers: int) -> tuple[float, float]:
    from distributed import Client, wait

    from exaslide.jobs.executors import local_cluster

    with local_cluster(workers) as cluster, Client(cluster) as client:
        client.run(read_chunk, str(path), x[:1], y[:1])  # imports and page cache warm

        start = time.perf_counter()
        futures = [client.submit(read_chunk, str(path), x[c], y[c], pure=False)
                   for c in chunks]
        wait(futures)
        seconds = time.perf_counter() - start
        results = client.gather(futures)
    assert sum(n for n, _ in results) == len(x)
    return len(x) / seconds, max(r for _, r in results)


def engine_rate(path: Path, x, y) -> float:
    from exaslide.patches import PatchReader, PatchSpec

    with PatchReader(str(path), PatchSpec(size=256)) as reader:
        start = time.perf_counter()
        for _ in reader.iter_patches(x, y):
            pass
        return len(x) / (time.perf_counter() - start)


def decode_ceiling(path: Path, x, y) -> float:
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tw, th, across = page.tilewidth, page.tilelength, -(-page.imagewidth // page.tilewidth)
        needed = sorted({(yy // th) * across + xx // tw for xx, yy in zip(x, y, strict=True)})
        with open(path, "rb") as fh:
            blobs = []
            for i in needed:
                fh.seek(page.dataoffsets[i])
                blobs.append(fh.read(page.databytecounts[i]))
        tables = page.jpegtables
    start = time.perf_counter()
    for blob in blobs:
        imagecodecs.jpeg8_decode(blob, tables=tables)
    return len(blobs) / (time.perf_counter() - start)  # one 256-px tile = one patch


def end_to_end(path: Path, workers: int, folder: Path) -> float:
    """``run_extraction`` on the slide (sampling, reading, JPEG shards, index): patches/s
    including cluster start-up."""
    import shutil

    from exaslide.manifest import ManifestEntry
    from exaslide.patches import ExtractOptions, run_extraction

    entry = ManifestEntry("bench", path, path.with_suffix(".xml"), "tumour", "train")
    out = folder / f"extract_{workers}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    [outcome] = run_extraction([entry], out, ExtractOptions(materialize="jpeg",
                                                           chunk_patches=512),
                               workers=workers)
    return outcome.patches / (time.perf_counter() - start)


def random_per_class(path: Path) -> tuple[float, float, dict]:
    from exaslide.annotations import read_annotations
    from exaslide.patches import PatchReader, PatchSpec, SamplingOptions, sample_patches
    from exaslide.slides import open_slide

    start = time.perf_counter()
    with open_slide(path) as slide:
        sampled = sample_patches(slide, read_annotations(path.with_suffix(".xml")),
                                 PatchSpec(size=256),
                                 SamplingOptions(sampler="random", per_class=2000), key="b")
    sampling = time.perf_counter() - start
    with PatchReader(path, PatchSpec(size=256)) as reader:
        for _ in reader.iter_patches(sampled.x, sampled.y):
            pass
    return sampling, time.perf_counter() - start, sampled.counts()


RSS_SCRIPT = """
import sys
import numpy as np
from exaslide.patches import PatchReader, PatchSpec
from exaslide.resources import peak_rss_mb
xy = np.load(sys.argv[2])
with PatchReader(sys.argv[1], PatchSpec(size=256)) as reader:
    n = sum(1 for _ in reader.iter_patches(xy["x"], xy["y"]))
print(n, peak_rss_mb())
"""


def _measure(what: str, path: Path, xy: Path, count: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--measure", what, str(path), str(xy),
                           str(count)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def _measure_here(what: str, path: Path, xy_file: Path, count: int) -> None:
    data = np.load(xy_file)
    x, y = data["x"], data["y"]
    if what == "naive":
        print(json.dumps({"naive": naive(path, x, y, count)}))
        return
    d = engine = 0.0
    for _ in range(3):
        d = max(d, decode_ceiling(path, x, y))
        engine = max(engine, engine_rate(path, x, y))
    print(json.dumps({"ceiling": d, "engine": engine}))


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--measure":
        _measure_here(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=40_000)
    parser.add_argument("--naive", type=int, default=1500, help="patches for the naive loop")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep slides in")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="exaslide-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = make_slide(folder, args.side)
    x, y, chunks = grid_patches(path)
    print(f"slide {args.side} x {args.side}, {len(x)} tissue patches of 256 px, "
          f"{len(chunks)} region chunks, {os.cpu_count()} cores\n")
    # each measurement in a fresh process (allocator state after OpenSlide's reads skews
    # later ones); the machine is shared and drifts, so the engine and the decode ceiling
    # are interleaved and the best of 3 of each is kept
    np.savez(folder / "xy.npz", x=x, y=y)
    a = _measure("naive", path, folder / "xy.npz", args.naive)["naive"]
    fast = _measure("fast", path, folder / "xy.npz", 0)
    d, engine = fast["ceiling"], fast["engine"]
    b, rss_b = dask_rate(path, x, y, chunks, 1)
    c, rss_c = dask_rate(path, x, y, chunks, 2)
    print("| method | patches/s | peak RSS per worker MB |")
    print("|---|---|---|")
    print(f"| (a) openslide.read_region loop | {a:,.0f} | |")
    print(f"| exaslide engine in this process | {engine:,.0f} | |")
    print(f"| (b) exaslide, 1 worker | {b:,.0f} | {rss_b:.0f} |")
    print(f"| (c) exaslide, 2 workers | {c:,.0f} | {rss_c:.0f} |")
    print(f"| (d) JPEG decode ceiling, 1 core | {d:,.0f} | |")
    print(f"\nb/a = {b / a:.1f}   c/b = {c / b:.2f}   b/d = {b / d:.2f}\n")
    for workers in (1, 2):
        rate = end_to_end(path, workers, folder)
        print(f"exaslide extract --materialize jpeg, {workers} worker(s), end to end "
              f"(cluster start, sampling, reading, encoding, index): {rate:,.0f} patches/s")
    print()
    sampling, total, counts = random_per_class(path)
    print(f"random per class (2,000 requested per class, got {counts}): mask + sampling "
          f"{sampling:.2f} s, with reading {total:.2f} s (one core)\n")
    print("| slide side | patches | engine peak RSS MB |")
    print("|---|---|---|")
    for side in (10_000, 50_000):
        slide = make_slide(folder, side)
        sx, sy, _ = grid_patches(slide)  # sampled here: the child process only extracts
        np.savez(folder / "xy.npz", x=sx, y=sy)
        done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(slide),
                               str(folder / "xy.npz")], check=True, capture_output=True,
                              text=True)
        n, rss = done.stdout.split()
        print(f"| {side:,} | {int(n):,} | {float(rss):.0f} |")


if __name__ == "__main__":
    main()
