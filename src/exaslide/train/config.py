"""The training configuration: one YAML file (or mapping), every field with a default.

``exaslide train CONFIG.yaml`` reads it; options on the command line override it
(``--set lr=0.01 --set augment.hed.sigma=0.03``); the resolved configuration is saved as
``config.yaml`` next to the outputs, so a run can always be repeated. See
``docs/training.md`` for every field.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from exaslide.errors import TrainingError

SOURCES = ("slides", "shards")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "none")


@dataclass
class TrainConfig:
    """Everything that decides a training run (see ``docs/training.md``)."""

    data: str = "out"  #: an ``exaslide extract`` output folder
    out: str = "runs/train"  #: where checkpoints, metrics and the model go
    source: str = "slides"  #: "slides" (SlidePatchDataset) or "shards" (ShardDataset)
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: float = 0.2  #: slides held out for validation when no row has val_split
    classes: list[str] = field(default_factory=lambda: ["normal", "tumour"])
    patch_size: int | None = 224  #: centred crop of the indexed patches (None: as indexed)
    model: str = "small-cnn"
    pretrained: str | None = None  #: a local weights file; never downloaded
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  #: SGD only
    scheduler: str = "cosine"
    balance: bool = True  #: class-balanced sampling (slides source)
    augment: dict[str, Any] = field(default_factory=lambda: {"flip_rot90": True,
                                                             "hed": True})
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    workers: int = 2
    device: str = "auto"  #: "auto" (CUDA when available), "cpu", "cuda"
    amp: bool = True  #: bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True
    compile: bool = False  #: torch.compile the model
    seed: int = 0
    patience: int | None = 5  #: epochs without a better validation AUC before stopping
    max_steps: int | None = None  #: cap on training batches per epoch (quick runs)
    tensorboard: bool = True

    def validate(self) -> None:
        """Raise :class:`TrainingError` for values that cannot work."""
        checks = [
            (self.source in SOURCES, f"source must be one of {SOURCES}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.lr > 0, "lr must be positive"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (len(self.classes) >= 2, "classes needs at least two names"),
            (len(self.mean) == 3 and len(self.std) == 3, "mean and std need 3 values"),
            (self.workers >= 0, "workers must be >= 0"),
            (self.patience is None or self.patience >= 1, "patience must be >= 1 or null"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             "device must be auto, cpu or cuda"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(f"training config: {message}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for YAML and checkpoints)."""
        return asdict(self)


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None,
                sets: list[str] | None = None) -> TrainConfig:
    """A validated :class:`TrainConfig` from a YAML file, then ``overrides`` (a mapping),
    then ``sets`` (``"key=value"`` strings, dotted keys for nested mappings, values parsed
    as YAML).

    Raises:
        TrainingError: unreadable YAML, unknown keys or invalid values.
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise TrainingError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise TrainingError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise TrainingError(f"{path}: expected a mapping of options")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TrainingError(f"--set {item!r}: expected KEY=VALUE")
        _set_dotted(data, key.strip(), yaml.safe_load(value))
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrainingError(f"training config: unknown option(s) {unknown}; "
                            f"known: {sorted(known)}")
    config = TrainConfig(**data)
    config.validate()
    return config


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    target = data
    for part in parts[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = dict(getattr(TrainConfig(), part, {}) or {}) if target is data else {}
            target[part] = child
        target = child
    target[parts[-1]] = value


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved configuration as YAML (atomically)."""
    import yaml

    from exaslide.atomic import write_text

    write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
