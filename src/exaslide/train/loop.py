"""The training loop: one function for 1 CPU, 1 GPU and many GPUs under ``torchrun``.

Per epoch: shuffle by ``(seed, epoch)`` (class-balanced by default; ``shuffle: blocks``:
locality-aware, see :mod:`exaslide.data.sampler`), augment the uint8 batch on the device
with per-sample parameters from a ``(seed, epoch)`` generator, normalise, forward under
bf16 autocast on CUDA, step; validate (loss, accuracy, ROC AUC over all ranks'
predictions); write ``metrics.csv``, TensorBoard scalars and
``checkpoints/last.pt`` (atomically); save ``model.pt`` when validation AUC improves; stop
early after ``patience`` epochs without improvement.

Outputs in ``config.out``: ``config.yaml`` (resolved), ``metrics.csv``, ``tensorboard/``,
``checkpoints/last.pt`` and ``model.pt`` (loadable with
:func:`exaslide.models.load_model`, used by ``exaslide infer``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exaslide.errors import TrainingError
from exaslide.models.features import unwrap as _unwrap
from exaslide.train.checkpoint import (
    load_training_state,
    rng_state,
    save_training_state,
    set_rng_state,
)
from exaslide.train.config import TrainConfig, save_config
from exaslide.train.distributed import Context, all_gather_objects, setup, teardown

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "val_auc", "lr", "images_per_s", "seconds")


@dataclass
class TrainResult:
    """What a run produced."""

    out: Path
    model_path: Path
    best_epoch: int
    best_val_auc: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    weights_digest: str = ""  #: SHA-256 of this process's final weights (DDP: same on all)
    resumed_from: int | None = None  #: the epoch a resumed run started at


def train(config: TrainConfig, *, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train ``config.model`` on ``config.data`` (see the module docstring).

    Args:
        config: the run's configuration (validated again here; nothing is written
            before it, the device and the data have been checked).
        resume: continue from ``out/checkpoints/last.pt`` (the run must have the same
            model and classes); without a checkpoint, start from scratch.
        progress: show a progress bar with images/s on rank 0.

    Raises:
        TrainingError: bad configuration, no training data, a mismatching checkpoint.
        DeviceError: a device this machine does not have.
    """
    from exaslide.runtime import set_threads

    config = config.validate()  # a checked copy: fields may have been changed in place
    set_threads(config.threads)
    context = setup(config.device)
    try:
        return _train(config, context, resume, progress)
    finally:
        teardown(context)


def _train(config: TrainConfig, context: Context, resume: bool,
           progress: bool) -> TrainResult:
    from exaslide.augment import build_augmentation, to_float
    from exaslide.data import to_device
    from exaslide.runtime import seed_everything

    out = Path(config.out)
    seed_everything(config.seed)  # the same initial weights on every rank
    augment = build_augmentation(config.augment)  # before writing: a bad reference fails
    train_set, sampler, val_set = _datasets(config, context)
    model = _model(config, context)
    if context.distributed:
        seed_everything(config.seed, rank=context.rank)  # then each rank its own draws
    optimizer = _optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs) \
        if config.scheduler == "cosine" else None
    checkpoint = out / "checkpoints" / "last.pt"
    start, history, best, resumed_from = _restore(config, context, checkpoint, resume, model,
                                                  optimizer, scheduler)
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    writer = _tensorboard(config, out, start) if context.is_main else None
    loader, val_loader = _loaders(config, context, train_set, sampler, val_set,
                                  _decode_mode(config, context, train_set))
    try:
        loss_fn = torch.nn.CrossEntropyLoss()
        positive = config.classes.index("tumour") if "tumour" in config.classes else 1
        stopped = _patience_spent(config, best)  # a resumed run that had already stopped
        for epoch in range(start, config.epochs if not stopped else start):
            if sampler is not None:
                sampler.set_epoch(epoch)
            else:
                train_set.set_epoch(epoch)
            # per rank: ranks see different patches and must not share augmentation draws
            generator = torch.Generator().manual_seed(
                (config.seed * 100_003 + epoch) * 1_009 + context.rank)
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            row.update(_train_epoch(config, context, model, loader, optimizer, loss_fn,
                                    augment, generator, epoch, progress, to_device,
                                    to_float))
            if scheduler is not None:
                scheduler.step()
            _sync_buffers(model, context)  # BatchNorm statistics: rank 0's on every rank
            if val_loader is not None:
                row.update(_validate(config, context, _unwrap(model), val_loader, to_device,
                                     to_float, positive))
            history.append(row)
            improved = _update_best(best, row)
            if context.is_main:
                if improved:
                    _save_model(config, model, out / "model.pt", train_set.classes)
                _write_metrics(out / "metrics.csv", history)
                _add_scalars(writer, row)
            states = all_gather_objects(context, rng_state())
            if context.is_main:
                save_training_state(checkpoint, {
                    "epoch": epoch, "model": _unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "history": history, "best": best, "rng": states,
                    "config": config.to_dict()})
            if _patience_spent(config, best):
                stopped = True
                break
    except Exception as exc:  # a loader worker's error as its own one-line message
        from exaslide.data.loader_workers import unwrap_worker_error

        clean = unwrap_worker_error(exc)
        if clean is exc:
            raise
        raise clean from None
    finally:  # now, also on an error: no loader process outlives the run
        _close_loaders(loader, val_loader)
        if writer is not None:
            writer.close()
    return TrainResult(out, out / "model.pt", best["epoch"], best["auc"], history, stopped,
                       weights_digest(_unwrap(model)), resumed_from)


