"""Benchmark: training images/s at 224 px, model alone against the full input pipeline.

Same run, same model, same optimiser step (AdamW; bf16 autocast and channels-last on
CUDA; optionally ``torch.compile``):
  (a) model only: a fixed random uint8 batch already on the device (normalise, forward,
      backward, step): the ceiling;
  (b) the full pipeline from slides: ``SlidePatchDataset`` + ``PatchSampler`` +
      ``make_loader`` workers -> device -> batched augmentation (D4 + HED) -> step;
  (c) the same from JPEG shards (``ShardDataset``).
b/a and c/a near 1 mean data loading keeps up with the model. The slide, index and shards
come from ``bench/loader.py``'s inputs (a synthetic slide, 224-px patches). The last
column extrapolates the time of one epoch of 530,000 patches (the project brief's
training set).

Usage: ``python bench/train.py [--models small-cnn,resnet18] [--steps 8] [--batch 32]
[--workers 2] [--compile] [--device auto] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from loader import make_inputs

EPOCH_PATCHES = 530_000


def _step_fn(model, optimizer, device, use_amp):
    from exaslide.augment import to_float

    loss_fn = torch.nn.CrossEntropyLoss()

    def step(images, labels):
        x = to_float(images, channels_last=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_fn(model(x).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(source: str, model_name: str, inputs: dict, args, device) -> float:
    """Images/s of ``args.steps`` training steps after 3 warm-up steps."""
    from exaslide.augment import HEDJitter, RandomFlipRot90
    from exaslide.data import (
        PatchSampler,
        ShardDataset,
        SlidePatchDataset,
        make_loader,
        to_device,
    )
    from exaslide.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=2).to(device)
    model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = _step_fn(model, optimizer, device, device.type == "cuda")
    warmup, steps = 3, args.steps
    if source == "model":
        images = torch.randint(0, 256, (args.batch, 3, 224, 224), dtype=torch.uint8,
                               device=device).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 2, (args.batch,), device=device)
        batches = ((images, labels) for _ in range(warmup + steps))
    else:
        if source == "slides":
            dataset = SlidePatchDataset(inputs["index"], slides={"bench": inputs["slide"]})
            sampler = PatchSampler(len(dataset), seed=0, rank=0, world_size=1)
        else:
            dataset = ShardDataset(inputs["shards"]["jpeg"], rank=0, world_size=1)
            sampler = None
        loader = make_loader(dataset, batch_size=args.batch, workers=args.workers,
                             sampler=sampler, device=str(device), drop_last=True)
        flips, hed = RandomFlipRot90(seed=0), HEDJitter(seed=0)

        def from_loader():
            while True:
                for images, labels, _ in loader:
                    images = hed(flips(to_device(images, device)))
                    yield images, labels.to(device, non_blocking=True)

        batches = from_loader()
    for i, (images, labels) in enumerate(batches):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        step(images, labels)
        if i == warmup + steps - 1:
            break
    _sync(device)
    return steps * args.batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small-cnn,resnet18")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--patches", type=int, default=2048)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        inputs = make_inputs(folder, args.side, args.patches)
        rows = []
        for name in args.models.split(","):
            rates = {}
            for source in ("model", "slides", "shards"):
                rates[source] = measure(source, name, inputs, args, device)
                print(f"{name} {source}: {rates[source]:,.0f} img/s", flush=True)
            rows.append((name, rates))
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {os.cpu_count()} cores"
    print(f"\n{label}; batch {args.batch}, {args.steps} steps after 3 warm-up, "
          f"{args.workers} workers, compile={args.compile}, torch {torch.__version__}\n")
    print("| model | (a) model only img/s | (b) from slides | b/a | (c) from JPEG shards "
          "| c/a | epoch of 530 K from slides |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        epoch = EPOCH_PATCHES / r["slides"]
        print(f"| {name} | {r['model']:,.0f} | {r['slides']:,.0f} | "
              f"{r['slides'] / r['model']:.2f} | {r['shards']:,.0f} | "
              f"{r['shards'] / r['model']:.2f} | {epoch:,.0f} s |")


if __name__ == "__main__":
    main()
