"""Benchmark: patches per second a PyTorch DataLoader delivers (batch 64, 224 px), and the
CPU it spends per image against the JPEG decode ceiling.

Same run, same patches (a random subset of the 224-px level-0 grid over the tissue of a
synthetic slide with 256-px JPEG tiles), each setup in a fresh process, with 0 and 2
workers, interleaved, best of ``--repeat``:
  (a) naive Dataset: ``openslide.OpenSlide.read_region`` per item (handle opened once per
      worker), the usual first attempt;
  (b) ``SlidePatchDataset``, cold: first epoch, empty tile cache, fresh workers, full
      shuffle (``PatchSampler``);
  (c) ``SlidePatchDataset``, warm: third epoch on the same persistent workers;
  (d) ``ShardDataset`` over JPEG (quality 90) and PNG shards of the same patches;
  (e) ``SlidePatchDataset``, cold, locality-aware order
      (``PatchSampler(blocks=dataset.blocks())``);
  (f) the same loader's second epoch;
  (g) the loader's fixed start-up: (e) delivering one patch per worker (processes forked
      and started, slide opened, one tile decoded); printed with (e) less it per patch,
      the marginal cost, as ``bench/extract.py`` excludes its start-up.
Every loader shuffles (a seeded ``PatchSampler``; the shard buffer for (d)). Reported:
patches/s, the ratio to (a) with the same workers, CPU per image of every process of the
loader (the main process and its workers, ``/proc/<pid>/stat``), the efficiency (the
ceiling's CPU per patch / that), peak RSS of the main process and of the largest worker,
file bytes read per patch (``rchar``: all ``read``/``pread`` bytes, page-cache hits
included), the tile-cache hit rate of the measured epoch (0 workers) and the minor page
faults per patch of all the loader's processes (memory touched for the first time: one
per 4 KiB page, or per 2 MiB where the kernel gives a transparent huge page).

The ceiling is measured in the same run, in its own process: the compressed bytes of every
stored tile the patches need, read into memory, each decoded once with
``imagecodecs.jpeg_decode``, CPU time per patch (all tiles / all patches), best of 3, and
the cheaper of two ways: a fresh array per tile (as every reader decodes; its cost swings
by up to 1.6x with where the allocator puts the array, see ``exaslide.data.tile_decode``)
and one reused buffer placed 16 bytes off a 32-byte boundary. Efficiency is against the
cheaper one: what decoding alone costs at best on this CPU. The slide file is in the OS
page cache for every setup (this benchmark measures decoding and copying, not disk).

On the project's virtual machine, memory a process touches for the first time costs
1-3 µs per 4 KiB page (measured): a cold epoch pays it for its working set (batches made
ahead, tiles kept for the next epoch, a worker's shared batch blocks), which is why (f),
the second epoch of the same loader, is shown beside (e).

Last, the batch mixing of the two orders (no reading): distinct slides and blocks per
batch and label mixing (``exaslide.data.mixing``) for the benchmark's patches and for a
synthetic 32-slide cohort, full shuffle against locality-aware, 2 workers' streams.

Usage: ``python bench/loader.py [--side 20000] [--patches 2048] [--repeat 3]
[--setups naive,cold,...] [--keep DIR] [--tile-cache MiB]``. A 20,000-px slide has about
2,090 grid patches of tissue; ``--side 40000 --patches 8192`` gives an epoch four times
longer, over which the fixed and first-touch costs spread thinner.
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
COHORT_SLIDES = 32


def make_inputs(folder: Path, side: int, patches: int) -> dict:
    """The slide, the index of the patch subset, JPEG / PNG shards of it, and the whole
    sampled grid (for the cohort mixing statistics)."""
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
    grid = folder / f"grid_{side}.npz"
    np.savez(grid, x=sampled.x, y=sampled.y,
             tumour=np.asarray(sampled.label) == "tumour")
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
    return {"slide": str(slide), "index": str(index), "shards": shards, "n": len(x),
            "grid": str(grid), "density": len(x) / len(sampled.x)}


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


def _proc(pid: int | str, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_text()


def _field(text: str, key: str) -> int:
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith(key))


def _cpu_seconds(pid: int | str) -> float:
    fields = _proc(pid, "stat").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children() -> list[str]:
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _proc(entry, "stat").rsplit(")", 1)[1].split()[1] == me:
                    found.append(entry)
            except OSError:
                continue
    return found


def _faults(pid: int | str) -> int:
    """Minor page faults of a process so far (memory touched for the first time)."""
    return int(_proc(pid, "stat").rsplit(")", 1)[1].split()[7])


def _loader_stats() -> dict:
    """CPU seconds, ``rchar``, minor page faults and peak RSS of this process and of its
    children."""
    stats = {"cpu": time.process_time(), "rchar": _field(_proc("self", "io"), "rchar"),
             "faults": _faults("self"),
             "rss": _field(_proc("self", "status"), "VmHWM") / 1024, "worker_rss": 0.0,
             "workers": 0}
    for pid in _children():
        try:
            cpu, io, status = _cpu_seconds(pid), _proc(pid, "io"), _proc(pid, "status")
            faults = _faults(pid)
        except OSError:
            continue
        stats["cpu"] += cpu
        stats["faults"] += faults
        stats["rchar"] += _field(io, "rchar")
        stats["worker_rss"] = max(stats["worker_rss"], _field(status, "VmHWM") / 1024)
        stats["workers"] += 1
    return stats


def run_ceiling(inputs: dict) -> dict:
    """CPU per patch of decoding each stored tile the patches need once (see the doc)."""
    import imagecodecs

    from exaslide.data import SlidePatchDataset
    from exaslide.slides.jpeg_tiles import DECODE_OFFSET

    dataset = SlidePatchDataset(inputs["index"], slides={"bench": inputs["slide"]})
    p = dataset.patches
    geometry = dataset.geometry(0)
    handle = dataset._handle(0)
    jpeg = handle.jpeg
    keys = np.unique(geometry.tile_keys(p.x, p.y))
    tiles = [(int(k) & 0xFFFFF, (int(k) >> 20) & 0xFFFFF) for k in keys]
    data = [jpeg.raw(tx, ty) for tx, ty in tiles]
    options = {"tables": jpeg.tables, "colorspace": jpeg.colorspace,
               "outcolorspace": jpeg.outcolorspace}
    raw = np.empty(256 * 256 * 3 + 64, np.uint8)
    start = (DECODE_OFFSET - raw.ctypes.data) % 32
    out = raw[start : start + 256 * 256 * 3].reshape(256, 256, 3)

    def best(decode) -> float:
        times = []
        for _ in range(3):
            begin = time.process_time()
            for blob in data:
                decode(blob)
            times.append(time.process_time() - begin)
        return min(times)

    plain = best(lambda blob: imagecodecs.jpeg_decode(blob, **options))
    tuned = best(lambda blob: imagecodecs.jpeg_decode(blob, out=out, **options))
    n, fastest = len(p), min(plain, tuned)
    return {"setup": "ceiling", "workers": 0, "patches": n, "tiles": len(data),
            "cpu_per_image": fastest / n, "plain_cpu_per_image": plain / n,
            "tuned_cpu_per_image": tuned / n, "rate": n / fastest, "seconds": fastest}


def run_one(setup: str, workers: int, inputs: dict) -> dict:
    """One setup in this (fresh) process: returns its measurements."""
    import torch

    from exaslide.data import PatchSampler, ShardDataset, SlidePatchDataset, make_loader

    if setup == "ceiling":
        return run_ceiling(inputs)
    torch.set_num_threads(1)
    epochs = {"warm": 3, "local2": 2}.get(setup, 1)
    slides = setup in ("cold", "warm", "local", "local2", "start")
    if setup == "naive":
        dataset = NaiveOpenSlideDataset(inputs["slide"], inputs["index"])
    elif slides:
        options = {"tile_cache_bytes": inputs["tile_cache"] << 20} \
            if inputs.get("tile_cache") else {}
        dataset = SlidePatchDataset(inputs["index"], slides={"bench": inputs["slide"]},
                                    **options)
    else:
        dataset = ShardDataset(inputs["shards"][setup], seed=0, shuffle_buffer=256,
                               rank=0, world_size=1)
    blocks = None
    if setup in ("local", "local2", "start"):
        blocks = dataset.blocks()
        dataset.close()  # the main process opened the slide for its tile grid
    sampler = None if setup in ("jpeg", "png") else \
        PatchSampler(len(dataset), seed=0, rank=0, world_size=1, blocks=blocks)
    batch_size = BATCH
    if setup == "start":  # one patch per worker: the loader's fixed cost
        sampler = _FirstBatches(sampler, max(1, workers))
        batch_size = 1
    loader = make_loader(dataset, batch_size=batch_size, workers=workers, sampler=sampler)
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        if slides and workers == 0:
            dataset.tile_cache().reset_counters()  # hit rate of the measured epoch
            decodes = dataset.tile_decodes
        before = _loader_stats()
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch[1])
        seconds = time.perf_counter() - start
    after = _loader_stats()
    result = {"setup": setup, "workers": workers, "patches": n, "seconds": seconds,
              "rate": n / seconds, "cpu_per_image": (after["cpu"] - before["cpu"]) / n,
              "cpu": after["cpu"] - before["cpu"],
              "faults_per_patch": (after["faults"] - before["faults"]) / n,
              "main_rss": after["rss"], "worker_rss": after["worker_rss"],
              "bytes_per_patch": (after["rchar"] - before["rchar"]) / n, "hit_rate": None,
              "decodes_per_patch": None}
    if slides and workers == 0:
        stats = dataset.tile_cache().stats()
        result["hit_rate"] = stats["hits"] / max(1, stats["hits"] + stats["misses"])
        result["decodes_per_patch"] = (dataset.tile_decodes - decodes) / n
    return result


class _FirstBatches:
    """The first ``count`` batches of a ``PatchSampler``'s order (setup ``start``)."""

    def __init__(self, sampler, count: int):
        self.sampler, self.count = sampler, count
        self.locality, self.window = sampler.locality, sampler.window

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def batches(self, batch_size: int, streams: int = 1, drop_last: bool = False):
        return self.sampler.batches(batch_size, streams, drop_last)[: self.count]