def _restore(config: TrainConfig, context: Context, checkpoint: Path, resume: bool,
             model, optimizer, scheduler) -> tuple[int, list, dict, int | None]:
    """``(first epoch, history, best, resumed_from)``: from ``checkpoint`` when resuming
    (weights, optimiser, scheduler and this rank's random state restored), else fresh."""
    best = {"auc": None, "loss": None, "epoch": -1, "stale": 0}
    if resume and checkpoint.exists():
        state = load_training_state(checkpoint)
        _check_compatible(state, config, checkpoint, context)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][context.rank])
        start = state["epoch"] + 1
        logger.info("resuming %s at epoch %d", config.out, start)
        return start, state["history"], state["best"], start
    if resume:
        logger.warning("%s: no checkpoint yet; starting from the first epoch", checkpoint)
    return 0, [], best, None


def _loaders(config: TrainConfig, context: Context, train_set, sampler, val_set,
             decode: str | None = None):
    """The training and validation loaders: per-item (``make_loader``), or compressed
    batches decoded in this process when ``decode`` is ``"gpu"`` or ``"cpu"``."""
    from exaslide.data import make_loader

    if decode is not None:
        return _compressed_loaders(config, context, train_set, sampler, val_set, decode)
    loader = make_loader(train_set, batch_size=config.batch_size, workers=config.workers,
                         sampler=sampler, device=str(context.device),
                         drop_last=False, seed=config.seed)
    val_loader = make_loader(val_set, batch_size=config.batch_size, workers=config.workers,
                             device=str(context.device), seed=config.seed) \
        if val_set is not None else None
    return loader, val_loader


def _close_loaders(*loaders) -> None:
    """Shut down the worker processes of the loaders (persistent: they live as long as
    their ``DataLoader``), the decoding threads of compressed ones and close the slides
    their datasets opened in this process, now rather than whenever the garbage collector
    meets them: an exception's traceback keeps the loaders alive, and a process forked
    meanwhile would inherit them."""
    from exaslide.data.loader_workers import shutdown_workers

    for loader in loaders:
        if loader is None:
            continue
        inner = getattr(loader, "loader", loader)  # a DecodedLoader's DataLoader
        shutdown_workers(inner)
        decoder = getattr(loader, "decoder", None)
        if decoder is not None:
            decoder.close()
        dataset = getattr(inner, "dataset", None)
        if isinstance(dataset, _Subset):
            dataset = dataset.dataset
        close = getattr(dataset, "close", None)
        if close is not None:  # slides opened in this process (workers: 0)
            close()


