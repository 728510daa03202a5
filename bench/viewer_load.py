"""Load test of the viewer's tile endpoint, against OpenSlide's Deep Zoom and a no-HTTP
ceiling, all on the same tiles.

``--requests`` DISTINCT tiles (deepest Deep Zoom levels first; an error if the slides have
fewer), requested by ``--clients`` concurrent clients (threads, urllib, a new connection
per request) on 127.0.0.1:

- exaslide server, cold: ``exaslide view``'s app (:func:`serve_in_thread`) in a fresh child
  process, so every request is a tile-cache miss; warm: the same requests again on the same
  server (every request a hit).
- OpenSlide server (baseline): ``DeepZoomGenerator(tile_size=254, overlap=1,
  limit_bounds=False)`` + Pillow JPEG quality 75, as openslide-python's
  ``examples/deepzoom/deepzoom_server.py`` serves tiles, on Werkzeug's threaded server
  (what that example's Flask ``app.run(threaded=True)`` runs; Flask itself is not needed,
  the request log is off as exaslide's), in a fresh child process.
- In process, no HTTP, fresh slide handles: the same DeepZoomGenerator + JPEG (baseline)
  and exaslide's ``DeepZoom.tile_jpeg``, the function behind the server's cache (ceiling),
  each serial and with 2 threads.

Every measurement is repeated ``--repeats`` times, interleaved; the table gives the best
rate and that repeat's latencies and CPU per tile (the server process's, from ``/proc``,
and the clients'; in process: the process's). A few tiles fetched from each server are
compared byte for byte with the in-process tiles; errors or a mismatch exit 1.

    python bench/viewer_load.py --synth DIR [--size 30000x20000] [PATHS...]
        [--requests 2000] [--clients 16] [--repeats 3] [--json OUT.json]

``--synth DIR`` writes (or reuses) ``DIR/viewer-bench-WxH-seedS.tif`` with exaslide's
synthetic slide generator; PATHS are slides, manifests or output folders as for
``exaslide view``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import random
import re
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TILE_SIZE, OVERLAP, QUALITY = 254, 1, 75
Tile = tuple[str, int, int, int]  # slide id, Deep Zoom level, col, row


# ------------------------------------------------------------------------------- slides
def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT, got {text!r}")
    return int(match[1]), int(match[2])


def synthetic_slide(folder: str, size: tuple[int, int], seed: int) -> Path:
    """``folder/viewer-bench-WxH-seedS.tif``, written with exaslide's generator unless a
    slide of that size is already there."""
    from exaslide.slides import open_slide
    from exaslide.synth import SynthSpec, write_synthetic_slide

    path = Path(folder) / f"viewer-bench-{size[0]}x{size[1]}-seed{seed}.tif"
    if path.exists():
        with open_slide(path) as slide:
            if tuple(slide.dimensions) != size:
                sys.exit(f"{path} exists but is {slide.dimensions}, not {size}: remove it")
        print(f"reusing {path}", file=sys.stderr)
        return path
    start = time.perf_counter()
    write_synthetic_slide(path, SynthSpec(width=size[0], height=size[1], seed=seed))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB) in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return path


def served_slides(paths: list[str]) -> dict[str, str]:
    """``{slide id: path}`` of the slides the viewer serves for ``paths`` (its own
    discovery, so the ids are the server's)."""
    from exaslide.slides import open_slide
    from exaslide.viewer.discovery import discover

    out = {}
    for slide_id, source in discover(paths).slides.items():
        try:
            open_slide(source.path).close()
        except Exception as exc:  # the viewer lists it with its error and serves nothing
            print(f"skipping {source.path}: {exc}", file=sys.stderr)
            continue
        out[slide_id] = str(source.path)
    return out


def pick_tiles(slides: dict[str, str], count: int, seed: int) -> tuple[list[Tile], dict]:
    """``count`` distinct tiles in random order, from the deepest Deep Zoom level of every
    slide, adding the next level up only while there are fewer than ``count``."""
    from exaslide.slides import open_slide
    from exaslide.viewer.deepzoom import DeepZoom

    geometry = {}
    for slide_id, path in slides.items():
        with open_slide(path) as slide:
            dz = DeepZoom(slide, TILE_SIZE, OVERLAP, QUALITY)
            geometry[slide_id] = (dz.level_count, dz.level_tiles)
    pool: list[Tile] = []
    depth = 0
    while len(pool) < count and depth < max((n for n, _ in geometry.values()), default=0):
        for slide_id, (levels, level_tiles) in geometry.items():
            level = levels - 1 - depth
            if level >= 0:
                cols, rows = level_tiles[level]
                pool += [(slide_id, level, c, r) for c in range(cols) for r in range(rows)]
        depth += 1
    if len(pool) < count:
        sys.exit(f"the slides have {len(pool)} distinct tiles, fewer than --requests "
                 f"{count}: give a larger slide (--synth DIR --size WxH) or fewer requests")
    tiles = random.Random(seed).sample(pool, count)
    depths = {}
    for slide_id, level, _, _ in tiles:
        key = geometry[slide_id][0] - 1 - level
        depths[key] = depths.get(key, 0) + 1
    return tiles, {"levels_below_full": dict(sorted(depths.items())), "pool": len(pool)}


def tile_path(tile: Tile) -> str:
    slide_id, level, col, row = tile
    return f"/slides/{slide_id}_files/{level}/{col}_{row}.jpeg"


# ------------------------------------------------------- servers, each in a child process
def _exaslide_server(paths: list[str], cache_bytes: int, conn) -> None:
    from exaslide.viewer import serve_in_thread

    with serve_in_thread(paths, cache_bytes=cache_bytes) as running:
        conn.send(running.url.rstrip("/"))
        conn.recv()  # until told to stop


def _openslide_server(slides: dict[str, str], conn) -> None:
    """openslide-python's deepzoom_server tile route as a bare WSGI app, on Werkzeug's
    threaded server."""
    import logging

    import openslide
    from openslide.deepzoom import DeepZoomGenerator
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request log line
    generators = {slide_id: DeepZoomGenerator(openslide.open_slide(path), TILE_SIZE,
                                              OVERLAP, limit_bounds=False)
                  for slide_id, path in slides.items()}
    route = re.compile(r"^/slides/(?P<id>[^/]+)_files/(?P<level>\d+)/(?P<col>\d+)_"
                       r"(?P<row>\d+)\.jpeg$")

    def app(environ, start_response):
        match = route.match(environ.get("PATH_INFO", ""))
        dz = generators.get(match["id"]) if match else None
        try:
            if dz is None:
                raise ValueError
            tile = dz.get_tile(int(match["level"]), (int(match["col"]), int(match["row"])))
        except ValueError:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        buf = io.BytesIO()
        tile.save(buf, "jpeg", quality=QUALITY)
        data = buf.getvalue()
        start_response("200 OK", [("Content-Type", "image/jpeg"),
                                  ("Content-Length", str(len(data)))])
        return [data]

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn.send(f"http://127.0.0.1:{server.server_port}")
    conn.recv()
    server.shutdown()


class ChildServer:
    """A server started by ``target(*args, conn)`` in a fresh (spawned) process; the URL
    once it listens."""

    def __init__(self, target, *args):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(*args, child), daemon=True)

    def __enter__(self) -> ChildServer:
        self.process.start()
        if not self.conn.poll(120):
            self.process.kill()
            sys.exit("a server did not start within 120 s")
        self.url = self.conn.recv()
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.process.join(15)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# ---------------------------------------------------------------------- measurements
def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        return response.read()


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``; else None)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_run(server: ChildServer, tiles: list[Tile], clients: int) -> dict:
    """Every tile requested once by ``clients`` threads; rate, latencies and the CPU per
    tile of the server process and of the clients (this process)."""
    base = server.url

    def fetch(tile):
        start = time.perf_counter()
        try:
            ok = len(get(base + tile_path(tile))) > 0
        except Exception:
            ok = False
        return ok, time.perf_counter() - start

    server_cpu, client_cpu = process_cpu(server.process.pid), time.process_time()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(fetch, tiles))
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - client_cpu
    after = process_cpu(server.process.pid)
    server_cpu = None if server_cpu is None or after is None else after - server_cpu
    latencies = sorted(t for _, t in results)

    def pct(q):
        return round(latencies[int(q * (len(latencies) - 1))] * 1000, 1)

    return {"requests": len(tiles), "errors": sum(not ok for ok, _ in results),
            "wall_s": round(wall, 3), "rate": round(len(tiles) / wall, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 1), "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "cpu_ms_per_tile": None if server_cpu is None
            else round(server_cpu * 1000 / len(tiles), 2),
            "client_cpu_ms_per_tile": round(client_cpu * 1000 / len(tiles), 2)}


