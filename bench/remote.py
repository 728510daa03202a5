"""Benchmark: reading slides from and writing extractions to S3 (a local moto server)
against the local disk, in the same run.

The script starts its own moto S3 server on 127.0.0.1 (``python -m moto.server``, a child
process, stopped at the end, also on error), configures this process for it the standard
way (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_ENDPOINT_URL``), writes a
synthetic slide (256-px JPEG tiles) and uploads it. Then, interleaved, best of
``--repeats``:

(a) reading: the same ``--patches`` random 256-px level-0 patches (any offset, so a patch
    touches up to 4 tiles) with ``open_slide(...).read_region``, open included:
    - local file, default backend (OpenSlide for a generic TIFF: what a user gets);
    - local file, tifffile backend (the code path remote TIFFs use: the fair baseline);
    - S3 cold: a fresh, empty disk cache (``EXASLIDE_CACHE_DIR``) and fsspec's instance
      cache cleared, every repeat;
    - S3 warm: the same reads again through the cache the cold run filled (a new handle,
      so decoded tiles are not in memory; one HEAD request at open);
    - S3 cold, sparse: only the first ``--sparse`` patches, cold (each needed tile costs
      a whole 256 KiB cache block: the bytes ratio of sparse access).
    Bytes and range requests come from ``exaslide.storage.io_stats()``. The ceiling is
    the bytes of the tiles the patches need, each fetched once (tile offsets and sizes
    from the local file's TIFF directory); the time ceiling of the cold read is those
    bytes at the rate of one whole-object GET from the same server plus the local
    tifffile read.
(b) writing: ``run_extraction`` (``materialize="jpeg"``, ``scheduler="inline"``) of a small
    cohort from ``exaslide.synth.make_cohort`` into a local folder and into
    ``s3://bench/write-<i>`` (a fresh folder each time: nothing is resumed). MB/s is the
    bytes of the outputs over the wall time. The ceiling for the S3 overhead: ``fs.put``
    of the local run's files (upload alone).

The server shares this machine's cores with the client (moto is a Python server): the
S3 rates are a lower bound of what a real store gives, and the bytes are exact.

Usage: ``python bench/remote.py [--quick] [--patches 512] [--sparse 64]
[--width 16384 --height 12288] [--cohort-side 8192]
[--slides 3] [--repeats 3] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

SIZE = 256
BUCKET = "bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAEXASLIDEBENCH000", "AWS_SECRET_ACCESS_KEY":
               "exaslide-bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


# -- the server ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_server(folder: Path):
    """A moto S3 server on 127.0.0.1; this process's environment set for it. Yields its
    endpoint; the server is stopped on the way out, whatever happened."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(folder / "moto.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto exited with code {process.returncode}; see "
                                   f"{folder / 'moto.log'}")
            try:
                urllib.request.urlopen(endpoint + "/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answered
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto did not answer within 60 s") from None
                time.sleep(0.1)
        os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def reset_fsspec() -> None:
    """Forget fsspec's cached S3 file systems (and their connection pools)."""
    import fsspec

    fsspec.get_filesystem_class("s3").clear_instance_cache()


def s3fs():
    import fsspec

    return fsspec.filesystem("s3")


# -- (a) reading -----------------------------------------------------------------------
def make_slide(folder: Path, width: int, height: int) -> Path:
    from exaslide.synth import SynthSpec, write_synthetic_slide

    path = folder / f"remote_{width}x{height}.tif"
    write_synthetic_slide(path, SynthSpec(width=width, height=height, tumours=3, seed=7,
                                          mpp=0.25, quality=85))
    return path


def needed_tile_bytes(path: Path, x, y) -> tuple[int, int, int]:
    """(bytes of the level-0 tiles the patches touch, each once; those tiles; the
    level's tiles)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tw, th = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        needed = {ty * across + tx for xx, yy in zip(x, y, strict=True)
                  for ty in range(yy // th, (yy + SIZE - 1) // th + 1)
                  for tx in range(xx // tw, (xx + SIZE - 1) // tw + 1)}
        return (sum(int(page.databytecounts[i]) for i in needed), len(needed),
                len(page.dataoffsets))


def read_patches(where: str, x, y, backend: str | None = None) -> dict:
    """Open the slide, read every patch, close: seconds (open included), seconds of the
    open alone, and the io_stats deltas."""
    from exaslide.slides import open_slide
    from exaslide.storage import io_stats, reset_io_stats

    reset_io_stats()
    start = time.perf_counter()
    with open_slide(where, backend=backend) as slide:
        opened = time.perf_counter() - start
        header = io_stats()["bytes_fetched"]
        for xx, yy in zip(x, y, strict=True):
            slide.read_region((int(xx), int(yy)), (SIZE, SIZE), level=0)
        used = slide.backend
    seconds = time.perf_counter() - start
    stats = io_stats()
    return {"seconds": seconds, "open_seconds": opened, "header_bytes": header,
            "bytes_fetched": stats["bytes_fetched"], "requests": stats["requests"],
            "bytes_from_cache": stats["bytes_from_cache"], "backend": used}


def bulk_get_rate(url: str, repeats: int) -> float:
    """Bytes/s of one whole-object GET from the server (the transfer ceiling)."""
    fs = s3fs()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        data = fs.cat_file(url)
        best = max(best, len(data) / (time.perf_counter() - start))
    return best


def reading(folder: Path, args) -> dict:
    slide = make_slide(folder, args.width, args.height)
    url = f"s3://{BUCKET}/slides/{slide.name}"
    s3fs().put_file(str(slide), url)
    rng = np.random.default_rng(0)
    x = rng.integers(0, args.width - SIZE, args.patches)
    y = rng.integers(0, args.height - SIZE, args.patches)
    ceiling_bytes, tiles, level_tiles = needed_tile_bytes(slide, x, y)
    sparse_bytes, sparse_tiles, _ = needed_tile_bytes(slide, x[:args.sparse],
                                                      y[:args.sparse])
    best: dict[str, dict] = {}

    def keep(name: str, result: dict) -> None:
        if name not in best or result["seconds"] < best[name]["seconds"]:
            best[name] = result

    for i in range(args.repeats):  # interleaved: the machine drifts
        keep("local, default backend", read_patches(str(slide), x, y))
        keep("local, tifffile", read_patches(str(slide), x, y, backend="tifffile"))
        cache = folder / f"cache-{i}"
        os.environ["EXASLIDE_CACHE_DIR"] = str(cache)
        reset_fsspec()
        keep("S3 cold", read_patches(url, x, y))
        keep("S3 warm", read_patches(url, x, y))
        shutil.rmtree(cache, ignore_errors=True)
        if args.sparse:
            os.environ["EXASLIDE_CACHE_DIR"] = str(folder / f"cache-sparse-{i}")
            reset_fsspec()
            keep("S3 cold, sparse", read_patches(url, x[:args.sparse], y[:args.sparse]))
            shutil.rmtree(folder / f"cache-sparse-{i}", ignore_errors=True)
    get_rate = bulk_get_rate(url, args.repeats)
    return {"slide": {"width": args.width, "height": args.height,
                      "bytes": slide.stat().st_size},
            "patches": args.patches, "needed_tiles": tiles, "level0_tiles": level_tiles,
            "needed_bytes": ceiling_bytes, "sparse": args.sparse,
            "sparse_needed_tiles": sparse_tiles, "sparse_needed_bytes": sparse_bytes,
            "bulk_get_bytes_per_s": get_rate,
            "runs": best}


def print_reading(r: dict) -> None:
    n, needed = r["patches"], r["needed_bytes"]
    runs = r["runs"]
    base = runs["local, tifffile"]["seconds"]
    print(f"slide {r['slide']['width']:,} x {r['slide']['height']:,} px, "
          f"{r['slide']['bytes'] / 1e6:.1f} MB; {n} random {SIZE}-px level-0 patches touch "
          f"{r['needed_tiles']} of {r['level0_tiles']} level-0 tiles, "
          f"{needed / 1e6:.2f} MB ({needed / n / 1e3:.1f} KB per patch)\n")
    print("| source | backend | patches | patches/s | x local tifffile | open s | "
          "KB fetched per patch | range requests | fetched / needed |")
    print("|---|---|---|---|---|---|---|---|---|")
    base_rate = n / base
    for name, run in runs.items():
        count, want = (r["sparse"], r["sparse_needed_bytes"]) if "sparse" in name \
            else (n, needed)
        fetched, rate = run["bytes_fetched"], count / run["seconds"]
        ratio = f"{fetched / want:.2f}" if fetched else "0"
        print(f"| {name} | {run['backend']} | {count} | {rate:,.0f} | "
              f"{rate / base_rate:.2f} | {run['open_seconds']:.3f} | "
              f"{fetched / count / 1e3:.1f} | {run['requests']} | {ratio} |")
    cold = runs["S3 cold"]
    floor = needed / r["bulk_get_bytes_per_s"] + base
    if "S3 cold, sparse" in runs:
        print(f"\nsparse: the first {r['sparse']} patches touch {r['sparse_needed_tiles']} "
              f"tiles, {r['sparse_needed_bytes'] / 1e3:.0f} KB")
    print(f"\nceiling (cold): the needed tiles once at the whole-object GET rate "
          f"({r['bulk_get_bytes_per_s'] / 1e6:.0f} MB/s) + the local tifffile read = "
          f"{floor:.2f} s ({n / floor:,.0f} patches/s); S3 cold took "
          f"{cold['seconds']:.2f} s ({floor / cold['seconds']:.2f} of the ceiling); "
          f"of its fetched bytes, {cold['header_bytes'] / 1e3:.0f} KB were read at open "
          "(TIFF directories, tile offsets)\n")


# -- (b) writing -----------------------------------------------------------------------
def extract(entries, out: str) -> float:
    from exaslide.patches import ExtractOptions, run_extraction

    start = time.perf_counter()
    outcomes = run_extraction(entries, out, ExtractOptions(materialize="jpeg"),
                              scheduler="inline")
    seconds = time.perf_counter() - start
    bad = [o for o in outcomes if o.status != "done"]
    if bad:
        raise RuntimeError(f"extraction into {out} failed: {bad}")
    return seconds


def output_bytes(folder: Path) -> tuple[int, int, list[Path]]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(1 for _ in files), files


def writing(folder: Path, args) -> dict:
    from exaslide.manifest import read_manifest
    from exaslide.synth import SynthSpec, make_cohort

    manifest = make_cohort(folder / "cohort", args.slides, tumour_fraction=1.0, seed=3,
                           base=SynthSpec(width=args.cohort_side, height=args.cohort_side,
                                          tumours=2, mpp=0.25, quality=85))
    entries = read_manifest(manifest)
    os.environ["EXASLIDE_CACHE_DIR"] = str(folder / "write-cache")
    fs = s3fs()
    local_s, s3_s, put_s = [], [], []
    nbytes = nfiles = 0
    patches = 0
    for i in range(args.repeats):
        out = folder / f"write-{i}"
        local_s.append(extract(entries, str(out)))
        nbytes, nfiles, files = output_bytes(out)
        reset_fsspec()
        s3_s.append(extract(entries, f"s3://{BUCKET}/write-{i}"))
        target = f"{BUCKET}/put-{i}"
        start = time.perf_counter()
        fs.put([str(p) for p in files],
               [f"{target}/{p.relative_to(out).as_posix()}" for p in files])
        put_s.append(time.perf_counter() - start)
        if not patches:
            patches = sum(json.loads(p.read_text())["result"].get("patches", 0)
                          for p in (out / "status").glob("*.json"))
        shutil.rmtree(out)
    remote = sum(info["size"] for info in fs.find(f"{BUCKET}/write-0", detail=True).values())
    return {"slides": args.slides, "side": args.cohort_side, "patches": patches,
            "output_bytes": nbytes, "output_files": nfiles, "s3_object_bytes": remote,
            "local_seconds": min(local_s), "s3_seconds": min(s3_s),
            "put_seconds": min(put_s)}


def print_writing(w: dict) -> None:
    mb = w["output_bytes"] / 1e6
    local, s3, put = w["local_seconds"], w["s3_seconds"], w["put_seconds"]
    print(f"extraction (materialize jpeg, inline) of {w['slides']} synthetic slides of about "
          f"{w['side']:,} px: {w['patches']:,} patches, {w['output_files']} files, "
          f"{mb:.1f} MB ({w['s3_object_bytes'] / 1e6:.1f} MB in the bucket, status and "
          "summary objects included)\n")
    print("| output | seconds | MB/s | patches/s | x local |")
    print("|---|---|---|---|---|")
    print(f"| local folder | {local:.2f} | {mb / local:.1f} | {w['patches'] / local:,.0f} | "
          "1.00 |")
    print(f"| s3://{BUCKET}/... | {s3:.2f} | {mb / s3:.1f} | {w['patches'] / s3:,.0f} | "
          f"{local / s3:.2f} |")
    print(f"\nceiling of the S3 overhead: fs.put of the local run's files alone "
          f"{put:.2f} s ({mb / put:.0f} MB/s); S3 run - local run = {s3 - local:.2f} s "
          f"(of which the lease takes 0.5 s to settle)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller: 4096 x 3072 slide, 128 patches, 2 slides, 2 repeats")
    parser.add_argument("--patches", type=int, default=512)
    parser.add_argument("--sparse", type=int, default=64,
                        help="also S3 cold with only the first this many patches")
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--height", type=int, default=12288)
    parser.add_argument("--slides", type=int, default=3, help="cohort slides for writing")
    parser.add_argument("--cohort-side", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.patches, args.sparse, args.width, args.height = 128, 16, 4096, 3072
        args.slides, args.cohort_side, args.repeats = 2, 2048, 2
    folder = Path(tempfile.mkdtemp(prefix="exaslide-bench-remote-"))
    saved = {k: os.environ.get(k) for k in (*CREDENTIALS, "AWS_ENDPOINT_URL",
                                            "EXASLIDE_CACHE_DIR", "EXASLIDE_STAGING_DIR")}
    try:
        with moto_server(folder):
            s3fs().mkdir(BUCKET)
            read = reading(folder, args)
            write = writing(folder, args)
            reset_fsspec()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{os.cpu_count()} cores, moto S3 server on 127.0.0.1 (same machine), best of "
          f"{args.repeats}\n")
    print_reading(read)
    print_writing(write)
    if args.json:
        args.json.write_text(json.dumps({"cores": os.cpu_count(), "repeats": args.repeats,
                                         "reading": read, "writing": write}, indent=1))


if __name__ == "__main__":
    main()