def _decode_mode(config: TrainConfig, context: Context, train_set) -> str | None:
    """``"gpu"``, ``"cpu"`` or ``None`` (the per-item path) for ``config.decode``, by
    :func:`~exaslide.infer.decoded.resolve_decode` (``auto``: the training set's first
    slides; slides not JPEG-tiled among the others are read as pixels in the same
    batches).

    Raises:
        TrainingError: ``decode: gpu`` without a CUDA device.
    """
    from exaslide.infer.decoded import resolve_decode

    if config.source != "slides":
        return None
    slides = train_set.patches.paths if train_set is not None else ()
    try:
        mode = resolve_decode(config.decode, context.device, slides,
                              getattr(train_set, "backend", None))
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    return None if mode == "off" else mode


def _compressed_loaders(config: TrainConfig, context: Context, train_set, sampler, val_set,
                        decode: str):
    """Loaders of compressed batches (``docs/decode.md``) wrapped to decode them here:
    the same batches, in the same order, as :func:`_loaders` would give."""
    from exaslide.data.batch_decode import BatchDecoder, DecodedLoader
    from exaslide.data.compressed_dataset import CompressedPatchDataset, make_compressed_loader

    decoder = BatchDecoder(context.device, decoder="nvjpeg" if decode == "gpu" else
                           "imagecodecs", threads=config.threads)
    options = {"batch_size": config.batch_size, "workers": config.workers,
               "device": str(context.device), "seed": config.seed}
    loader = make_compressed_loader(CompressedPatchDataset.like(train_set), sampler=sampler,
                                    **options)
    logger.info("decoding JPEG tiles in the training process (%s, %s)", decode,
                decoder.decoder)
    val_loader = None
    if val_set is not None:
        val_loader = DecodedLoader(make_compressed_loader(
            CompressedPatchDataset.like(val_set.dataset), sampler=val_set.indices,
            **options), decoder)
    return DecodedLoader(loader, decoder), val_loader


def _update_best(best: dict, row: dict) -> bool:
    """Record an epoch in ``best``; True when it is the best so far."""
    improved = _improved(best, row)
    if improved:
        best.update(auc=_finite(row.get("val_auc")), loss=row.get("val_loss"),
                    epoch=row["epoch"], stale=0)
    else:
        best["stale"] += 1
    return improved


def _add_scalars(writer, row: dict) -> None:
    if writer is not None:
        for key, value in row.items():
            if key != "epoch" and value is not None:
                writer.add_scalar(key, value, row["epoch"])
        writer.flush()