class ExaslideTiles:
    """exaslide's tile function (``DeepZoom.tile_jpeg``) on fresh slide handles."""

    def __init__(self, slides: dict[str, str]):
        from exaslide.slides import open_slide
        from exaslide.viewer.deepzoom import DeepZoom

        self.handles = [open_slide(path) for path in slides.values()]
        self.dz = {slide_id: DeepZoom(handle, TILE_SIZE, OVERLAP, QUALITY)
                   for slide_id, handle in zip(slides, self.handles, strict=True)}

    def __call__(self, tile: Tile) -> bytes:
        slide_id, level, col, row = tile
        return self.dz[slide_id].tile_jpeg(level, col, row)

    def close(self) -> None:
        for handle in self.handles:
            handle.close()


class OpenSlideTiles:
    """OpenSlide's DeepZoomGenerator + Pillow JPEG, as the deepzoom_server example."""

    def __init__(self, slides: dict[str, str]):
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        self.handles = [openslide.open_slide(path) for path in slides.values()]
        self.dz = {slide_id: DeepZoomGenerator(handle, TILE_SIZE, OVERLAP,
                                               limit_bounds=False)
                   for slide_id, handle in zip(slides, self.handles, strict=True)}

    def __call__(self, tile: Tile) -> bytes:
        slide_id, level, col, row = tile
        buf = io.BytesIO()
        self.dz[slide_id].get_tile(level, (col, row)).save(buf, "jpeg", quality=QUALITY)
        return buf.getvalue()

    def close(self) -> None:
        for handle in self.handles:
            handle.close()


