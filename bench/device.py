"""Benchmark on one GPU node (issue 12, section 4): one table, every row fail-soft.

Rows (each measured in its own child process, so a crash or a hang costs one row; the
table always prints):
  - JPEG decode: nvJPEG batched (``torchvision.io.decode_jpeg(list, device="cuda")``)
    tiles/s against libjpeg-turbo (imagecodecs) on 1 core and on every core (threads
    that release the GIL: the node's CPU decode ceiling), on the same stored tiles; and
    the compressed bytes a batch ships per image against its pixels;
  - training images/s, small-cnn and ResNet-50 (batch in memory = the model alone; then
    from slides with ``decode=gpu`` and ``decode=cpu``, 3 loader workers, and the
    per-item path ``decode=off`` with 12 workers), data/model ratios and the CPU cores the
    whole process tree kept busy during the measured window;
  - inference cells/s (``exaslide.infer.infer_cohort`` on the same slides);
  - inference reading (``bench/infer.py --device cuda --workers 4,8,15 --batch 256
    --configs 224:56:model,224:224:model --cells 40000 --model-cells 40000``, on its own
    12,288-px slide): cells/s per reading setup (in the model's process, N threads, N
    processes, compressed tiles decoded on the CPU), alone and with small-cnn, as rows
    of the table; its own tables follow the table.

Inputs are built here in parallel (synthetic 40x-like JPEG-tiled slides, 224-px tissue
grid patches), in well under a minute on 16 cores. ``--cpu-smoke`` runs every row on the
CPU at toy sizes (a check that the script works end to end, not a measurement).

Usage: ``python bench/device.py [--cpu-smoke] [--budget 450] [--keep DIR]``; see
``bench/device.sh`` for the one-command run on a fresh GPU node. The budget bounds the
run: a row gets at most the seconds left (rows that do not fit are skipped). Estimated on
a 16-core, 1-GPU node (not yet measured): inputs ~30 s, decode ~20 s, 8 training rows
~20-25 s each, ``infer_cohort`` ~20 s, ``bench/infer.py`` ~90 s (at most 180): about 6
minutes. ``--cpu-smoke``: about 70 s on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SIZE = 224
GOALS = {"small-cnn": 0.9, "resnet50": 0.95}
INFER_GOAL = 20_000
MAX_BUSY_CORES = 4
BENCH = Path(__file__).resolve().parent
#: ``bench/infer.py`` on a GPU node (docs/inference.md), and its CPU-smoke twin.
INFER_BENCH = ["--device", "cuda", "--workers", "4,8,15", "--batch", "256", "--configs",
               "224:56:model,224:224:model", "--cells", "40000", "--model-cells", "40000"]
INFER_BENCH_SMOKE = ["--device", "cpu", "--workers", "1", "--batch", "16", "--configs",
                     "64:64:model", "--cells", "512", "--model-cells", "128", "--repeat",
                     "1", "--side", "4096"]


# ---------------------------------------------------------------------------- inputs
def _one_slide(job: tuple[str, int, int]) -> dict:
    """Write one synthetic slide and sample its 224-px tissue grid (a worker process)."""
    from exaslide.annotations import read_annotations
    from exaslide.patches import PatchSpec, SamplingOptions, sample_patches
    from exaslide.slides import open_slide
    from exaslide.synth import SynthSpec, write_synthetic_slide

    folder, side, seed = job
    path = Path(folder) / f"slide_{seed:02d}.tif"
    if not path.exists():
        write_synthetic_slide(path, SynthSpec(width=side, height=side, tumours=4, seed=seed,
                                              mpp=0.25, quality=85))
    with open_slide(path) as slide:
        sampled = sample_patches(slide, read_annotations(path.with_suffix(".xml")),
                                 PatchSpec(size=SIZE), SamplingOptions(), key=path.stem)
    return {"path": str(path), "id": path.stem, "x": sampled.x.tolist(),
            "y": sampled.y.tolist(), "label": [str(v) for v in sampled.label]}


def build_inputs(folder: Path, slides: int, side: int, processes: int) -> dict:
    """Slides and one index of their tissue patches; returns paths and counts."""
    from exaslide.patches.index import make_table, write_slide_index

    jobs = [(str(folder), side, seed) for seed in range(slides)]
    with ProcessPoolExecutor(max(1, min(processes, slides))) as pool:
        made = list(pool.map(_one_slide, jobs))
    for entry in made:
        n = len(entry["x"])
        write_slide_index(make_table({
            "key": [f"{entry['id']}-{i}" for i in range(n)], "slide_id": entry["id"],
            "x": entry["x"], "y": entry["y"], "level": 0, "size": SIZE,
            "footprint": float(SIZE), "label": entry["label"], "split": "train"}),
            folder / "index" / f"{entry['id']}.parquet")
    return {"index": str(folder / "index"), "slides": {e["id"]: e["path"] for e in made},
            "patches": sum(len(e["x"]) for e in made),
            "bytes": sum(os.path.getsize(e["path"]) for e in made)}


# ------------------------------------------------------------------------- measuring
def _tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live children (loader workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    me, total = str(os.getpid()), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if entry == me or fields[1] == me:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_step(name: str, device, batch: int):
    """A training step (normalise, forward, backward, AdamW) of a fresh model."""
    import torch

    from exaslide.augment import to_float
    from exaslide.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=2).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    amp = device.type == "cuda"

    def step(images, labels):
        x = to_float(images, channels_last=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _batches(mode: str, inputs: dict, args, device):
    """An endless iterator of ``(uint8 images on the device, labels)``, augmented (D4 +
    HED on the device) when they come from slides."""
    import torch

    from exaslide.augment import HEDJitter, RandomFlipRot90
    from exaslide.data import PatchSampler, SlidePatchDataset, make_loader, to_device

    if mode == "model":
        images = torch.randint(0, 256, (args.batch, 3, SIZE, SIZE), dtype=torch.uint8,
                               device=device).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 2, (args.batch,), device=device)
        while True:
            yield images, labels
    reference = SlidePatchDataset(inputs["index"], slides=inputs["slides"])
    sampler = PatchSampler(reference.labels, balance=True, seed=0, num_samples=10**7,
                           rank=0, world_size=1)
    if mode == "off":
        loader = make_loader(reference, batch_size=args.batch, workers=args.off_workers,
                             sampler=sampler, device=str(device), drop_last=True)
    else:
        from exaslide.data.batch_decode import BatchDecoder, DecodedLoader
        from exaslide.data.compressed_dataset import (
            CompressedPatchDataset,
            make_compressed_loader,
        )

        decoder = BatchDecoder(device, decoder="nvjpeg" if mode == "gpu" else "imagecodecs",
                               threads=args.decode_threads)
        loader = DecodedLoader(make_compressed_loader(
            CompressedPatchDataset.like(reference), batch_size=args.batch,
            workers=args.workers, sampler=sampler, device=str(device), drop_last=True),
            decoder, prefetch=2)
    flips, hed = RandomFlipRot90(seed=0), HEDJitter(seed=0)
    for images, labels, _ in loader:
        images = hed(flips(to_device(images, device)))
        yield images, labels.to(device, non_blocking=True)


def row_train(model: str, mode: str, inputs: dict, args) -> dict:
    """Images/s over ``args.seconds`` after ``args.warmup`` steps, and busy cores."""
    import torch

    device = torch.device(args.device)
    if mode == "gpu" and device.type != "cuda":
        return {"error": "n/a: decode=gpu needs a CUDA device"}
    torch.backends.cudnn.benchmark = True
    step = _model_step(model, device, args.batch)
    batches = _batches(mode, inputs, args, device)
    for _ in range(args.warmup):
        step(*next(batches))
    _sync(device)
    start, cpu0, steps = time.perf_counter(), _tree_cpu_seconds(), 0
    while True:
        step(*next(batches))
        steps += 1
        if steps % 4 == 0 or args.cpu_smoke:
            _sync(device)
            if time.perf_counter() - start >= args.seconds:
                break
    _sync(device)
    wall = time.perf_counter() - start
    return {"rate": steps * args.batch / wall, "busy": (_tree_cpu_seconds() - cpu0) / wall,
            "steps": steps}


def _streams(inputs: dict, limit: int) -> list[bytes]:
    """Standalone streams of up to ``limit`` tissue tiles (over 8 KB) of the slides."""
    from exaslide.data.tile_bytes import jpeg_level
    from exaslide.slides.tifffile_backend import TiffFileSlide

    streams: list[bytes] = []
    for path in inputs["slides"].values():
        with TiffFileSlide(path) as slide:
            level = jpeg_level(slide, 0)
            for i in np.flatnonzero(level.counts > 8192):
                tx, ty = int(i % level.grid[0]), int(i // level.grid[0])
                streams.append(level.stream(tx, ty)[0])
                if len(streams) >= limit:
                    return streams
    return streams


def _best_rate(fn, count: int, repeats: int = 3) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = max(best, count / (time.perf_counter() - start))
    return best


def row_decode(inputs: dict, args) -> dict:
    """nvJPEG vs libjpeg tiles/s on the same streams; shipped bytes per image."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    import imagecodecs
    import torch

    streams = _streams(inputs, args.tiles)
    cores = os.cpu_count() or 1
    one = streams[: max(64, len(streams) // 8)]
    result = {"tiles": len(streams), "kb_per_tile": np.mean([len(s) for s in streams]) / 1e3,
              "cpu1": _best_rate(lambda: [imagecodecs.jpeg8_decode(s) for s in one],
                                 len(one))}
    chunks = [streams[i::cores] for i in range(cores)]
    with ThreadPoolExecutor(cores) as pool:
        result["cpu_all"] = _best_rate(lambda: list(pool.map(
            lambda part: [imagecodecs.jpeg8_decode(s) for s in part], chunks)), len(streams))
    result["cores"] = cores
    result.update(_shipped_bytes(inputs, args))
    if torch.cuda.is_available():
        from torchvision.io import ImageReadMode, decode_jpeg

        device = torch.device("cuda")
        tensors = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
        calls = [tensors[i : i + args.decode_batch]
                 for i in range(0, len(tensors), args.decode_batch)]

        def gpu():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                for call in calls:
                    decode_jpeg(call, mode=ImageReadMode.RGB, device=device)
            torch.cuda.synchronize(device)

        gpu()  # warm-up: nvJPEG handles, allocations
        result["gpu"] = _best_rate(gpu, len(tensors))
    return result


def _shipped_bytes(inputs: dict, args) -> dict:
    """Mean compressed bytes per image of a few shuffled batches, and the pixels."""
    from exaslide.data import PatchSampler
    from exaslide.data.compressed_dataset import CompressedPatchDataset

    dataset = CompressedPatchDataset(inputs["index"], slides=inputs["slides"])
    order = list(PatchSampler(dataset.labels, balance=True, seed=0, rank=0, world_size=1))
    batches = [dataset[order[i : i + args.batch]] for i in range(0, 4 * args.batch,
                                                                 args.batch)]
    images = sum(len(b) for b in batches)
    return {"shipped_kb": sum(b.nbytes for b in batches) / images / 1e3,
            "pixels_kb": SIZE * SIZE * 3 / 1e3,
            "tiles_per_image": sum(b.stream_count for b in batches) / images}


def row_infer(inputs: dict, args) -> dict:
    """Cells/s of ``infer_cohort`` with a random small-cnn on the input slides."""
    import torch

    from exaslide.infer import infer_cohort
    from exaslide.models import create_model, save_model

    folder = Path(args.scratch)
    model_path = folder / "infer_model.pt"
    save_model(model_path, create_model("small-cnn", num_classes=2),
               {"classes": ["normal", "tumour"], "patch": {"size": SIZE, "level": 0,
                                                           "mpp": None}})
    slides = list(inputs["slides"].values())[: args.infer_slides]
    start = time.perf_counter()
    outcomes = infer_cohort(model_path, slides, folder / f"infer_{time.time_ns()}",
                            batch_size=args.infer_batch, device=args.device,
                            decode="auto", progress=False, overwrite=True)
    wall = time.perf_counter() - start
    failed = [o for o in outcomes if o.status != "done"]
    if failed:
        return {"error": f"{failed[0].slide_id}: {failed[0].error}"}
    cells = sum(o.cells for o in outcomes)
    seconds = sum(o.seconds for o in outcomes)
    del torch
    return {"rate": cells / seconds, "wall_rate": cells / wall, "cells": cells}


# ------------------------------------------------------------------------- the table
def _rows(args) -> list[str]:
    rows = ["decode"]
    for model in args.models.split(","):
        rows += [f"train:{model}:{mode}" for mode in ("model", "gpu", "cpu", "off")]
    return [*rows, "infer", "infer-bench"]


def _run_logged(command: list[str], log_file: Path, timeout: float) -> int:
    """Run ``command`` in a fresh process group, its output into ``log_file`` (no pipes:
    processes it leaves behind, e.g. loader workers, could hold a pipe open); the whole
    group is killed afterwards. Returns the exit code (``-SIGKILL`` when it timed out)."""
    import signal

    with open(log_file, "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return child.returncode


def run_child(row: str, inputs_file: Path, args, timeout: float) -> dict:
    """Run one row in a fresh process group; its result, or ``{"error": ...}``.

    The child writes its result to a file and its output to a log; its whole process
    group is killed afterwards."""
    import signal

    name = row.replace(":", "_")
    result_file = inputs_file.parent / f"{name}.result.json"
    log_file = inputs_file.parent / f"{name}.log"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--row", row, "--inputs", str(inputs_file),
               "--result", str(result_file), *args.passthrough]
    code = _run_logged(command, log_file, timeout)
    if result_file.exists():
        return json.loads(result_file.read_text())
    if code == -signal.SIGKILL:
        return {"error": f"timed out after {timeout:.0f} s (log: {log_file.name})"}
    lines = [line for line in log_file.read_text(errors="replace").splitlines()
             if line.strip()]
    return {"error": (lines[-1] if lines else f"exit code {code}")[:200]}


def run_infer_bench(folder: Path, args, timeout: float) -> dict:
    """``bench/infer.py`` (:data:`INFER_BENCH`) in its own process group: its tables,
    parsed, and its output. Tables it printed before a timeout are kept."""
    import signal

    log_file = folder / "infer-bench.log"
    options = INFER_BENCH_SMOKE if args.cpu_smoke else INFER_BENCH
    started = time.perf_counter()
    code = _run_logged([sys.executable, str(BENCH / "infer.py"), *options], log_file,
                       timeout)
    output = log_file.read_text(errors="replace")
    result = {"tables": parse_infer_tables(output), "output": output,
              "seconds": time.perf_counter() - started,
              "command": "python bench/infer.py " + " ".join(options)}
    if code != 0:
        lines = [line for line in output.splitlines() if line.strip()]
        why = f"timed out after {timeout:.0f} s" if code == -signal.SIGKILL else \
            (lines[-1] if lines else f"exit code {code}")[:200]
        result["error"] = why + (" (tables printed before it are kept)"
                                 if result["tables"] else "")
    return result


def parse_infer_tables(output: str) -> list[dict]:
    """The tables ``bench/infer.py`` prints: ``{"title", "ceiling", "rows"}`` each,
    ``rows`` a list of ``{column header: cell text}`` (the second of two columns with
    one header gets `` 2``: ``"x thread 2"`` is the model's)."""
    tables: list[dict] = []
    header: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("## "):
            tables.append({"title": line[3:].strip(), "ceiling": "", "rows": []})
            header = None
        elif not tables:
            continue
        elif line.startswith("decode ceiling:"):
            tables[-1]["ceiling"] = line.strip()
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:  # a repeated header ("x thread" of the model) gets " 2"
                header = [c if c not in cells[:i] else f"{c} 2" for i, c in enumerate(cells)]
            else:
                tables[-1]["rows"].append(dict(zip(header, cells, strict=False)))
    return tables


def _number(text: str | None) -> float | None:
    try:
        return float(str(text).replace(",", ""))
    except ValueError:
        return None


def _fmt(value, unit: str = "") -> str:
    return "—" if value is None else f"{value:,.0f}{unit}"


def print_table(results: dict, args, inputs: dict, built_s: float) -> None:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"no GPU ({os.cpu_count()} CPU cores)"
    print(f"\n## exaslide device benchmark — {time.strftime('%Y-%m-%d')}, {device}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}"
          f"{' (CPU SMOKE: not a measurement)' if args.cpu_smoke else ''}\n")
    print(f"Inputs: {len(inputs['slides'])} synthetic slides of {args.side} px "
          f"({inputs['bytes'] / 2**20:.0f} MiB), {inputs['patches']:,} tissue patches of "
          f"{SIZE} px; built in {built_s:.0f} s. Batch {args.batch}; {args.workers} "
          f"loader workers for decode=gpu/cpu ({args.decode_threads} decode threads for "
          f"cpu), {args.off_workers} for decode=off.\n")
    print("| row | result | reference | ratio | goal | busy cores | note |")
    print("|---|---|---|---|---|---|---|")
    _print_decode(results.get("decode") or {"error": "not run"}, args)
    for model in args.models.split(","):
        _print_training(model, results, args)
    r = results.get("infer") or {"error": "not run"}
    if "error" in r:
        print(f"| inference | error | | | >= {INFER_GOAL:,} cells/s | | {r['error']} |")
    else:
        met = " MET" if r["rate"] >= INFER_GOAL else " not met"
        print(f"| inference (infer_cohort, small-cnn) | {_fmt(r['rate'], ' cells/s')} | "
              f"| | >= {INFER_GOAL:,} cells/s{met} | | {r['cells']:,} cells; "
              f"{_fmt(r['wall_rate'])} cells/s with start-up |")
    _print_infer_bench(results.get("infer-bench") or {"error": "not run"})


def _print_infer_bench(r: dict) -> None:
    """One table row per ``bench/infer.py`` setup: reading cells/s (marginal) against
    the thread path with as many readers, the busy cores, and the rate with the model."""
    if not r.get("tables"):
        print(f"| inference reading (bench/infer.py) | error | | | | | "
              f"{r.get('error', 'no table printed')} |")
        return
    for table in r["tables"]:
        title = table["title"].split(" (")[0].replace("-px patches at stride ", "/")
        for row in table["rows"]:
            name = row.get("setup", "?")
            rate = _number(row.get("reading cells/s (marginal)"))
            cpu_us = _number(row.get("CPU us/cell"))
            busy = f"{rate * cpu_us / 1e6:.1f}" if rate and cpu_us else ""
            twin = name.replace("process", "thread") if name.startswith("process") else ""
            reference = f"{twin} (same readers)" if twin else ""
            model = _number(row.get("with model cells/s"))
            goal = ""
            if model is not None and name != "inline" and not name.startswith("thread"):
                goal = f">= {INFER_GOAL:,} with model" + \
                    (" MET" if model >= INFER_GOAL else " not met")
            note = f"ceiling x {row.get('x ceiling', '')}"
            if model is not None:
                note += (f"; with small-cnn {_fmt(model, ' cells/s')} (x model "
                         f"{row.get('x model', '')})")
            print(f"| inference reading {title}, {name} | {_fmt(rate, ' cells/s')} | "
                  f"{reference} | {row.get('x thread', '')} | {goal} | {busy} | {note} |")
    if "error" in r:
        print(f"| inference reading (bench/infer.py) | partial | | | | | {r['error']} |")


def _print_decode(d: dict, args) -> None:
    if "error" in d:
        print(f"| JPEG decode | error | | | | | {d['error']} |")
        return
    gpu = d.get("gpu")
    ratio = f"{gpu / d['cpu_all']:.2f}" if gpu else "—"
    print(f"| nvJPEG batched decode ({args.decode_batch}/call) | {_fmt(gpu, ' tiles/s')}"
          f" | libjpeg {d['cores']} threads: {_fmt(d['cpu_all'], ' tiles/s')} | {ratio} "
          f"| — | | 1 core: {_fmt(d['cpu1'], ' tiles/s')}; {d['tiles']} tissue tiles "
          f"of {d['kb_per_tile']:.1f} KB |")
    print(f"| bytes shipped per image | {d['shipped_kb']:.1f} KB | pixels "
          f"{d['pixels_kb']:.1f} KB | {d['shipped_kb'] / d['pixels_kb']:.2f} | ~0.1 | | "
          f"{d['tiles_per_image']:.2f} stored tiles per image (shuffled batches) |")


def _print_training(model: str, results: dict, args) -> None:
    base = results.get(f"train:{model}:model", {}).get("rate")
    goal = GOALS.get(model)
    for mode in ("model", "gpu", "cpu", "off"):
        r = results.get(f"train:{model}:{mode}") or {"error": "not run"}
        label = {"model": "model alone (batch in memory)",
                 "gpu": f"decode=gpu, {args.workers} workers",
                 "cpu": f"decode=cpu, {args.workers} workers",
                 "off": f"decode=off (per item), {args.off_workers} workers"}[mode]
        if "error" in r:
            print(f"| {model}, {label} | error | | | | | {r['error']} |")
            continue
        ratio = r["rate"] / base if base and mode != "model" else None
        goal_text = ""
        if mode == "gpu" and goal:
            cores = model == "small-cnn"
            goal_text = f"data/model >= {goal}" + \
                (f" with <= {MAX_BUSY_CORES} busy cores" if cores else "")
            if ratio is not None:
                ok = ratio >= goal and (not cores or r["busy"] <= MAX_BUSY_CORES)
                goal_text += " MET" if ok else " not met"
        print(f"| {model}, {label} | {_fmt(r['rate'], ' img/s')} | "
              f"{'model ' + _fmt(base) if mode != 'model' else ''} | "
              f"{f'{ratio:.2f}' if ratio is not None else ''} | {goal_text} | "
              f"{r['busy']:.1f} | {r['steps']} steps |")


def _parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="toy sizes on the CPU: checks the script, measures nothing")
    parser.add_argument("--budget", type=float, default=450,
                        help="seconds for the whole run; rows that do not fit are skipped")
    parser.add_argument("--keep", type=Path, help="folder to keep the inputs in")
    parser.add_argument("--models", default="small-cnn,resnet50")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    smoke = args.cpu_smoke
    settings = {
        "device": "cpu" if smoke else "cuda", "slides": 2 if smoke else 16,
        "side": 4000 if smoke else 12000, "batch": 8 if smoke else 256,
        "seconds": 1.0 if smoke else 6.0, "warmup": 1 if smoke else 8,
        "workers": 1 if smoke else 3, "off_workers": 1 if smoke else min(12, cores - 2),
        "decode_threads": 1 if smoke else max(1, cores - 4),
        "tiles": 256 if smoke else 4096, "decode_batch": 256,
        "infer_slides": 1 if smoke else 4, "infer_batch": 16 if smoke else 256,
        "row_timeout": 120 if smoke else 75, "infer_bench_timeout": 120 if smoke else 180,
    }
    for key, value in settings.items():
        setattr(args, key, value)
    args.passthrough = ["--cpu-smoke"] if smoke else []
    args.passthrough += ["--models", args.models]
    return args


def child(args) -> None:
    """One row, in this process; its result goes to ``args.result`` as JSON."""
    inputs = json.loads(Path(args.inputs).read_text())
    args.scratch = str(Path(args.inputs).parent)
    if args.device == "cpu":
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 2) - args.workers))
    if args.row == "decode":
        result = row_decode(inputs, args)
    elif args.row == "infer":
        result = row_infer(inputs, args)
    else:
        _, model, mode = args.row.split(":")
        result = row_train(model, mode, inputs, args)
    partial = Path(args.result + ".partial")
    partial.write_text(json.dumps(result))
    partial.rename(args.result)
    os._exit(0)  # loader workers and CUDA: no slow teardown (the parent kills the group)


