"""Benchmark: MIL training bags/s and peak memory, memory-mapped bags against loaded ones.

A store of ``--bags`` bags of ``--patches x --dim`` float16 features (exaslide's format,
written with ``exaslide.retrieval.store.write_part``) is trained on for one epoch by ABMIL
(CLAM's "small" sizes: ``dim -> 512 -> 256``, one bag per Adam step, forward + backward),
each way in a fresh process:

  (a) ``mmap``: exaslide's path, ``FeatureStore.bag``: the part memory-mapped
      (``np.load(mmap_mode="r")``), converted to float32 one bag at a time (on a GPU:
      float16 copied there and converted there; every mode converts the same way);
  (b) ``load``: ``np.load`` of the whole part (no memory map) at each step;
  (c) ``ram``: every bag loaded into RAM (float16) before training, the way a loader that
      keeps the dataset in memory works; skipped when it would not fit in half the RAM.

Checksums are verified before timing in every mode (as ``exaslide mil train`` does once).
Peak memory: the process's peak RSS (``resource.getrusage``; torch and the libraries
are most of it; file pages a memory map touched count while mapped) and the peak of the
NumPy/Python allocations made after the warm-up, i.e. by the bags (``tracemalloc``;
torch's own allocations are not traced). Reads come from the page cache when the store
fits in it (it was just written): the numbers measure the loader, not the disk.
The last lines scale the results to 1,000 bags of 10,000 x 1,024 (20.5 GB of float16).

Usage: ``python bench/mil.py [--bags 16] [--patches 10000] [--dim 1024] [--device cpu]
[--modes mmap,load,ram] [--threads N] [--dir DIR] [--keep]``.
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

MODES = ("mmap", "load", "ram")
FULL = (1000, 10_000, 1024)  # the size: bags, patches, dim


def make_store(folder: Path, bags: int, patches: int, dim: int) -> float:
    """Write the store; returns seconds."""
    import pyarrow as pa

    from exaslide.retrieval.store import write_info, write_part

    started = time.perf_counter()
    write_info(folder, {"kind": "patches", "dim": dim, "model": "bench", "model_path": None})
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((patches, dim), dtype=np.float32).astype(np.float16)
            for _ in range(4)]  # random bags to copy from (generating 20 GB would dominate)
    x = np.arange(patches, dtype=np.int64)
    for i in range(bags):
        slide = f"b{i:05d}"
        table = pa.table({"key": [f"{slide}:{j}" for j in range(patches)],
                          "slide_id": [slide] * patches, "x": x, "y": x})
        features = pool[i % 4].copy()
        features[0, 0] = i  # no two parts alike
        write_part(folder, slide, table, features)
    return time.perf_counter() - started


def _bag_source(mode: str, store, device):
    """``(seconds to prepare, function slide_id -> float32 tensor on device)``; every
    mode converts the same way (``FeatureStore.bag``'s: float32 on the CPU, or float16
    copied to a GPU and converted there)."""
    import torch

    def convert(array: np.ndarray):
        if device.type != "cpu":
            return torch.from_numpy(array).to(device).float()
        return torch.from_numpy(array.astype(np.float32))

    started = time.perf_counter()
    parts = store.folder / "parts"
    if mode == "mmap":
        return 0.0, lambda s: store.bag(s, device=device)
    if mode == "load":
        return 0.0, lambda s: convert(np.load(parts / f"{s}.npy"))
    arrays = {s: np.load(parts / f"{s}.npy") for s in store.slide_ids}
    return time.perf_counter() - started, lambda s: convert(arrays[s])


def run_mode(store_dir: str, mode: str, device_name: str, threads: int | None) -> dict:
    """One epoch of ABMIL in this process; bags/s and peak memory."""
    import resource
    import tracemalloc

    import torch
    import torch.nn.functional as F

    from exaslide.mil.bags import FeatureStore
    from exaslide.mil.registry import create_mil_model

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    store = FeatureStore(store_dir)
    verify = time.perf_counter()
    for slide in store.slide_ids:  # checksums, once, before timing
        store.features(slide)
    verify = time.perf_counter() - verify
    torch.manual_seed(0)
    model = create_mil_model("abmil", store.dim, 2, dropout=0.25).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5)

    def step(i: int, slide: str, source) -> None:
        h = source(slide)
        loss = F.cross_entropy(model(h)["logits"], torch.tensor([i % 2], device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i, slide in enumerate(store.slide_ids[:2]):  # warm-up (imports, allocator)
        step(i, slide, lambda s: store.bag(s, device=device))
    tracemalloc.start()  # from here: the bags' own allocations
    prepare, source = _bag_source(mode, store, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for i, slide in enumerate(store.slide_ids):
        step(i, slide, source)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    _, traced = tracemalloc.get_traced_memory()
    return {"mode": mode, "device": device_name, "bags": len(store.slide_ids),
            "seconds": seconds, "bags_per_s": len(store.slide_ids) / seconds,
            "prepare_s": prepare, "verify_s": verify,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "traced_peak_mb": traced / 2**20,
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20
            if device.type == "cuda" else None}


def _fits_in_ram(nbytes: int) -> bool:
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return True
    return nbytes < available / 2


def _child(store: Path, mode: str, args) -> dict | None:
    command = [sys.executable, __file__, "--child", mode, "--dir", str(store),
               "--device", args.device] + (["--threads", str(args.threads)]
                                           if args.threads else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{mode}: failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: list[dict], args, store_bytes: int) -> None:
    print(f"\n{args.bags} bags of {args.patches} x {args.dim} float16 "
          f"({store_bytes / 1e9:.2f} GB), ABMIL small, device {args.device}, "
          f"{args.threads or 'default'} threads")
    print("| mode | bags/s | verify s | prepare s | peak RSS MB | traced peak MB | GPU peak MB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        gpu = f"{r['gpu_peak_mb']:.0f}" if r["gpu_peak_mb"] is not None else ""
        print(f"| {r['mode']} | {r['bags_per_s']:.2f} | {r['verify_s']:.1f} | "
              f"{r['prepare_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['traced_peak_mb']:.0f} | {gpu} |")
    full_bytes = FULL[0] * FULL[1] * FULL[2] * 2
    scale = (FULL[1] * FULL[2]) / (args.patches * args.dim)
    print(f"\nScaled to {FULL[0]} bags of {FULL[1]} x {FULL[2]} ({full_bytes / 1e9:.1f} GB):")
    for r in results:
        epoch = FULL[0] / r["bags_per_s"] * scale
        memory = "flat (one bag at a time)" if r["mode"] != "ram" else \
            f"~{full_bytes / 2**30:.1f} GiB + one bag"
        print(f"- {r['mode']}: ~{epoch / 60:.1f} min per epoch (compute scaled by bag size), "
              f"memory {memory}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=16)
    parser.add_argument("--patches", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dir", default=None, help="Store folder (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the store.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.dir, args.child, args.device, args.threads)))
        return
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_mil_"))
    store = root / "store"
    try:
        if not (store / "embeddings.json").exists():
            seconds = make_store(store, args.bags, args.patches, args.dim)
            print(f"store written in {seconds:.1f} s: {store}")
        store_bytes = sum(p.stat().st_size for p in (store / "parts").glob("*.npy"))
        results = []
        for mode in args.modes.split(","):
            if mode == "ram" and not _fits_in_ram(store_bytes):
                print(f"ram: skipped ({store_bytes / 1e9:.1f} GB would not fit in half the "
                      "available memory)")
                continue
            result = _child(store, mode, args)
            if result is not None:
                print(json.dumps(result))
                results.append(result)
        report(results, args, store_bytes)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