def in_process_run(kind, slides: dict[str, str], tiles: list[Tile], threads: int) -> dict:
    tile_fn = kind(slides)
    try:
        cpu = time.process_time()
        start = time.perf_counter()
        if threads == 1:
            for tile in tiles:
                tile_fn(tile)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(tile_fn, tiles))
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
    finally:
        tile_fn.close()
    return {"requests": len(tiles), "errors": 0, "wall_s": round(wall, 3),
            "rate": round(len(tiles) / wall, 1),
            "cpu_ms_per_tile": round(cpu * 1000 / len(tiles), 2)}


def spot_check(server: ChildServer, slides: dict[str, str], tiles: list[Tile], n: int) -> dict:
    """Tiles fetched from a server against the in-process exaslide and OpenSlide bytes."""
    sample = tiles[:: max(len(tiles) // n, 1)][:n]
    exa, osl = ExaslideTiles(slides), OpenSlideTiles(slides)
    try:
        served = [get(server.url + tile_path(tile)) for tile in sample]
        return {"tiles": len(sample),
                "equal_exaslide": sum(s == exa(t) for s, t in zip(served, sample, strict=True)),
                "equal_openslide": sum(s == osl(t) for s, t in zip(served, sample,
                                                                   strict=True))}
    finally:
        exa.close()
        osl.close()


# ------------------------------------------------------------------------------ report
RUNS = [  # key, label
    ("server_cold", "exaslide server, cold cache"),
    ("server_warm", "exaslide server, warm cache (same requests)"),
    ("openslide_server", "baseline: OpenSlide deepzoom_server (Werkzeug threads)"),
    ("openslide_1", "baseline: OpenSlide DeepZoomGenerator + JPEG, in process, serial"),
    ("openslide_2", "baseline: same, in process, 2 threads"),
    ("ceiling_1", "ceiling: exaslide DeepZoom.tile_jpeg, in process, serial"),
    ("ceiling_2", "ceiling: same, in process, 2 threads"),
]


def best(repeats: list[dict]) -> dict:
    top = max(repeats, key=lambda r: r["rate"])
    return {**top, "rates": [r["rate"] for r in repeats],
            "errors": sum(r["errors"] for r in repeats)}


def table(results: dict, repeats: int) -> str:
    lines = [f"| run | tiles/s (best of {repeats}) | all repeats | errors (all repeats) "
             "| p50 ms | p95 ms | p99 ms | CPU ms/tile: server (or in process) | clients |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, label in RUNS:
        r = results[key]
        cells = [f"{r[k]}" if r.get(k) is not None else "" for k in (
            "p50_ms", "p95_ms", "p99_ms", "cpu_ms_per_tile", "client_cpu_ms_per_tile")]
        lines.append(f"| {label} | {r['rate']:,.0f} | "
                     f"{' / '.join(f'{v:,.0f}' for v in r['rates'])} | {r['errors']} | "
                     + " | ".join(cells) + " |")
    rate = {key: results[key]["rate"] for key, _ in RUNS}
    ratios = [
        ("server cold / OpenSlide server", rate["server_cold"] / rate["openslide_server"]),
        ("server cold / OpenSlide in process, serial",
         rate["server_cold"] / rate["openslide_1"]),
        ("server cold / OpenSlide in process, 2 threads",
         rate["server_cold"] / rate["openslide_2"]),
        ("server cold / ceiling serial", rate["server_cold"] / rate["ceiling_1"]),
        ("server cold / ceiling 2 threads (HTTP + concurrency overhead)",
         rate["server_cold"] / rate["ceiling_2"]),
        ("server warm / server cold", rate["server_warm"] / rate["server_cold"]),
        ("ceiling serial / OpenSlide in process serial",
         rate["ceiling_1"] / rate["openslide_1"]),
        ("ceiling 2 threads / ceiling serial", rate["ceiling_2"] / rate["ceiling_1"]),
    ]
    lines += ["", "| ratio (best rates) | x |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in ratios]
    results["ratios"] = {name: round(value, 3) for name, value in ratios}
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("paths", nargs="*", help="slides, manifests or output folders")
    parser.add_argument("--synth", metavar="DIR",
                        help="write (or reuse) a synthetic slide of --size in DIR")
    parser.add_argument("--size", type=parse_size, default=(30000, 20000),
                        help="WIDTHxHEIGHT of the --synth slide (30000x20000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-mb", type=int, default=256,
                        help="the server's tile cache (256, the viewer's default)")
    parser.add_argument("--check", type=int, default=8, help="tiles compared byte for byte")
    parser.add_argument("--json", metavar="OUT", help="also write every measurement here")
    args = parser.parse_args()
    from exaslide.errors import ExaslideError

    paths = list(args.paths)
    if args.synth:
        paths.append(str(synthetic_slide(args.synth, args.size, args.seed)))
    if not paths:
        parser.error("give PATHS or --synth DIR")

    try:
        slides = served_slides(paths)
    except ExaslideError as exc:
        sys.exit(str(exc))
    tiles, picked = pick_tiles(slides, args.requests, args.seed)
    print(f"{len(tiles)} distinct tiles of {len(slides)} slide(s) (pool {picked['pool']}; "
          f"levels below the full resolution: {picked['levels_below_full']}), "
          f"{args.clients} clients, {args.repeats} repeats; load average "
          f"{os.getloadavg()[0]:.2f}", file=sys.stderr)

    runs: dict[str, list[dict]] = {key: [] for key, _ in RUNS}
    checks = {}
    started = time.perf_counter()
    for repeat in range(args.repeats):
        with ChildServer(_exaslide_server, paths, args.cache_mb * 2**20) as server:
            runs["server_cold"].append(http_run(server, tiles, args.clients))
            runs["server_warm"].append(http_run(server, tiles, args.clients))
            if repeat == 0:
                checks["exaslide_server"] = spot_check(server, slides, tiles, args.check)
        with ChildServer(_openslide_server, slides) as server:
            runs["openslide_server"].append(http_run(server, tiles, args.clients))
            if repeat == 0:
                checks["openslide_server"] = spot_check(server, slides, tiles, args.check)
        for key, kind, threads in (("ceiling_1", ExaslideTiles, 1),
                                   ("openslide_1", OpenSlideTiles, 1),
                                   ("ceiling_2", ExaslideTiles, 2),
                                   ("openslide_2", OpenSlideTiles, 2)):
            runs[key].append(in_process_run(kind, slides, tiles, threads))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]['rate']:,.0f}"
                                                   for k, v in runs.items()), file=sys.stderr)

    results = {key: best(value) for key, value in runs.items()}
    text = table(results, args.repeats)
    print(text)
    print(f"\nspot check (first repeat): {json.dumps(checks)}; "
          f"{time.perf_counter() - started:.0f} s of measurements")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"tiles": len(tiles), **picked, "slides": slides, "clients": args.clients,
             "repeats": args.repeats, "runs": runs, "best": results, "checks": checks},
            indent=1, default=str))
    mismatched = checks["exaslide_server"]["equal_exaslide"] != checks["exaslide_server"][
        "tiles"]
    if mismatched or any(results[key]["errors"] for key, _ in RUNS):
        sys.exit("errors or tile mismatches: see above")


if __name__ == "__main__":
    main()
