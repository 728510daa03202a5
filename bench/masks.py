"""Benchmark: label mask of CAMELYON16 test_040.xml at level 5 of a 110,000 x 110,000 slide.

Compares, in the same run, exaslide's exact scanline fill with
- a naive point-in-polygon baseline: ``shapely.contains_xy`` at every pixel centre of the
  annotations' bounding box (vectorised GEOS, prepared geometry), and
- ``cv2.fillPoly`` (one call per polygon), fast but not exact to the pixel-centre rule.

Prints time (best of N), peak traced memory and pixel disagreement with the exact mask.
Usage: ``python bench/masks.py [--xml PATH] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np
import shapely

from exaslide.annotations import read_annotations
from exaslide.masks import fill_polygon

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_XML = SHARED / "annotations" / "camelyon16" / "test_040.xml"
SIDE, DOWNSAMPLE = 110_000, 32  # level 5 of a CAMELYON-sized slide


def measure(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, best, peak


def exaslide_mask(tumour, excluded, shape):
    t, e = np.zeros(shape, bool), np.zeros(shape, bool)
    for g in tumour:
        fill_polygon(t, g, downsample=DOWNSAMPLE)
    for g in excluded:
        fill_polygon(e, g, downsample=DOWNSAMPLE)
    return t & ~e


def contains_mask(tumour, excluded, shape):
    region = shapely.difference(shapely.union_all(tumour), shapely.union_all(excluded))
    shapely.prepare(region)
    x0, y0, x1, y1 = (np.array(region.bounds) / DOWNSAMPLE).astype(int) + np.array([0, 0, 2, 2])
    jj, ii = np.meshgrid(np.arange(x0, x1), np.arange(y0, y1))
    out = np.zeros(shape, bool)
    out[y0:y1, x0:x1] = shapely.contains_xy(region, (jj + 0.5) * DOWNSAMPLE,
                                            (ii + 0.5) * DOWNSAMPLE)
    return out


def cv2_mask(tumour, excluded, shape):
    import cv2

    def fill(geoms):
        m = np.zeros(shape, np.uint8)
        for g in geoms:
            for poly in shapely.get_parts(g):
                if poly.geom_type != "Polygon":
                    continue
                ext = np.round((np.asarray(poly.exterior.coords) / DOWNSAMPLE - 0.5) * 16)
                cv2.fillPoly(m, [ext.astype(np.int32)], 1, shift=4)
                for ring in poly.interiors:
                    hole = np.round((np.asarray(ring.coords) / DOWNSAMPLE - 0.5) * 16)
                    cv2.fillPoly(m, [hole.astype(np.int32)], 0, shift=4)
        return m.astype(bool)

    return fill(tumour) & ~fill(excluded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xml", type=Path, default=DEFAULT_XML)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.xml.exists():
        raise SystemExit(f"{args.xml} not found: pass --xml PATH to a CAMELYON16 ASAP XML")
    start = time.perf_counter()
    annotations = read_annotations(args.xml)
    parse = time.perf_counter() - start
    tumour = [a.geometry for a in annotations if a.label == "tumour"]
    excluded = [a.geometry for a in annotations if a.label == "exclusion"]
    shape = (SIDE // DOWNSAMPLE, SIDE // DOWNSAMPLE)
    vertices = sum(len(a.source.exterior.coords) - 1 for a in annotations)
    print(f"{args.xml.name}: {len(annotations)} polygons, {vertices} vertices, "
          f"{len(annotations.repairs)} repaired; parse + repair {parse * 1000:.0f} ms")
    print(f"mask {shape[1]} x {shape[0]} (level 5 of {SIDE} x {SIDE}), best of {args.repeat}\n")
    exact, t_exact, m_exact = measure(lambda: exaslide_mask(tumour, excluded, shape), args.repeat)
    rows = [("exaslide scanline fill (exact)", t_exact, m_exact, 0)]
    for name, fn in (("baseline: shapely.contains_xy per pixel", contains_mask),
                     ("cv2.fillPoly per polygon (inexact)", cv2_mask)):
        mask, t, m = measure(lambda fn=fn: fn(tumour, excluded, shape), args.repeat)
        rows.append((name, t, m, int((mask != exact).sum())))
    print(f"| {'method':<40} | time (ms) | x exaslide | peak MB | pixels differing |")
    print(f"|{'-' * 42}|-----------|------------|---------|------------------|")
    for name, t, m, diff in rows:
        print(f"| {name:<40} | {t * 1000:9.1f} | {t / t_exact:10.1f} | {m / 2**20:7.1f} "
              f"| {diff:16d} |")
    print(f"\ntumour pixels: {int(exact.sum())}")


if __name__ == "__main__":
    main()
