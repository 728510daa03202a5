"""Benchmark: patches/s embedding patches read from a slide, exaslide against a naive loop.

Same run, same model instance, same patches (224 px, level 0, in index order, from the
tissue of a synthetic slide with 256-px JPEG tiles), same batch size, same ImageNet
normalisation, inference mode (bf16 autocast and channels-last on CUDA):
  (a) model only: one batch of those patches, decoded and normalised once, already in
      memory on the device: the ceiling. (Not random numbers: on CPU a random-weight
      ResNet-50 ran ~20% slower on ``torch.randn`` input than on real patches, e.g. 23-24
      against 28-31 patches/s on 2 cores, partly denormals, which made the "ceiling"
      lower than the pipeline);
  (b) exaslide: ``SlidePatchDataset`` + ``make_loader`` -> ``to_device`` -> ``to_float``
      (normalise on the device) -> model;
  (c) naive: ``openslide.OpenSlide.read_region`` per patch -> torchvision ``ToTensor`` +
      ``Normalize`` per patch -> ``torch.stack`` -> model, in a plain loop.
Encoders (random weights, nothing downloaded): a ViT-B/16 (timm ``vit_base_patch16_224``,
``num_classes=0``: the 768-d class token) and ResNet-50 truncated after layer 3 (torchvision
``resnet50`` without layer 4 and fc, + global average pooling: 1024-d, CLAM's
``resnet50_trunc``). Each setup runs ``--runs`` times, interleaved (a, b, c, a, b, c...),
each time with a fresh dataset / OpenSlide handle (cold caches); (b) and (c) are also
timed without the model (input only), to show where the time goes. A rate is the marginal
one (patches after ``--warmup`` batches over the time they took: start-up, first batches
and lazy initialisation excluded) and the best run is reported. b/c is exaslide against
the naive loop, b/a how close exaslide gets to the model alone. Before timing, the first
batch of (b) and (c) are compared: their inputs must be equal (exaslide reads the same
pixels as OpenSlide).

Usage: ``python bench/embed.py [--models vit_b16,resnet50_trunc] [--batch 8]
[--batches 3] [--warmup 1] [--runs 3] [--workers 0] [--device auto] [--side 4096]
[--keep DIR]``. The defaults take about two minutes on 2 CPU cores; on a GPU use e.g.
``--batch 256 --batches 8 --workers 8``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZE = 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODELS = ("vit_b16", "resnet50_trunc")


def build_model(name: str) -> torch.nn.Module:
    """A random-weight encoder (nothing is downloaded)."""
    torch.manual_seed(0)
    if name == "vit_b16":
        import timm

        return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    if name == "resnet50_trunc":
        import torchvision

        r = torchvision.models.resnet50(weights=None)
        return torch.nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2,
                                   r.layer3, torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten())
    raise SystemExit(f"unknown model {name!r}; one of {', '.join(MODELS)}")


def make_inputs(folder: Path, side: int, patches: int) -> dict:
    """A synthetic slide and the index of ``patches`` tissue patches (random subset of the
    224-px level-0 grid, kept in grid order)."""
    from exaslide.annotations import read_annotations
    from exaslide.patches import PatchSpec, SamplingOptions, sample_patches
    from exaslide.patches.index import make_table, write_slide_index
    from exaslide.patches.job import patch_keys
    from exaslide.slides import open_slide
    from exaslide.synth import SynthSpec, write_synthetic_slide

    slide = folder / f"embed_{side}.tif"
    if not slide.exists():
        write_synthetic_slide(slide, SynthSpec(width=side, height=side, tumours=3, seed=41,
                                               mpp=0.25, quality=85))
    with open_slide(slide) as opened:
        sampled = sample_patches(opened, read_annotations(slide.with_suffix(".xml")),
                                 PatchSpec(size=SIZE), SamplingOptions())
    if len(sampled.x) < patches:
        raise SystemExit(f"the slide has {len(sampled.x)} tissue patches, {patches} needed: "
                         "raise --side")
    pick = np.sort(np.random.default_rng(0).permutation(len(sampled.x))[:patches])
    x, y = sampled.x[pick], sampled.y[pick]
    index = folder / "index" / "bench.parquet"
    write_slide_index(make_table({"key": patch_keys("bench", x, y), "slide_id": "bench",
                                  "x": x, "y": y, "level": 0, "size": SIZE,
                                  "footprint": float(SIZE),
                                  "label": np.asarray(sampled.label)[pick]}), index)
    return {"slide": str(slide), "index": str(index), "x": x, "y": y}


def exaslide_batches(inputs: dict, args, device):
    """(b): normalised batches on ``device`` from exaslide's dataset and loader."""
    from exaslide.augment import to_float
    from exaslide.data import SlidePatchDataset, make_loader, to_device

    dataset = SlidePatchDataset(inputs["index"], slides={"bench": inputs["slide"]})
    loader = make_loader(dataset, batch_size=args.batch, workers=args.workers,
                         device=str(device))
    cuda = device.type == "cuda"
    try:
        for images, _labels, _meta in loader:
            yield to_float(to_device(images, device, channels_last=cuda), MEAN, STD,
                           channels_last=cuda)
    finally:
        dataset.close()


