"""Benchmark: patches per second a PyTorch DataLoader delivers (batch 64, 224 px).

Same run, same patches (a random subset of the 224-px level-0 grid over the tissue of a
synthetic slide with 256-px JPEG tiles), each in a fresh process, with 0 and 2 workers:
  (a) naive Dataset: ``openslide.OpenSlide.read_region`` per item (handle opened once per
      worker), the usual first attempt;
  (b) ``SlidePatchDataset``, cold: first epoch, empty tile cache, fresh workers;
  (c) ``SlidePatchDataset``, warm: third epoch on the same persistent workers;
  (d) ``ShardDataset`` over JPEG (quality 90) and PNG shards of the same patches.
Every loader shuffles (a seeded ``PatchSampler``; the shard buffer for (d)). Reported:
patches/s, the ratio to (a) with the same workers, peak RSS per worker (the process
itself with 0 workers), file bytes read per patch (``rchar``: all ``read``/``pread``
bytes, page-cache hits included) and the tile-cache hit rate of the
measured epoch (0 workers). The slide file is in the
OS page cache for every setup (this benchmark measures decoding and copying, not disk).

Usage: ``python bench/loader.py [--side 20000] [--patches 2048] [--keep DIR]``.
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

SIZE, BATCH = 224, 64
H100_IMAGES_PER_S = 3000


def make_inputs(folder: Path, side: int, patches: int) -> dict:
    """The slide, the index of the patch subset, and JPEG / PNG shards of it."""
    from exaslide.annotations import read_annotations
    from exaslide.patches import PatchReader, PatchSpec, SamplingOptions, sample_patches
    from exaslide.patches.index import make_table, write_slide_index
    from exaslide.patches.job import patch_keys
    from exaslide.patches.shards import ShardWriter
    from exaslide.slides import open_slide
    from exaslide.synth import SynthSpec, write_synthetic_slide

    slide = folder / f"loader_{side}.tif"
    if not slide.exists():
        write_synthetic_slide(slide, SynthSpec(width=side, height=side, tumours=6, seed=41,
                                               mpp=0.25, quality=85))
    with open_slide(slide) as opened:
        sampled = sample_patches(opened, read_annotations(slide.with_suffix(".xml")),
                                 PatchSpec(size=SIZE), SamplingOptions())
    pick = np.sort(np.random.default_rng(0).permutation(len(sampled.x))[:patches])
    x, y = sampled.x[pick], sampled.y[pick]
    labels = np.asarray(sampled.label)[pick]
    keys = patch_keys("bench", x, y)
    index = folder / "index" / "bench.parquet"
    write_slide_index(make_table({"key": keys, "slide_id": "bench", "x": x, "y": y,
                                  "level": 0, "size": SIZE, "footprint": float(SIZE),
                                  "label": labels}), index)
    shards = {}
    for fmt in ("jpeg", "png"):
        out = folder / f"shards_{fmt}"
        if not out.exists():
            out.mkdir()
            writer = ShardWriter(out, "bench", fmt, 90, 512)
            with PatchReader(slide, PatchSpec(size=SIZE)) as reader:
                for key, patch, label in zip(keys, reader.iter_patches(x, y), labels,
                                             strict=True):
                    writer.add(key, patch, {"key": key, "label": str(label)})
            writer.close()
        shards[fmt] = sorted(str(p) for p in out.glob("*.tar"))
    return {"slide": str(slide), "index": str(index), "shards": shards, "n": len(x)}


class NaiveOpenSlideDataset:
    """Baseline (a): one ``read_region`` per item, handle opened lazily per worker."""

    def __init__(self, slide: str, index: str):
        import pyarrow.parquet as pq

        table = pq.read_table(index, columns=["x", "y", "label"])
        self.slide, self.handle = slide, None
        self.x, self.y = table["x"].to_numpy(), table["y"].to_numpy()
        self.labels = np.array([v == "tumour" for v in table["label"].to_pylist()], int)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        import openslide
        import torch

        if self.handle is None:
            self.handle = openslide.OpenSlide(self.slide)
        rgba = self.handle.read_region((int(self.x[i]), int(self.y[i])), 0, (SIZE, SIZE))
        image = torch.from_numpy(np.asarray(rgba.convert("RGB"))).permute(2, 0, 1)
        return image, int(self.labels[i])


def _children_stats() -> tuple[float, int]:
    """Largest peak RSS (MB) among this process's children and their summed ``rchar``."""
    peak, rchar = 0.0, 0
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[1] != me:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
            io = Path(f"/proc/{entry}/io").read_text()
        except OSError:
            continue
        hwm = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmHWM"))
        peak = max(peak, hwm / 1024)
        rchar += next(int(line.split()[1]) for line in io.splitlines()
                      if line.startswith("rchar"))
    return peak, rchar


