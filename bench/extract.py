"""Benchmark: patch extraction from a synthetic 40,000 x 40,000 slide (256-px JPEG tiles).

Default: ``exaslide extract`` end to end through the CLI (a fresh process per run:
start-up, sampling, reading, blank test, JPEG encoding, tar shards, index) on a small
(20k) and a large (40k) slide: ``--materialize jpeg`` with 1 worker (in-process) and 2
workers (a Dask LocalCluster), index-only with 1 worker; interleaved, best of
``--repeats``. The marginal rate ``(P_large - P_small) / (T_large - T_small)`` cancels
the fixed start-up, which is reported as ``T_small - P_small / marginal``. The ceiling,
measured in the same run on the large slide's patches (one core, bytes in memory): decode
every stored tile once + encode every patch once (libjpeg-turbo, same quality).
``--baseline REV`` runs the same commands on the code of a git revision too (before /
after in one run, e.g. ``--baseline d8eee1d``).

``--reader`` adds the previous measurements: same patches (the 256-px level-0 grid over
tissue, read in region order):
  (a) naive loop: ``openslide.OpenSlide.read_region`` per patch (CLAM, histolab style),
  (b) exaslide engine on a Dask LocalCluster with 1 worker,
  (c) the same with 2 workers (region chunks of the slide run in parallel),
  (d) JPEG decode ceiling: every needed tile's bytes decoded once from memory,
and the engine alone in this process (the two interleaved, best of 3 each).
Then: random-per-class sampling (2,000 per class: mask + sampling + reading) on the same
slide, and peak RSS of the engine on a 10,000- and a 50,000-pixel slide (fresh processes).

Usage: ``python bench/extract.py [--side 40000] [--small 20000] [--repeats 3]
[--baseline REV] [--reader] [--naive 1500] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
    return x, y, region_chunks(x, y, 4096, 512)


def region_chunks(x, y, block: float, target: int) -> list[np.ndarray]:
    """Consecutive whole region blocks, at least ``target`` patches per chunk (the split
    of the previous release, kept for the reader measurements)."""
    block_id = (y // block).astype(np.int64) * (1 << 32) + (x // block).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, block_id[1:] != block_id[:-1]])
    chunks, begin = [], 0
    for s in starts[1:]:
        if s - begin >= target:
            chunks.append(np.arange(begin, s))
            begin = s
    chunks.append(np.arange(begin, len(x)))
    return chunks


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


def tile_blobs(path: Path, x, y, size: int) -> tuple[list[bytes], bytes, tuple[int, int]]:
    """The stored bytes of every level-0 tile that ``size``-px patches at ``(x, y)``
    touch (once each), the JPEG tables, and the tile size."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tw, th = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        needed = sorted({ty * across + tx for xx, yy in zip(x, y, strict=True)
                         for ty in range(yy // th, (yy + size - 1) // th + 1)
                         for tx in range(xx // tw, (xx + size - 1) // tw + 1)})
        with open(path, "rb") as fh:
            blobs = []
            for i in needed:
                fh.seek(page.dataoffsets[i])
                blobs.append(fh.read(page.databytecounts[i]))
        return blobs, page.jpegtables, (tw, th)


def decode_ceiling(path: Path, x, y) -> float:
    import imagecodecs

    blobs, tables, _ = tile_blobs(path, x, y, 1)
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


def cli_extract(manifest: Path, out: Path, workers: int, materialize: str | None,
                src: Path | None = None) -> tuple[float, int]:
    """``exaslide extract`` in a fresh process: (wall seconds, patches indexed)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "exaslide", "extract", str(manifest), "--out", str(out),
           "--workers", str(workers), *(["--materialize", materialize] if materialize else [])]
    env = dict(os.environ)
    if src is not None:  # another revision's code first on the path
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "extract_status.json").read_text())
    assert all(o["status"] == "done" for o in summary), summary
    return seconds, sum(int(o["result"]["patches"]) for o in summary)


def work_ceiling(path: Path, index: Path, quality: int = 90, repeats: int = 3):
    """Seconds to decode every stored tile the indexed patches touch once and to encode
    every patch once (imagecodecs = libjpeg-turbo, one core), best of ``repeats`` each;
    and the patch count. Each at its best: tile bytes in memory, decoded into one buffer
    16 bytes past a 32-byte boundary (see ``exaslide.patches.reader``); each patch copied
    (untimed) into one buffer, so the encoder reads it from the cache."""
    import imagecodecs
    import pyarrow.parquet as pq

    from exaslide.patches import PatchReader, PatchSpec
    from exaslide.slides.jpeg_tiles import aligned_empty

    table = pq.read_table(index, columns=["x", "y", "size"])
    x, y = table["x"].to_numpy(), table["y"].to_numpy()
    size = int(table["size"][0].as_py())
    blobs, tables, (tw, th) = tile_blobs(path, x.tolist(), y.tolist(), size)
    tile, patch = aligned_empty((th, tw, 3)), aligned_empty((size, size, 3))
    decode = encode = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for blob in blobs:
            imagecodecs.jpeg8_decode(blob, tables=tables, out=tile)
        decode = min(decode, time.perf_counter() - start)
        seconds = 0.0
        with PatchReader(str(path), PatchSpec(size=size)) as reader:
            for pixels in reader.iter_patches(x, y):
                patch[...] = pixels
                start = time.perf_counter()
                imagecodecs.jpeg8_encode(patch, level=quality)
                seconds += time.perf_counter() - start
        encode = min(encode, seconds)
    return decode, encode, len(x)


def _revision_source(rev: str, folder: Path) -> Path:
    """``src/`` of git revision ``rev`` of this repository, unpacked under ``folder``."""
    repo = Path(__file__).resolve().parents[1]
    target = folder / f"src-{rev}"
    if not target.exists():
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "src"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def _manifest(folder: Path, slide: Path) -> Path:
    manifest = folder / f"{slide.stem}.csv"
    manifest.write_text("slide_id,path,annotation,label,split\n"
                        f"{slide.stem},{slide},{slide.with_suffix('.xml')},,train\n")
    return manifest


def end_to_end_table(folder: Path, side: int, small: int, repeats: int,
                     baseline: str | None) -> None:
    """The CLI table (module doc): marginal rates, fixed costs, ratios to the ceiling."""
    slides = {"small": make_slide(folder, small), "large": make_slide(folder, side)}
    manifests = {k: _manifest(folder, v) for k, v in slides.items()}
    codes = {"this": None}
    if baseline:
        codes[baseline] = _revision_source(baseline, folder)
    # index-only at 1 worker only: sampling a slide is one task, which 2 workers cannot share
    runs = [(code, mode, w) for code in codes for mode, w in (("jpeg", 1), ("jpeg", 2),
                                                              (None, 1))]
    best: dict = {}
    for _ in range(repeats):  # interleaved: the machine drifts
        for code, mode, workers in runs:
            for name, manifest in manifests.items():
                seconds, patches = cli_extract(manifest, folder / "e2e", workers, mode,
                                               codes[code])
                key = (code, mode, workers, name)
                best[key] = (min(seconds, best.get(key, (seconds,))[0]), patches)
    cli_extract(manifests["large"], folder / "e2e", 1, "jpeg")
    decode, encode, n = work_ceiling(slides["large"],
                                     folder / "e2e" / "index" / f"{slides['large'].stem}.parquet",
                                     repeats=repeats)
    ceiling = n / (decode + encode)
    print(f"slides {small:,} and {side:,} px (256-px grid patches), {os.cpu_count()} cores, "
          f"best of {repeats}\n")
    print(f"ceiling, 1 core: decode each stored tile once {n / decode:,.0f} patches/s, "
          f"encode each patch once {n / encode:,.0f}/s, both: {ceiling:,.0f} patches/s\n")
    print("| code | extract | workers | small: patches, s | large: patches, s | marginal "
          "patches/s | fixed s | x ceiling | x 1 worker |")
    print("|---|---|---|---|---|---|---|---|---|")
    one: dict = {}
    for code, mode, workers in runs:
        (ts, ps), (tl, pl) = best[(code, mode, workers, "small")], \
            best[(code, mode, workers, "large")]
        marginal = (pl - ps) / (tl - ts)
        fixed = ts - ps / marginal
        one.setdefault((code, mode), marginal)
        ratio = f"{marginal / ceiling:.2f}" if mode == "jpeg" else ""
        print(f"| {code} | {mode or 'index only'} | {workers} | {ps:,}, {ts:.2f} | "
              f"{pl:,}, {tl:.2f} | {marginal:,.0f} | {fixed:.2f} | {ratio} | "
              f"{marginal / one[(code, mode)]:.2f} |")
    print("\nmarginal = (P_large - P_small) / (T_large - T_small); fixed = T_small - "
          "P_small / marginal (process start, imports, Dask cluster start and stop)\n")


def reader_tables(folder: Path, side: int, naive_count: int) -> None:
    """The measurements of the previous release (module doc)."""
    path = make_slide(folder, side)
    x, y, chunks = grid_patches(path)
    print(f"slide {side} x {side}, {len(x)} tissue patches of 256 px, "
          f"{len(chunks)} region chunks, {os.cpu_count()} cores\n")
    # each measurement in a fresh process (allocator state after OpenSlide's reads skews
    # later ones); the machine is shared and drifts, so the engine and the decode ceiling
    # are interleaved and the best of 3 of each is kept
    np.savez(folder / "xy.npz", x=x, y=y)
    a = _measure("naive", path, folder / "xy.npz", naive_count)["naive"]
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
    for other in (10_000, 50_000):
        slide = make_slide(folder, other)
        sx, sy, _ = grid_patches(slide)  # sampled here: the child process only extracts
        np.savez(folder / "xy.npz", x=sx, y=sy)
        done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(slide),
                               str(folder / "xy.npz")], check=True, capture_output=True,
                              text=True)
        n, rss = done.stdout.split()
        print(f"| {other:,} | {int(n):,} | {float(rss):.0f} |")


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--measure":
        _measure_here(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=40_000)
    parser.add_argument("--small", type=int, default=20_000,
                        help="side of the small slide (marginal rates)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also run the CLI of this git revision (before / after)")
    parser.add_argument("--reader", action="store_true",
                        help="also the reader measurements of the previous release")
    parser.add_argument("--naive", type=int, default=1500, help="patches for the naive loop")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep slides in")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="exaslide-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    end_to_end_table(folder, args.side, args.small, args.repeats, args.baseline)
    if args.reader:
        reader_tables(folder, args.side, args.naive)
    shutil.rmtree(folder / "e2e", ignore_errors=True)


if __name__ == "__main__":
    main()
