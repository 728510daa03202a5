"""Benchmark: the compressed batch path on the CPU against the per-item path.

Same patches (``bench/loader.py``'s inputs: 224-px tissue patches of a synthetic
JPEG-tiled slide, shuffled with a seeded ``PatchSampler``), batches of 64, in one process,
cold (a fresh dataset per repeat, so no tile is cached at the start), best of 3:
  (a) ``SlidePatchDataset`` items + ``collate_patches``: the per-item path;
  (b) ``CompressedPatchDataset[batch]`` (what a loader worker does: read the stored
      tiles' bytes, no decoding) and ``BatchDecoder("cpu")`` (what the training process
      does with ``decode: cpu``: libjpeg-turbo, block copies), split into the two halves;
  (c) the ceiling of (b): the same batches' streams decoded from memory, nothing else.
Reported: CPU milliseconds per image (all threads of the process), and the bytes a batch
ships per image (compressed streams) against its pixels.

Usage: ``python bench/compressed.py [--side 20000] [--patches 2048] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from loader import make_inputs

BATCH = 64


def _cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def run(inputs: dict, threads: int) -> dict:
    import imagecodecs
    import torch

    from exaslide.data import PatchSampler, SlidePatchDataset
    from exaslide.data.batch_decode import BatchDecoder
    from exaslide.data.compressed_dataset import CompressedPatchDataset
    from exaslide.data.loader import collate_patches

    torch.set_num_threads(1)
    slides = {"bench": inputs["slide"]}
    n = len(SlidePatchDataset(inputs["index"], slides=slides))
    order = list(PatchSampler(n, seed=0, rank=0, world_size=1))
    batches = [order[i : i + BATCH] for i in range(0, n - BATCH + 1, BATCH)]
    images = len(batches) * BATCH
    best = {"per_item": 1e9, "worker": 1e9, "decoder": 1e9, "ceiling": 1e9}
    shipped = 0
    for _ in range(3):
        per_item = SlidePatchDataset(inputs["index"], slides=slides)
        best["per_item"] = min(best["per_item"], _cpu(
            lambda ds=per_item: [collate_patches([ds[i] for i in b]) for b in batches]))
        compressed = CompressedPatchDataset(inputs["index"], slides=slides)
        compressed[batches[0][:1]]  # open the slide (per_item above opened its own)
        made = []
        best["worker"] = min(best["worker"], _cpu(
            lambda ds=compressed, out=made: out.extend(ds[b] for b in batches)))
        decoder = BatchDecoder("cpu", threads=threads)
        best["decoder"] = min(best["decoder"], _cpu(
            lambda d=decoder, todo=made: [d(b) for b in todo]))
        decoder.close()
        streams = [s.numpy() for b in made for s in b.streams()]
        best["ceiling"] = min(best["ceiling"], _cpu(
            lambda todo=streams: [imagecodecs.jpeg8_decode(s) for s in todo]))
        shipped = sum(b.nbytes for b in made)
        tiles = sum(b.stream_count for b in made)
    ms = {k: v / images * 1e3 for k, v in best.items()}
    return {**ms, "shipped_kb": shipped / images / 1e3, "tiles_per_image": tiles / images,
            "images": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--patches", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        r = run(make_inputs(folder, args.side, args.patches), args.threads)
    total = r["worker"] + r["decoder"]
    print(f"\n{r['images']} images, batch {BATCH}, {args.threads} decode thread(s); "
          "CPU ms per image (best of 3, cold)\n")
    print("| path | CPU ms/image | x per-item | of its ceiling |")
    print("|---|---|---|---|")
    print(f"| (a) SlidePatchDataset + collate | {r['per_item']:.3f} | 1.00 | |")
    print(f"| (b) compressed: worker (read bytes) | {r['worker']:.3f} | | |")
    print(f"| (b) compressed: decoder (decode + assemble) | {r['decoder']:.3f} | | |")
    print(f"| (b) compressed, both halves | {total:.3f} | "
          f"{total / r['per_item']:.2f} | {r['ceiling'] / total:.2f} |")
    print(f"| (c) ceiling: the batches' streams decoded | {r['ceiling']:.3f} | "
          f"{r['ceiling'] / r['per_item']:.2f} | 1.00 |")
    print(f"\nshipped per image: {r['shipped_kb']:.1f} KB of JPEG streams vs "
          f"{224 * 224 * 3 / 1e3:.1f} KB of pixels "
          f"({r['shipped_kb'] / (224 * 224 * 3 / 1e3):.2f}); "
          f"{r['tiles_per_image']:.2f} stored tiles decoded per image")


if __name__ == "__main__":
    main()