def _self_rchar() -> int:
    return next(int(line.split()[1]) for line in Path("/proc/self/io").read_text().splitlines()
                if line.startswith("rchar"))


def run_one(setup: str, workers: int, inputs: dict) -> dict:
    """One setup in this (fresh) process: returns its measurements."""
    import torch

    from exaslide.data import PatchSampler, ShardDataset, SlidePatchDataset, make_loader
    from exaslide.resources import peak_rss_mb

    torch.set_num_threads(1)
    epochs = 3 if setup == "warm" else 1
    if setup == "naive":
        dataset = NaiveOpenSlideDataset(inputs["slide"], inputs["index"])
    elif setup in ("cold", "warm"):
        dataset = SlidePatchDataset(inputs["index"], slides={"bench": inputs["slide"]})
    else:
        dataset = ShardDataset(inputs["shards"][setup], seed=0, shuffle_buffer=256,
                               rank=0, world_size=1)
    sampler = None if setup in ("jpeg", "png") else \
        PatchSampler(len(dataset), seed=0, rank=0, world_size=1)
    loader = make_loader(dataset, batch_size=BATCH, workers=workers, sampler=sampler)
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        if setup in ("cold", "warm") and workers == 0:
            dataset.tile_cache().reset_counters()  # hit rate of the measured epoch
        rchar0 = _self_rchar() if workers == 0 else _children_stats()[1]
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch[1])
        seconds = time.perf_counter() - start
    if workers == 0:
        peak, rchar = peak_rss_mb(), _self_rchar() - rchar0
    else:
        peak, rchar_end = _children_stats()
        rchar = rchar_end - rchar0
    hit_rate = None
    if setup in ("cold", "warm") and workers == 0:
        stats = dataset.tile_cache().stats()
        hit_rate = stats["hits"] / max(1, stats["hits"] + stats["misses"])
    return {"setup": setup, "workers": workers, "patches": n, "seconds": seconds,
            "rate": n / seconds, "peak_mb": peak, "bytes_per_patch": rchar / n,
            "hit_rate": hit_rate}


SETUPS = [("naive", "(a) naive OpenSlide read_region"),
          ("cold", "(b) SlidePatchDataset, cold cache"),
          ("warm", "(c) SlidePatchDataset, warm cache"),
          ("jpeg", "(d) ShardDataset, JPEG shards"),
          ("png", "(d) ShardDataset, PNG shards")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--patches", type=int, default=2048)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--keep", type=Path, help="folder to keep inputs between runs")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        setup, workers, inputs = json.loads(args.one)
        print(json.dumps(run_one(setup, workers, inputs)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        inputs = make_inputs(folder, args.side, args.patches)
        results = {}
        for workers in (int(w) for w in args.workers.split(",")):
            for setup, _ in SETUPS:
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                done = subprocess.run(
                    [sys.executable, __file__, "--one", json.dumps([setup, workers, inputs])],
                    capture_output=True, text=True, env=env, check=True)
                results[setup, workers] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n{inputs['n']} patches of {SIZE} px, batch {BATCH}, {os.cpu_count()} CPU cores\n")
    print("| setup | workers | patches/s | × (a) | peak RSS/worker MB | bytes read/patch "
          "| tile-cache hits |")
    print("|---|---|---|---|---|---|---|")
    for (setup, workers), r in results.items():
        name = dict(SETUPS)[setup]
        ratio = r["rate"] / results["naive", workers]["rate"]
        hits = f"{r['hit_rate']:.0%}" if r["hit_rate"] is not None else ""
        print(f"| {name} | {workers} | {r['rate']:,.0f} | {ratio:.1f} | {r['peak_mb']:.0f} "
              f"| {r['bytes_per_patch']:,.0f} | {hits} |")
    best = max(workers for _, workers in results)
    for setup in ("cold", "warm", "jpeg"):
        if (setup, best) in results:
            per_core = results[setup, best]["rate"] / max(1, best)
            print(f"\n{dict(SETUPS)[setup]}: {per_core:,.0f} patches/s per worker core -> "
                  f"~{H100_IMAGES_PER_S / per_core:.0f} cores to feed one H100 at "
                  f"{H100_IMAGES_PER_S:,} images/s (ResNet-50)")


if __name__ == "__main__":
    main()
