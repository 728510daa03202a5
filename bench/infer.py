"""Benchmark: inference cells/s with reading processes against reading threads.

Same run, same cells (the first ``--cells`` tissue cells, raster order, of the heatmap grid
of a synthetic slide with 256-px JPEG tiles), same batches; every setup interleaved with
the others, best of ``--repeat``:
  - ``inline``: patches read in the model's process (``workers=0``);
  - ``thread-N``: N reading threads (``readers="threads"``, the path before issue 12);
  - ``process-N``: N reading processes (the default now);
  - ``decode-cpu-N``: N processes shipping compressed tiles, decoded in the model's
    process by libjpeg-turbo threads (``decode="cpu"``, the CPU twin of ``decode="gpu"``);
  - ``decode-gpu-N`` (CUDA only): the same, decoded by nvJPEG (``decode="gpu"``).
Two rates per setup: *reading* alone (the batches the readers deliver, no model: the most
they can feed a GPU), as a marginal rate (the cells of a ``--cells`` run beyond those of a
run of a quarter as many, over the extra time: start-up cancels and is reported as
``fixed`` seconds per slide: fork, slide opening, a forked process's first touches of its
memory), and *with the model* (``exaslide.infer.slide._classify``: batches ->
device -> normalise -> model -> probabilities; tissue detection and file writing, fixed
costs per slide, excluded). Reported: cells/s, the ratio to the thread path with as many
readers (``x thread``), CPU per cell of every process (the model's and its readers':
``time.process_time`` + reaped children's ``RUSAGE_CHILDREN``), the model process's own
CPU per cell while reading (what caps one GPU's feeder: 1e6 / that is the most cells/s one
model process can take in), reading against the decode ceiling, and with the model
against the model alone (a batch already in memory, ``x model``).

The decode ceiling, measured in the same run: the standalone JPEG stream of every stored
tile the cells need, in memory, each decoded once with ``imagecodecs.jpeg_decode``; it is
given as cells/s (cells / decode time) and as CPU per cell.

Configurations (``--configs size:stride[:model]``): the demo's (64-px patches at stride
32, half-overlapping, with small-cnn) and the H200 measurement's in
``docs/inference.md`` (224 px at stride 56, reading only: small-cnn at 224 px runs ~170
cells/s on 2 CPU cores, which says nothing about reading). Patches are level 0 of a
0.25 um/px slide.

Usage: ``python bench/infer.py [--side 12288] [--cells 8192] [--model-cells 2048]
[--workers 1,2] [--repeat 3] [--configs 64:32:model,224:56] [--device cpu] [--batch 64]
[--keep DIR]``. About 3 minutes with the defaults on 2 quiet cores (small-cnn on 64-px
patches, ~1,000 cells/s there, bounds the model rows: they show whether the readers take
CPU from the model; the model rows include the readers' start-up). On a GPU
node: ``--device cuda --workers 4,8,15 --batch 256 --configs 224:56:model,224:224:model
--cells 40000 --model-cells 40000``.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_slide(folder: Path, side: int) -> Path:
    from exaslide.synth import SynthSpec, write_synthetic_slide

    path = folder / f"infer_{side}.tif"
    if not path.exists():
        write_synthetic_slide(path, SynthSpec(width=side, height=side, tumours=6, seed=40,
                                              mpp=0.25, quality=85))
    return path


def plan(path: Path, size: int, stride: int, cells: int):
    """The first ``cells`` tissue cells of the grid (a contiguous raster band)."""
    from exaslide.infer.grid import plan_grid
    from exaslide.patches.spec import PatchSpec
    from exaslide.slides import open_slide

    spec = PatchSpec(size=size, level=0)
    with open_slide(path) as slide:
        grid = plan_grid(slide, spec, stride=stride, min_tissue=0.1)
    keep = slice(0, min(cells, len(grid)))
    return spec, dataclasses.replace(grid, index_r=grid.index_r[keep],
                                     index_c=grid.index_c[keep], xs=grid.xs[keep],
                                     ys=grid.ys[keep],
                                     tissue_fraction=grid.tissue_fraction[keep])


def decode_ceiling(path: Path, spec, grid) -> dict:
    """Decode every stored tile the cells need once, from memory: best of 3."""
    import imagecodecs

    from exaslide.data.tile_bytes import jpeg_level
    from exaslide.patches.reader import PatchReader

    with PatchReader(path, spec) as reader:
        tiles = {t for x, y in zip(grid.xs.tolist(), grid.ys.tolist(), strict=True)
                 for t in reader._tiles_of(*reader._level_box(x, y))}
        level = jpeg_level(reader.tiles, reader.level)
        streams = [level.stream(tx, ty)[0] for tx, ty in sorted(tiles)]
    times = []
    for _ in range(3):
        start = time.process_time()
        for data in streams:
            imagecodecs.jpeg_decode(data)
        times.append(time.process_time() - start)
    seconds = min(times)
    return {"tiles": len(streams), "rate": len(grid) / seconds,
            "cpu_us": seconds / len(grid) * 1e6}


def _cpu() -> tuple[float, float]:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), children.ru_utime + children.ru_stime


def _batches(path, spec, grid, setup: tuple, batch: int, device: torch.device):
    from exaslide.infer.slide import _batches

    readers, workers, decode = setup
    return _batches(path, spec, grid, batch, workers, None, readers, device, decode)


def run_reading(path, spec, grid, setup: tuple, batch: int, device: torch.device) -> dict:
    """Seconds and CPU seconds (all processes; the model's process alone) of the batches
    alone."""
    main0, kids0 = _cpu()
    start, first, n = time.perf_counter(), None, 0
    for ids, images in _batches(path, spec, grid, setup, batch, device):
        if first is None:
            first = time.perf_counter() - start
        n += len(ids)
        del images
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    main1, kids1 = _cpu()
    assert n == len(grid), (n, len(grid))
    return {"cells": n, "seconds": seconds, "cpu": main1 - main0 + kids1 - kids0,
            "main": main1 - main0, "first": first}


def marginal(small: dict, large: dict) -> dict:
    """Rates of the cells the large run reads beyond the small one: start-up (fork,
    slide opening, a forked process's first touches of its memory) cancels out and is
    reported as ``fixed`` seconds."""
    cells = large["cells"] - small["cells"]
    seconds = max(large["seconds"] - small["seconds"], 1e-9)
    rate = cells / seconds
    return {"rate": rate, "cpu_us": (large["cpu"] - small["cpu"]) / cells * 1e6,
            "main_us": (large["main"] - small["main"]) / cells * 1e6,
            "fixed": small["seconds"] - small["cells"] / rate}


def run_model(path, spec, grid, setup: tuple, batch: int, device: torch.device,
              model, inputs) -> dict:
    """Cells/s of reading + model (``_classify``)."""
    from exaslide.infer.slide import _classify

    readers, workers, decode = setup
    main0, kids0 = _cpu()
    start = time.perf_counter()
    heat = _classify(model, grid, inputs, str(path), device, batch, workers, True, None,
                     False, "bench", readers, decode)
    seconds = time.perf_counter() - start
    main1, kids1 = _cpu()
    assert np.isfinite(heat).sum() == len(grid)
    return {"rate": len(grid) / seconds,
            "cpu_us": (main1 - main0 + kids1 - kids0) / len(grid) * 1e6}


def model_alone(model, inputs, spec, batch: int, device: torch.device, cells: int) -> float:
    """Cells/s of the model on one batch of real-looking patches already in memory."""
    from exaslide.infer.slide import _predict

    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(120, 230, (batch, spec.size, spec.size, 3),
                                           dtype=np.uint8))
    model = model.to(device).eval()
    if device.type == "cuda":
        pixels = pixels.pin_memory()
        model = model.to(memory_format=torch.channels_last)
    rounds = max(2, cells // batch)
    with torch.inference_mode():
        for _ in range(3):  # warm-up: kernels chosen and compiled for this shape
            _predict(model, pixels, inputs, device, True).cpu()
        start = time.perf_counter()
        outs = [_predict(model, pixels, inputs, device, True) for _ in range(rounds)]
        torch.cat(outs).cpu()
        return rounds * batch / (time.perf_counter() - start)


def setups(workers: list[int], device: torch.device) -> list[tuple[str, tuple]]:
    rows = [("inline", ("processes", 0, "off"))]
    for w in workers:
        rows += [(f"thread-{w}", ("threads", w, "off")),
                 (f"process-{w}", ("processes", w, "off"))]
    rows.append((f"decode-cpu-{workers[-1]}", ("processes", workers[-1], "cpu")))
    if device.type == "cuda":
        rows.append((f"decode-gpu-{workers[-1]}", ("processes", workers[-1], "gpu")))
    return rows


def measure(path, config: str, args, device: torch.device) -> None:
    from exaslide.infer.slide import model_inputs
    from exaslide.models import create_model

    size, stride, *rest = config.split(":")
    with_model = bool(rest) and rest[0] == "model"
    spec, grid = plan(path, int(size), int(stride), args.cells)
    small_grid = plan(path, int(size), int(stride), max(1, args.cells // 4))[1]
    model_grid = plan(path, int(size), int(stride), args.model_cells)[1]
    ceiling = decode_ceiling(path, spec, grid)
    rows = setups(args.workers, device)
    best: dict[tuple[str, str], dict] = {}
    meta = {"classes": ["normal", "tumour"], "patch": {"size": spec.size, "level": 0}}
    inputs = model_inputs(meta)
    model = create_model("small-cnn", num_classes=2).to(device).eval() if with_model \
        else None
    alone = 0.0
    for _ in range(args.repeat):
        if with_model:
            alone = max(alone, model_alone(model, inputs, spec, args.batch, device,
                                           len(model_grid)))
        for name, setup in rows:
            for kind, cells in (("small", small_grid), ("read", grid)):
                result = run_reading(path, spec, cells, setup, args.batch, device)
                if (name, kind) not in best or \
                        result["seconds"] < best[name, kind]["seconds"]:
                    best[name, kind] = result
            if with_model:
                result = run_model(path, spec, model_grid, setup, args.batch, device,
                                   model, inputs)
                if (name, "model") not in best or result["rate"] > best[name, "model"]["rate"]:
                    best[name, "model"] = result
    for name, _ in rows:
        best[name, "read"] = marginal(best[name, "small"], best[name, "read"])
    print_table(config, spec, (len(grid), len(model_grid)), ceiling, rows, best, alone,
                with_model)


def print_table(config, spec, cells, ceiling, rows, best, alone, with_model) -> None:
    print(f"\n## {spec.size}-px patches at stride {config.split(':')[1]} "
          f"({cells[0]} and {cells[0] // 4} cells read, {ceiling['tiles']} stored tiles"
          + (f"; {cells[1]} cells through the model" if with_model else "") + ")\n")
    print(f"decode ceiling: {ceiling['rate']:,.0f} cells/s "
          f"({ceiling['cpu_us']:.1f} us CPU per cell)"
          + (f"; model alone: {alone:,.0f} cells/s" if alone else ""))
    print("\n| setup | reading cells/s (marginal) | x thread | x ceiling | CPU us/cell | "
          "model process us/cell | fixed s |" + (" with model cells/s | x thread | "
                                                  "x model |" if with_model else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|---|" if with_model else ""))
    for name, _ in rows:
        r = best[name, "read"]
        twin = best.get((name.replace("process", "thread"), "read")) \
            if name.startswith("process") else None
        line = (f"| {name} | {r['rate']:,.0f} | "
                f"{r['rate'] / twin['rate']:.2f} | " if twin else
                f"| {name} | {r['rate']:,.0f} | | ")
        line += (f"{r['rate'] / ceiling['rate']:.2f} | {r['cpu_us']:.1f} | "
                 f"{r['main_us']:.1f} | {r['fixed']:.3f} |")
        if with_model:
            m = best[name, "model"]
            mt = best.get((name.replace("process", "thread"), "model")) \
                if name.startswith("process") else None
            line += (f" {m['rate']:,.0f} | " + (f"{m['rate'] / mt['rate']:.2f}" if mt else "")
                     + f" | {m['rate'] / alone:.2f} |")
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=12288, help="synthetic slide side")
    parser.add_argument("--cells", type=int, default=8192, help="cells per reading run")
    parser.add_argument("--model-cells", type=int, default=2048,
                        help="cells per run through the model")
    parser.add_argument("--workers", default="1,2", help="reader counts to compare")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--configs", default="64:32:model,224:56",
                        help="size:stride[:model] of each table")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the model process [all cores]")
    parser.add_argument("--keep", type=Path, help="folder to keep the slide between runs")
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    from exaslide.runtime import cpu_count, resolve_device

    torch.set_num_threads(args.threads or cpu_count())
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        path = make_slide(folder, args.side)
        print(f"# bench/infer.py: {args.side}-px synthetic slide "
              f"({time.perf_counter() - started:.0f} s to make), device {device}, "
              f"{cpu_count()} cores, torch threads {torch.get_num_threads()}, batch "
              f"{args.batch}, best of {args.repeat}")
        for config in args.configs.split(","):
            measure(path, config, args, device)


if __name__ == "__main__":
    main()
