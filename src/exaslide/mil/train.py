"""``train_mil``: a MIL slide classifier from a feature store and a cohort manifest.

Outputs in ``config.out``:

- ``model.pt`` (+ ``.sha256``): the best epoch's weights (lowest validation loss), with
  the model name, dims, classes and configuration (:mod:`exaslide.mil.weights`); under
  cross-validation one per fold, ``folds/fold<i>/model.pt``;
- ``metrics.json``: test metrics (out-of-fold under cross-validation) at the top level
  (``slide_auc``, ``balanced_accuracy``, ``macro_f1``, ``confusion_matrix``...), the
  validation metrics, per-fold results, the epoch history, and the slides left out
  (``missing_features``, ``skipped``, ``unlabelled``, ``failed``);
- ``predictions.csv``: ``slide_id``, ``p_<class>`` per class, ``predicted``, ``label``,
  ``split`` (and ``fold``) of every test slide;
- ``heatmaps/<slide_id>.heatmap.npy|json``: per-patch scores in ``exaslide infer``'s
  format (:mod:`exaslide.mil.heatmaps`);
- ``config.yaml``, ``checkpoints/last.pt`` (every epoch, atomic, checksummed;
  ``resume=True`` continues from it) and ``fold.json`` (a finished run or fold, which a
  resumed run does not redo).

Under ``torchrun`` (gloo on CPUs, NCCL on GPUs) every rank trains on its share of the
bags (:mod:`exaslide.mil.loop`); rank 0 writes the outputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exaslide.mil.config import MILConfig
from exaslide.mil.errors import MILError

logger = logging.getLogger(__name__)

#: Settings a resumed run must share with its checkpoint.
RESUME_KEYS = ("features", "manifest", "task", "label_column", "classes", "model", "size",
               "hidden", "dropout", "k_sample", "bag_weight", "subtyping", "init_weights",
               "train_split", "val_split", "test_split", "cv_folds", "group_column",
               "optimizer", "lr", "weight_decay", "class_weights", "max_patches", "seed")


def _check_earlier_run(config: MILConfig, out: Path, resume: bool) -> None:
    """Refuse to mix two runs in one folder: a fresh run into a folder that holds one, or
    a ``--resume`` whose settings (:data:`RESUME_KEYS`) differ from the saved config.

    Raises:
        MILError: with the folder and the first differing setting.
    """
    import yaml

    saved = out / "config.yaml"
    if not saved.is_file():
        return
    if not resume:
        if any((out / name).exists() for name in ("fold.json", "folds", "checkpoints")):
            raise MILError(f"{out}: holds an earlier MIL run; continue it with --resume, or "
                           "use another --out")
        return
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MILError(f"{saved}: unreadable ({exc}); use another --out") from exc
    new = config.to_dict()
    for key in RESUME_KEYS:
        if key in old and old.get(key) != new.get(key):
            raise MILError(f"{out}: the run there has {key}={old.get(key)!r}, this one "
                           f"{new.get(key)!r}; --resume continues the same run only")


@dataclass
class MILResult:
    """What :func:`train_mil` did (``metrics`` is None on ranks other than 0)."""

    out: Path
    metrics: dict[str, Any] | None
    model_paths: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resumed: bool = False
    weights_digest: str | None = None  #: SHA-256 of the last run's final weights (any rank)


def train_mil(config: MILConfig, *, resume: bool = False) -> MILResult:
    """Train (and test) the configured MIL model; see the module docstring for outputs.

    Args:
        config: a validated :class:`~exaslide.mil.config.MILConfig`.
        resume: continue from the checkpoints in ``config.out`` (finished folds are kept).

    Raises:
        MILError: no usable slide, features of the wrong dimension, reference weights of
            another architecture, a checkpoint of other settings.
        ManifestError, DeviceError: a bad manifest or device.
    """
    from exaslide.train.distributed import setup, teardown

    context = setup(config.device)
    try:
        return _train(config, context, resume)
    finally:
        teardown(context)


def _train(config: MILConfig, context, resume: bool) -> MILResult:
    from exaslide.manifest import read_manifest
    from exaslide.mil.bags import FeatureStore, build_cohort
    from exaslide.mil.config import save_config
    from exaslide.runtime import seed_everything, set_threads

    seed_everything(config.seed, context.rank)
    set_threads(config.threads)
    store = FeatureStore(config.features)
    classes = config.resolved_classes
    cohort = build_cohort(read_manifest(config.manifest), store, classes,
                          config.resolved_label_column, config.task == "binary",
                          config.group_column)
    _check_bags(store, cohort, context)
    folds = _folds(config, cohort)
    out = Path(config.out)
    _check_earlier_run(config, out, resume)
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    results = []
    for number, fold in enumerate(folds):
        folder = out / "folds" / fold.name if fold.name else out
        results.append(_run_fold(config, context, store, fold, number, folder, resume))
    store.warn_unchecked()
    digest = results[-1].get("weights_digest")
    if not context.is_main:
        return MILResult(out, None, resumed=resume, weights_digest=digest)
    metrics = _finish(config, store, cohort, results, out)
    paths = [Path(r["model_path"]) for r in results]
    return MILResult(out, metrics, paths, cohort.warnings() + _failure_lines(metrics), resume,
                     digest)


def _check_bags(store, cohort, context) -> None:
    """Open every bag once (checksums verified, ranks sharing the work); a bag that
    cannot be read is moved to ``cohort.skipped`` on every rank."""
    from exaslide.train.distributed import all_gather_objects

    failed = {}
    for slide in cohort.slides[context.rank::context.world_size]:
        try:
            store.features(slide.slide_id)
        except MILError as exc:
            failed[slide.slide_id] = str(exc)
    for part in all_gather_objects(context, failed):
        failed.update(part)
    cohort.skipped += [{"slide_id": s, "error": e} for s, e in failed.items()]
    cohort.slides = [s for s in cohort.slides if s.slide_id not in failed]
    store.mark_verified(s.slide_id for s in cohort.slides)
    if not cohort.slides:
        raise MILError(f"{store.folder}: no slide of the manifest has usable features and a "
                       f"label among {', '.join(cohort.classes)} (missing from the store: "
                       f"{len(cohort.missing)}, left out: {len(cohort.skipped)}, other "
                       f"labels: {len(cohort.unlabelled)})")


def _folds(config: MILConfig, cohort):
    from exaslide.mil.splits import cv_folds, manifest_split

    if config.cv_folds:
        return cv_folds(cohort.slides, config.cv_folds, config.seed)
    return [manifest_split(cohort.slides, config.train_split, config.val_split,
                           config.test_split)]


def _build_model(config: MILConfig, store, n_classes: int, device):
    """The configured model for the store's features, from ``init_weights`` when given.

    Raises:
        MILError: reference weights for features of another dimension (one line naming
            the store and both dimensions) or of another architecture.
    """
    from exaslide.mil.registry import create_mil_model, hidden_sizes
    from exaslide.mil.weights import load_reference_weights, read_reference, reference_input_dim

    state = None
    if config.init_weights:
        state = read_reference(config.init_weights)
        in_dim = reference_input_dim(state)
        if in_dim is not None:
            store.check_dim(in_dim, f"init_weights {config.init_weights}")
    model = create_mil_model(config.model, store.dim, n_classes,
                             hidden=hidden_sizes(config.model, config.size, config.hidden),
                             dropout=config.dropout, k_sample=config.k_sample,
                             subtyping=config.subtyping)
    if state is not None:
        try:
            load_reference_weights(model, state)
        except MILError as exc:
            raise MILError(str(exc).replace("the given state dict",
                                            str(config.init_weights), 1)) from exc
    return model.to(device)


def _run_fold(config: MILConfig, context, store, fold, number: int, folder: Path,
              resume: bool) -> dict[str, Any]:
    """Train one run (or fold) with early stopping, test its best weights, save them."""
    import torch

    from exaslide.mil import loop

    done = folder / "fold.json"
    if resume and done.exists():
        logger.info("%s: finished earlier; kept", done)
        return json.loads(done.read_text())
    classes = config.resolved_classes
    model = _build_model(config, store, len(classes), context.device)
    wrapped = model
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, find_unused_parameters=config.model ==
                                          "clam_sb")
    optimizer = (torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam)(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    weight = loop.class_weights(fold.train, len(classes), config.class_weights)
    checkpoint = folder / "checkpoints" / "last.pt"
    state = _restore(config, context, checkpoint, resume, model, optimizer)
    _epochs(config, context, store, fold, number, wrapped, optimizer, weight, checkpoint,
            state)
    if state["best"].get("state") is not None:
        model.load_state_dict(state["best"]["state"])
    return _test(config, context, store, fold, model, weight, folder, state)


def _epochs(config, context, store, fold, number, model, optimizer, weight, checkpoint,
            state) -> None:
    """Train from ``state["epoch"]`` until ``config.epochs`` or patience runs out."""
    from exaslide.mil import loop
    from exaslide.train.distributed import all_gather_objects

    best = state["best"]
    for epoch in range(state["epoch"], config.epochs):
        if config.patience is not None and best.get("stale", 0) >= config.patience:
            state["stopped_early"] = True
            break
        row = {"epoch": epoch, **loop.train_epoch(
            model, store, fold.train, optimizer, device=context.device, weight=weight,
            bag_weight=config.bag_weight, max_patches=config.max_patches,
            seed=(config.seed, number, epoch), rank=context.rank,
            world=context.world_size)}
        shares = all_gather_objects(context, row)
        row["train_loss"] = sum(r["train_loss"] for r in shares) / len(shares)
        row["train_accuracy"] = sum(r["train_accuracy"] for r in shares) / len(shares)
        if fold.val:
            rows = _gathered(context, loop.predict(
                model, store, fold.val, device=context.device, weight=weight,
                rank=context.rank, world=context.world_size))
            row.update(loop.summarise(rows, config.resolved_classes, "val"))
        if loop.improved(best, row):
            best.update(loss=row.get("val_loss"), epoch=epoch, stale=0,
                        state=loop.weights_copy(model))
        else:
            best["stale"] = best.get("stale", 0) + 1
        state["history"].append(row)
        state["epoch"] = epoch + 1
        logger.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        _save_checkpoint(config, context, checkpoint, model, optimizer, state)


def _gathered(context, rows: list) -> list:
    from exaslide.train.distributed import all_gather_objects

    return [row for part in all_gather_objects(context, rows) for row in part]


def _restore(config: MILConfig, context, checkpoint: Path, resume: bool, model,
             optimizer) -> dict[str, Any]:
    from exaslide.train.checkpoint import load_training_state, set_rng_state

    fresh = {"epoch": 0, "history": [], "best": {"loss": None, "epoch": -1, "stale": 0,
                                                   "state": None}, "stopped_early": False}
    if not (resume and checkpoint.exists()):
        if resume:
            logger.warning("%s: no checkpoint yet; starting from the first epoch", checkpoint)
        return fresh
    saved = load_training_state(checkpoint)
    old = saved.get("config", {})
    for key in RESUME_KEYS:
        if old.get(key) != getattr(config, key):
            raise MILError(f"{checkpoint}: checkpoint has {key}={old.get(key)!r} but the "
                           f"config says {getattr(config, key)!r}; use another out folder "
                           "or the same settings")
    if len(saved["rng"]) != context.world_size:
        raise MILError(f"{checkpoint}: written by {len(saved['rng'])} process(es), this run "
                       f"has {context.world_size}; resume with the same number")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    set_rng_state(saved["rng"][context.rank])
    logger.info("resuming %s at epoch %d", checkpoint, saved["epoch"])
    return {k: saved[k] for k in fresh}


def _save_checkpoint(config, context, checkpoint: Path, model, optimizer, state) -> None:
    from exaslide.train.checkpoint import rng_state, save_training_state
    from exaslide.train.distributed import all_gather_objects

    rngs = all_gather_objects(context, rng_state())
    if context.is_main:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        from exaslide.mil.loop import weights_copy

        save_training_state(checkpoint, {**state, "model": weights_copy(model),
                                         "optimizer": optimizer.state_dict(), "rng": rngs,
                                         "config": config.to_dict()})
    if context.distributed:
        import torch.distributed as dist

        dist.barrier()


def _test(config, context, store, fold, model, weight, folder: Path, state) -> dict:
    """Test predictions and heatmaps of the best weights; the model file and
    ``fold.json`` (rank 0)."""
    from exaslide.jsonio import write_json
    from exaslide.mil import loop
    from exaslide.mil.weights import save_mil_model

    rows = _gathered(context, loop.predict(model, store, fold.test, device=context.device,
                                           weight=weight, rank=context.rank,
                                           world=context.world_size))
    split = {s.slide_id: s.split for s in fold.test}
    for row in rows:
        row.update(split=split[row["slide_id"]], fold=fold.name or None)
    result = {"fold": fold.name, "test": rows, "history": state["history"],
              "weights_digest": loop.weights_digest(model),
              "best_epoch": state["best"]["epoch"], "stopped_early": state["stopped_early"],
              "model_path": str(folder / "model.pt"),
              "sizes": {"train": len(fold.train), "val": len(fold.val),
                        "test": len(fold.test)}}
    if context.is_main:
        meta = {"classes": config.resolved_classes, "task": config.task,
                "label_column": config.resolved_label_column, "config": config.to_dict(),
                "features": {k: store.info.get(k) for k in ("model", "dim", "patch", "source")},
                "best_epoch": state["best"]["epoch"], "fold": fold.name or None}
        save_mil_model(folder / "model.pt", model, meta)
        result["heatmaps"] = _heatmaps(config, store, fold, model, rows, context.device)
        write_json(folder / "fold.json", result)
    return result


def _heatmaps(config, store, fold, model, rows, device) -> dict[str, Any]:
    from exaslide.mil.predict import write_heatmaps

    if config.heatmaps == "none":
        return {"written": 0, "failed": []}
    everything = config.heatmaps == "all" and not config.cv_folds  # CV: out-of-fold only
    slides = fold.train + fold.val + fold.test if everything else fold.test
    paths = {s.slide_id: s.path for s in slides}
    probs = {r["slide_id"]: r["probs"] for r in rows if "probs" in r}
    return write_heatmaps(model, store, list(paths), Path(config.out) / "heatmaps",
                          probs=probs, slide_paths=paths, classes=config.resolved_classes,
                          score=config.heatmap_score, device=device)


def _finish(config: MILConfig, store, cohort, results: list[dict], out: Path) -> dict:
    """``metrics.json`` and ``predictions.csv`` from the runs' test predictions."""
    import numpy as np

    from exaslide.jsonio import finite, to_jsonable, write_json
    from exaslide.mil.metrics import slide_metrics, write_predictions

    classes = config.resolved_classes
    rows = [r for result in results for r in result["test"]]
    good = [r for r in rows if "probs" in r]
    test = slide_metrics(np.array([r["label"] for r in good], dtype=np.int64),
                         np.array([r["probs"] for r in good]).reshape(-1, len(classes)),
                         classes)
    metrics: dict[str, Any] = {
        "task": config.task, "classes": classes, "model": config.model,
        "features": config.features, "manifest": config.manifest, **test,
        **cohort.report(), "failed": [{"slide_id": r["slide_id"], "error": r["error"]}
                                      for r in rows if "error" in r],
        "heatmaps": {"written": sum(r.get("heatmaps", {}).get("written", 0)
                                    for r in results),
                     "failed": [f for r in results for f in r.get("heatmaps", {})
                                .get("failed", [])]}}
    metrics.update(_run_summaries(results, classes, bool(config.cv_folds)))
    write_predictions(out / "predictions.csv",
                      [{**r, "label": classes[r["label"]]} for r in good], classes)
    write_json(out / "metrics.json", finite(to_jsonable(metrics)))
    return metrics