SETUPS = [("ceiling", "decode ceiling (each needed tile once, from memory)"),
          ("naive", "(a) naive OpenSlide read_region"),
          ("cold", "(b) SlidePatchDataset, cold, full shuffle"),
          ("warm", "(c) SlidePatchDataset, warm, full shuffle"),
          ("jpeg", "(d) ShardDataset, JPEG shards"),
          ("png", "(d) ShardDataset, PNG shards"),
          ("local", "(e) SlidePatchDataset, cold, locality-aware"),
          ("local2", "(f) SlidePatchDataset, 2nd epoch, locality-aware"),
          ("start", "(g) fixed start-up: one patch per worker, cold")]


def mixing_tables(inputs: dict, streams: int = 2) -> list[tuple[str, str, dict]]:
    """Batch mixing of the full and the locality-aware order (no reading)."""
    from exaslide.data import PatchSampler, SlidePatchDataset
    from exaslide.data.mixing import batch_mixing

    dataset = SlidePatchDataset(inputs["index"], slides={"bench": inputs["slide"]})
    bench = (dataset.labels, np.zeros(len(dataset), int), dataset.blocks())
    grid = np.load(inputs["grid"])
    rng = np.random.default_rng(1)
    x, y, tumour, slide = [], [], [], []
    for s in range(COHORT_SLIDES):  # the grid's tissue, a different subset per slide
        keep = rng.random(len(grid["x"])) < inputs["density"]
        x.append(grid["x"][keep])
        y.append(grid["y"][keep])
        tumour.append(grid["tumour"][keep])
        slide.append(np.full(int(keep.sum()), s))
    x, y, slide = np.concatenate(x), np.concatenate(y), np.concatenate(slide)
    side = 1792  # dataset.blocks() for 224-px patches on 256-px tiles: 7 tiles
    cohort_blocks = np.unique(slide * 10**6 + (y // side) * 1000 + x // side,
                              return_inverse=True)[1]
    cohort = (np.concatenate(tumour).astype(int), slide, cohort_blocks)
    rows = []
    for name, (labels, slides, blocks) in (("benchmark slide", bench),
                                           (f"{COHORT_SLIDES}-slide cohort", cohort)):
        for balance in (False, True):
            for order, given in (("full shuffle", None), ("locality-aware", blocks)):
                sampler = PatchSampler(labels, balance=balance, seed=0, rank=0,
                                       world_size=1, blocks=given)
                stats = batch_mixing(sampler.batches(BATCH, streams), labels, slides, blocks)
                rows.append((name + (", balanced" if balance else ""), order, stats))
    return rows


def _measure(setups: list[str], workers: list[int], repeat: int, inputs: dict) -> dict:
    """Each (setup, workers) ``repeat`` times in fresh processes, interleaved; the run
    with the least CPU per image is kept."""
    results: dict = {}
    for _ in range(repeat):
        for w in workers:
            for setup in setups:
                if setup == "ceiling" and w != workers[0]:
                    continue
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                done = subprocess.run(
                    [sys.executable, __file__, "--one", json.dumps([setup, w, inputs])],
                    capture_output=True, text=True, env=env, check=True)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                key = (setup, 0 if setup == "ceiling" else w)
                if key not in results or r["cpu_per_image"] < results[key]["cpu_per_image"]:
                    results[key] = r
    return results


def print_tables(results: dict, inputs: dict) -> None:
    ceiling = results.get(("ceiling", 0))
    print(f"\n{inputs['n']} patches of {SIZE} px, batch {BATCH}, {os.cpu_count()} CPU cores")
    if ceiling:
        print(f"decode ceiling: {ceiling['tiles']} stored tiles, "
              f"{ceiling['cpu_per_image'] * 1e3:.3f} ms CPU per patch (fresh arrays: "
              f"{ceiling['plain_cpu_per_image'] * 1e3:.3f}, one reused buffer: "
              f"{ceiling['tuned_cpu_per_image'] * 1e3:.3f})\n")
    print("| setup | workers | patches/s | × (a) | CPU ms/image | efficiency "
          "| peak RSS MB main / worker | bytes read/patch | decodes/patch | tile-cache hits "
          "| page faults/patch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (setup, workers), r in results.items():
        if setup in ("ceiling", "start"):
            continue
        naive = results.get(("naive", workers))
        ratio = f"{r['rate'] / naive['rate']:.1f}" if naive else ""
        eff = ""
        if ceiling:
            eff = f"{ceiling['cpu_per_image'] / r['cpu_per_image']:.2f}"
        hits = f"{r['hit_rate']:.0%}" if r["hit_rate"] is not None else ""
        decodes = f"{r['decodes_per_patch']:.2f}" if r["decodes_per_patch"] is not None \
            else ""
        worker_rss = f"{r['worker_rss']:.0f}" if workers else "-"
        print(f"| {dict(SETUPS)[setup]} | {workers} | {r['rate']:,.0f} | {ratio} "
              f"| {r['cpu_per_image'] * 1e3:.3f} | {eff} | {r['main_rss']:.0f} / {worker_rss} "
              f"| {r['bytes_per_patch']:,.0f} | {decodes} | {hits} "
              f"| {r['faults_per_patch']:,.1f} |")
    for (setup, workers), r in results.items():
        cold = results.get(("local", workers))
        if setup != "start" or not cold:
            continue
        marginal = (cold["cpu"] - r["cpu"]) / max(1, cold["patches"] - r["patches"])
        eff = f", efficiency {ceiling['cpu_per_image'] / marginal:.2f}" if ceiling else ""
        print(f"\n{workers} workers: fixed start-up {r['cpu'] * 1e3:.0f} ms CPU (processes "
              f"started, slide opened, one patch each); (e) without it: "
              f"{marginal * 1e3:.3f} ms CPU/image{eff}")
    best = max(workers for _, workers in results)
    for setup in ("cold", "warm", "jpeg", "local"):
        if (setup, best) in results and best:
            per_core = results[setup, best]["rate"] / best
            print(f"\n{dict(SETUPS)[setup]}: {per_core:,.0f} patches/s per worker core -> "
                  f"~{H100_IMAGES_PER_S / per_core:.0f} cores to feed one H100 at "
                  f"{H100_IMAGES_PER_S:,} images/s (ResNet-50)")


def print_mixing(rows: list) -> None:
    print(f"\nBatch mixing, batch {BATCH}, 2 workers' streams (full shuffle: sampling "
          "noise only)\n")
    print("| patches | order | slides/batch | blocks/batch | same-block pairs "
          "| label distance | rare-class spread |")
    print("|---|---|---|---|---|---|---|")
    for name, order, m in rows:
        print(f"| {name} | {order} | {m['slides_per_batch']:.1f} | "
              f"{m['blocks_per_batch']:.1f} | {m['same_block_pairs']:.3f} | "
              f"{m['label_distance']:.3f} | {m['label_spread']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--patches", type=int, default=2048)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--setups", default=",".join(name for name, _ in SETUPS))
    parser.add_argument("--keep", type=Path, help="folder to keep inputs between runs")
    parser.add_argument("--tile-cache", type=int, default=0,
                        help="tile cache of SlidePatchDataset in MiB (default: its default)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        setup, workers, inputs = json.loads(args.one)
        print(json.dumps(run_one(setup, workers, inputs)))
        return
    setups = [s for s in args.setups.split(",") if s]
    unknown = set(setups) - {name for name, _ in SETUPS}
    if unknown:
        parser.error(f"unknown setups {sorted(unknown)}; known: {[n for n, _ in SETUPS]}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        inputs = make_inputs(folder, args.side, args.patches)
        inputs["tile_cache"] = args.tile_cache
        workers = [int(w) for w in args.workers.split(",")]
        results = _measure(setups, workers, args.repeat, inputs)
        print_tables(results, inputs)
        print_mixing(mixing_tables(inputs))
    if ("local", 2) in results and ("naive", 2) in results and ("ceiling", 0) in results:
        local, naive = results["local", 2], results["naive", 2]
        ceiling = results["ceiling", 0]["cpu_per_image"]
        print(f"\nTargets (locality-aware, cold): efficiency in-process "
              f"{ceiling / results['local', 0]['cpu_per_image']:.2f} (>= 0.9), "
              f"2 workers {ceiling / local['cpu_per_image']:.2f} (>= 0.8); 2 workers "
              f"{local['rate'] / naive['rate']:.1f}x naive (>= 3)")


if __name__ == "__main__":
    main()