def _patience_spent(config: TrainConfig, best: dict) -> bool:
    return config.patience is not None and best["stale"] >= config.patience


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _sync_buffers(model: torch.nn.Module, context: Context) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, which each rank updates with
    its own batches) to every rank, so validation and the saved model agree across ranks.
    Every rank calls this the same number of times."""
    if context.distributed:
        import torch.distributed as dist

        for buffer in _unwrap(model).buffers():
            dist.broadcast(buffer, src=0)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers, in state-dict order."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _improved(best: dict, row: dict) -> bool:
    """Better validation AUC; when the AUC is undefined (one class in the validation set),
    lower validation loss; without validation, every epoch (keep the latest)."""
    if "val_loss" not in row:
        return True
    auc = _finite(row.get("val_auc"))
    if auc is not None:
        return best["auc"] is None or auc > best["auc"]
    return best["loss"] is None or row["val_loss"] < best["loss"]


def _datasets(config: TrainConfig, context: Context):
    import pyarrow.compute as pc

    from exaslide.data import PatchSampler, ShardDataset, SlidePatchDataset
    from exaslide.data.sources import read_index_table

    try:
        index = read_index_table(config.data)
    except Exception as exc:
        raise TrainingError(f"training data {config.data}: {exc}") from exc
    split = pc.field("split")
    train_filter = split == config.train_split
    val_filter = split == config.val_split
    splits = set(index.column("split").to_pylist())
    if config.train_split not in splits:
        raise TrainingError(f"{config.data}: no patch has split {config.train_split!r} "
                            f"(splits: {sorted(s for s in splits if s)})")
    if config.val_split not in splits and config.val_fraction > 0:
        slides = sorted(set(index.filter(train_filter).column("slide_id").to_pylist()))
        held = _held_out(slides, config.val_fraction, config.seed)
        val_filter = pc.field("slide_id").isin(held)
        train_filter = train_filter & ~pc.field("slide_id").isin(held)
    elif config.val_split not in splits:
        val_filter = None
    common = {"classes": config.classes}
    if config.source == "slides":
        train_set = SlidePatchDataset(config.data, filter=train_filter, size=config.patch_size,
                                      **common)
        locality = {}
        if config.shuffle == "blocks":  # docs/data.md: the locality-aware order
            locality = {"blocks": train_set.blocks(), "window": config.window}
            train_set.close()  # blocks() opened the slides here: none open at the fork
        sampler = PatchSampler(train_set.labels, balance=config.balance, seed=config.seed,
                               rank=context.rank, world_size=context.world_size,
                               **locality)
    else:
        train_set = ShardDataset(config.data, filter=train_filter, seed=config.seed,
                                 rank=context.rank, world_size=context.world_size, **common)
        sampler = None
    val_set = None
    if val_filter is not None:
        full = SlidePatchDataset(config.data, filter=val_filter, size=config.patch_size,
                                 **common)
        if len(full) < context.world_size:
            raise TrainingError(f"the validation set has {len(full)} patches, fewer than "
                                f"the {context.world_size} ranks")
        val_set = _Subset(full, range(context.rank, len(full), context.world_size))
    return train_set, sampler, val_set


class _Subset(torch.utils.data.Dataset):
    """This rank's share of the validation set (every item once over all ranks)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def __getitems__(self, indices):
        """A batch, assembled in place by the dataset when it can (``__getitems__``, the
        batch protocol of PyTorch's fetcher), else item by item."""
        rows = [self.indices[i] for i in indices]
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(rows) if getitems is not None else [self.dataset[r] for r in rows]


def _held_out(slides: list[str], fraction: float, seed: int) -> list[str]:
    if len(slides) < 2:
        raise TrainingError("no validation split and fewer than 2 training slides to hold "
                            "out; set val_fraction: 0 or give slides a 'val' split")
    count = min(len(slides) - 1, max(1, round(len(slides) * fraction)))
    order = np.random.default_rng(seed).permutation(len(slides))
    return sorted(slides[i] for i in order[:count])


def _model(config: TrainConfig, context: Context) -> torch.nn.Module:
    from exaslide.models import create_model

    model = create_model(config.model, num_classes=len(config.classes),
                         pretrained=config.pretrained).to(context.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if context.distributed:
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:
        model = torch.compile(model)
    return model


def _optimizer(config: TrainConfig, model: torch.nn.Module):
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=config.lr,
                             weight_decay=config.weight_decay)


#: Settings a resumed run must share with its checkpoint (they decide what each epoch does).
RESUME_KEYS = ("model", "classes", "data", "source", "seed", "batch_size", "epochs",
               "optimizer", "scheduler", "train_split", "val_split", "patch_size",
               "shuffle")
#: Values of resume keys that checkpoints written before the key existed were run with.
#: With ``shuffle: blocks`` the window and the loader workers shape the order too.
RESUME_DEFAULTS = {"shuffle": "full", "window": 1024}


def _check_compatible(state: dict, config: TrainConfig, path: Path,
                      context: Context) -> None:
    saved = state.get("config", {})
    keys = RESUME_KEYS + (("window", "workers") if config.shuffle == "blocks" else ())
    for key in keys:
        if saved.get(key, RESUME_DEFAULTS.get(key)) != getattr(config, key):
            raise TrainingError(f"{path}: checkpoint has {key}={saved.get(key)!r} but the "
                                f"config says {getattr(config, key)!r}; use another out "
                                "folder or the same settings")
    if len(state["rng"]) != context.world_size:
        raise TrainingError(f"{path}: checkpoint was written by {len(state['rng'])} "
                            f"process(es), this run has {context.world_size}; resume with "
                            "the same number (each rank's data share depends on it)")


def _autocast(config: TrainConfig, context: Context):
    return torch.autocast("cuda", dtype=torch.bfloat16,
                          enabled=config.amp and context.device.type == "cuda")