def _run_summaries(results: list[dict], classes: list[str], cv: bool) -> dict[str, Any]:
    import numpy as np

    from exaslide.mil.metrics import slide_metrics

    def fold_summary(result: dict) -> dict[str, Any]:
        good = [r for r in result["test"] if "probs" in r]
        test = slide_metrics(np.array([r["label"] for r in good], dtype=np.int64),
                             np.array([r["probs"] for r in good]).reshape(-1, len(classes)),
                             classes)
        history = result["history"]
        val = {k[4:]: v for k, v in (history[result["best_epoch"]] if history and
                                      result["best_epoch"] >= 0 else {}).items()
               if k.startswith("val_")}
        return {"fold": result["fold"], "test": test, "val": val,
                "best_epoch": result["best_epoch"], "epochs": len(history),
                "stopped_early": result["stopped_early"], "sizes": result["sizes"],
                "model_path": result["model_path"]}

    summaries = [fold_summary(r) for r in results]
    if not cv:
        one = summaries[0]
        return {"val": one["val"], "best_epoch": one["best_epoch"], "epochs": one["epochs"],
                "stopped_early": one["stopped_early"], "sizes": one["sizes"],
                "history": results[0]["history"], "model_path": one["model_path"]}
    aucs = np.array([s["test"]["slide_auc"] for s in summaries], dtype=np.float64)
    return {"folds": summaries, "cv": {"folds": len(summaries),
                                       "slide_auc_mean": float(np.nanmean(aucs))
                                       if np.isfinite(aucs).any() else float("nan"),
                                       "slide_auc_std": float(np.nanstd(aucs))
                                       if np.isfinite(aucs).any() else float("nan")}}


def _failure_lines(metrics: dict[str, Any]) -> list[str]:
    lines = [f"{f['slide_id']}: {f['error']}" for f in metrics.get("failed", [])]
    return lines + [f"heatmap {f}" for f in metrics["heatmaps"]["failed"]]