def naive_batches(inputs: dict, args, device):
    """(c): ``read_region`` + torchvision transforms per patch, stacked, moved."""
    import openslide
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    handle = openslide.OpenSlide(inputs["slide"])
    try:
        x, y = inputs["x"], inputs["y"]
        for start in range(0, len(x), args.batch):
            images = [transform(handle.read_region((int(a), int(b)), 0, (SIZE, SIZE))
                                .convert("RGB"))
                      for a, b in zip(x[start:start + args.batch], y[start:start + args.batch],
                                      strict=True)]
            batch = torch.stack(images).to(device, non_blocking=True)
            yield batch.contiguous(memory_format=torch.channels_last) \
                if device.type == "cuda" else batch
    finally:
        handle.close()


def model_batches(batch: torch.Tensor):
    """(a): the same normalised batch, already on the device, every time."""
    while True:
        yield batch


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def marginal_rate(model, batches, args, device) -> float:
    """Patches/s over ``args.batches`` batches after ``args.warmup`` (each batch read,
    moved and embedded, the features brought back to the host; input only when
    ``model`` is None)."""
    start = None
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                enabled=device.type == "cuda"):
        for i, x in enumerate(batches):
            if i == args.warmup:
                _sync(device)
                start = time.perf_counter()
            if model is not None:
                model(x).float().cpu()
            if i == args.warmup + args.batches - 1:
                break
    _sync(device)
    batches.close()
    return args.batches * args.batch / (time.perf_counter() - start)


def first_batch(inputs: dict, args, device) -> torch.Tensor:
    """The first batch of (b), after checking it equals the first batch of (c)."""
    ours, naive = exaslide_batches(inputs, args, device), naive_batches(inputs, args, device)
    a, b = next(ours), next(naive)
    ours.close()
    naive.close()
    diff = float((a.float() - b.float()).abs().max())
    print(f"first batch, exaslide vs naive inputs: max |diff| = {diff:.2g}", flush=True)
    if diff > 1e-4:
        raise SystemExit("exaslide and OpenSlide read different pixels")
    return a


def run(name: str, inputs: dict, batch: torch.Tensor, args, device) -> dict:
    """The best rate of each setup over ``args.runs`` interleaved runs."""
    model = build_model(name).eval().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        dim = int(model(batch[:1]).shape[-1])
    best = dict.fromkeys(("model", "exaslide", "naive", "exaslide_input", "naive_input"), 0.0)
    for _ in range(args.runs):
        for setup in best:
            source = model_batches(batch) if setup == "model" else \
                exaslide_batches(inputs, args, device) if setup.startswith("exaslide") else \
                naive_batches(inputs, args, device)
            rate = marginal_rate(None if setup.endswith("_input") else model, source, args,
                                 device)
            best[setup] = max(best[setup], rate)
            print(f"{name} {setup}: {rate:,.1f} patches/s", flush=True)
    return {"name": name, "dim": dim, **best}


def main() -> None:
    from exaslide.runtime import cpu_count, resolve_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="exaslide loader processes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads [the CPU count]")
    parser.add_argument("--side", type=int, default=4096, help="synthetic slide side")
    parser.add_argument("--keep", type=Path, help="folder to keep the slide between runs")
    args = parser.parse_args()
    if min(args.batch, args.batches, args.runs) < 1 or args.warmup < 0:
        parser.error("--batch, --batches and --runs must be >= 1, --warmup >= 0")
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads or cpu_count())
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        inputs = make_inputs(folder, args.side, (args.warmup + args.batches) * args.batch)
        batch = first_batch(inputs, args, device)
        rows = [run(name, inputs, batch, args, device) for name in args.models.split(",")]
    _report(rows, args, device)


def _report(rows: list[dict], args, device) -> None:
    import timm

    label = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    print(f"\n{label}; batch {args.batch}, {args.batches} timed batches after "
          f"{args.warmup} warm-up, best of {args.runs} runs, exaslide workers "
          f"{args.workers}; torch {torch.__version__}, timm {timm.__version__}\n")
    print("| encoder | dim | (a) model only patches/s | (b) exaslide | (c) naive OpenSlide + "
          "torchvision | b/c | b/a | input only: exaslide / naive |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['dim']} | {r['model']:,.1f} | {r['exaslide']:,.1f} | "
              f"{r['naive']:,.1f} | {r['exaslide'] / r['naive']:.2f} | "
              f"{r['exaslide'] / r['model']:.2f} | {r['exaslide_input']:,.0f} / "
              f"{r['naive_input']:,.0f} |")


if __name__ == "__main__":
    main()
