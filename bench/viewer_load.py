"""Load test of the viewer's tile endpoint: N tile requests from C concurrent clients on
127.0.0.1, once with a cold tile cache (a fresh server) and once warm (the same requests
again); prints errors, requests/s and p50/p95 latency.

    python bench/viewer_load.py PATHS... [--requests 2000] [--clients 16]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from exaslide.slides import open_slide
from exaslide.viewer import serve_in_thread
from exaslide.viewer.deepzoom import DeepZoom


def tile_urls(base: str, running, count: int, seed: int = 0) -> list[str]:
    """``count`` distinct tile URLs (as many as the slides have), deepest levels first."""
    urls = []
    for entry in json.loads(urllib.request.urlopen(base + "/api/slides").read()):
        if entry["error"]:
            continue
        with open_slide(running.app.state.viewer.catalog.slides[entry["id"]].path) as slide:
            dz = DeepZoom(slide)
            for level in range(dz.level_count - 1, -1, -1):
                cols, rows = dz.level_tiles[level]
                urls += [f"{base}/slides/{entry['id']}_files/{level}/{c}_{r}.jpeg"
                         for c in range(cols) for r in range(rows)]
    random.Random(seed).shuffle(urls)
    return (urls * (count // max(len(urls), 1) + 1))[:count]


def run(urls: list[str], clients: int) -> dict:
    def fetch(url):
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                response.read()
                ok = response.status == 200
        except Exception:
            ok = False
        return ok, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(fetch, urls))
    wall = time.perf_counter() - start
    latencies = sorted(t for _, t in results)
    return {"requests": len(urls), "errors": sum(not ok for ok, _ in results),
            "wall_s": round(wall, 2), "req_per_s": round(len(urls) / wall, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    with serve_in_thread(args.paths) as running:
        base = running.url.rstrip("/")
        urls = tile_urls(base, running, args.requests)
        distinct = len(set(urls))
        cold = run(urls, args.clients)
        warm = run(urls, args.clients)
    print(json.dumps({"distinct_tiles": distinct, "clients": args.clients, "cold": cold,
                      "warm": warm}, indent=1))


if __name__ == "__main__":
    main()