def main() -> None:
    args = _parse()
    if args.row:
        child(args)
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="exaslide-device-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        results: dict = {}
        try:
            inputs = build_inputs(folder, args.slides, args.side, os.cpu_count() or 1)
        except Exception as exc:  # the table still prints, every row says why
            inputs = {"slides": {}, "bytes": 0, "patches": 0}
            results = {row: {"error": f"no inputs: {type(exc).__name__}: {exc}"[:200]}
                       for row in _rows(args)}
        built = time.perf_counter() - start
        print(f"inputs: {inputs['patches']:,} patches on {len(inputs['slides'])} slides "
              f"in {built:.0f} s", flush=True)
        inputs_file = folder / "inputs.json"
        inputs_file.write_text(json.dumps(inputs))
        for row in _rows(args):
            if row in results:
                continue
            left = args.budget - (time.perf_counter() - start) - 5
            if left < 20:
                results[row] = {"error": "skipped: out of the time budget"}
                continue
            row_start = time.perf_counter()
            if row == "infer-bench":
                results[row] = run_infer_bench(folder, args,
                                               min(args.infer_bench_timeout, left))
                shown = {k: len(v) if k == "tables" else v
                         for k, v in results[row].items() if k != "output"}
            else:
                results[row] = shown = run_child(row, inputs_file, args,
                                                 min(args.row_timeout, left))
            print(f"{row}: {shown} ({time.perf_counter() - row_start:.0f} s)", flush=True)
        print_table(results, args, inputs, built)
        bench = results.get("infer-bench") or {}
        if bench.get("output"):
            print(f"\n### {bench['command']} ({bench['seconds']:.0f} s)\n")
            print(bench["output"].rstrip())
        print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