def _train_epoch(config, context, model, loader, optimizer, loss_fn, augment, generator,
                 epoch, progress, to_device, to_float) -> dict[str, float]:
    from tqdm import tqdm

    model.train()
    total = len(loader) if config.max_steps is None else min(len(loader), config.max_steps)
    # total: an estimate for shards (each loader worker ends with a partial batch)
    bar = tqdm(total=total, desc=f"epoch {epoch}", unit="batch", leave=False,
               disable=True if not (progress and context.is_main) else None)  # None: tty only
    losses = torch.zeros((), device=context.device)  # summed on the device: no sync per step
    correct = torch.zeros((), device=context.device)
    seen = 0
    start = time.perf_counter()
    for step, (images, labels, _) in enumerate(loader):
        if config.max_steps is not None and step >= config.max_steps:
            break
        images = to_device(images, context.device, channels_last=config.channels_last)
        labels = labels.to(context.device, non_blocking=True)
        images = augment(images, generator=generator) if augment.transforms else images
        x = to_float(images, config.mean, config.std, channels_last=config.channels_last)
        with _autocast(config, context):
            logits = model(x)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(labels)
        losses += loss.detach() * n
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += n
        if step % 10 == 0 and not bar.disable:
            rate = seen * context.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{float(losses) / seen:.4f}", img_s=f"{rate:,.0f}")
        bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    sums = all_gather_objects(context, (float(losses), float(correct), seen))
    losses, correct, seen = (sum(s[i] for s in sums) for i in range(3))
    if seen == 0:
        raise TrainingError("the training loader yielded no batch")
    return {"train_loss": losses / seen, "train_accuracy": correct / seen,
            "images_per_s": seen / seconds, "seconds": seconds}


@torch.inference_mode()
def _validate(config, context, model, loader, to_device, to_float, positive: int) -> dict:
    """Loss, argmax accuracy and ROC AUC of ``positive`` (tumour) against the rest, over
    every rank's share (``model`` unwrapped: no DDP collective per batch, so ranks with
    one batch more or less cannot hang)."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    keys, scores, labels_all, losses, hits = [], [], [], [], []
    for images, labels, meta in loader:
        images = to_device(images, context.device, channels_last=config.channels_last)
        x = to_float(images, config.mean, config.std, channels_last=config.channels_last)
        with _autocast(config, context):
            logits = model(x).float()
        labels = labels.to(context.device)
        losses += torch.nn.functional.cross_entropy(logits, labels, reduction="none").tolist()
        scores += torch.softmax(logits, 1)[:, positive].tolist()
        hits += (logits.argmax(1) == labels).tolist()
        labels_all += labels.tolist()
        keys += list(meta["key"])
    parts = all_gather_objects(context, (keys, scores, labels_all, losses, hits))
    merged = {}
    for part in parts:
        for key, *values in zip(*part, strict=True):
            merged[key] = values
    score, label, loss, hit = (np.array(v, dtype=float)
                               for v in zip(*merged.values(), strict=True))
    is_positive = label == positive
    auc = float(roc_auc_score(is_positive, score)) if 0 < is_positive.sum() < len(label) \
        else float("nan")
    return {"val_loss": float(loss.mean()), "val_accuracy": float(hit.mean()),
            "val_auc": auc}


def _save_model(config: TrainConfig, model, path: Path, classes: list[str]) -> None:
    from exaslide.models import save_model

    meta = {"classes": list(classes), "patch": _patch_meta(config),
            "mean": list(config.mean), "std": list(config.std), "config": config.to_dict()}
    save_model(path, _unwrap(model), meta)


def _patch_meta(config: TrainConfig) -> dict:
    from exaslide.data.sources import read_index_table

    table = read_index_table(config.data).slice(0, 1)
    level, mpp = table.column("level")[0].as_py(), table.column("mpp")[0].as_py()
    size = config.patch_size or table.column("size")[0].as_py()
    return {"size": size, "level": None if mpp is not None else level, "mpp": mpp}


def _write_metrics(path: Path, history: list[dict]) -> None:
    from exaslide.atomic import write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())


def _tensorboard(config: TrainConfig, out: Path, start: int):
    if not config.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=start or None)
