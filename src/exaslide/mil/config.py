"""The MIL training configuration: one flat YAML mapping, every field typed and defaulted.

``exaslide mil train CONFIG.yaml --set lr=1e-4 --set model=clam_sb`` reads it (values of
``--set`` parsed as YAML); the resolved configuration is saved as ``config.yaml`` next to
the outputs and inside ``model.pt``. Errors are one line naming where the value came
from, the key, the value and what was expected (the formatting of
:mod:`exaslide.train.config`). See ``docs/mil.md`` for every field. This module does not
import torch.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from exaslide.mil.errors import MILError
from exaslide.train.config import (
    _MODEL_CONFIG,
    Int,
    Name,
    Number,
    PositiveInt,
    Seed,
    _parse_set,
    _read_yaml,
    describe_errors,
)

#: Default label column and classes of each task.
TASKS = {"binary": ("label", ["normal", "tumour"]),
         "camelyon17": ("slide_class", ["negative", "itc", "micro", "macro"])}
Fraction = Annotated[Number, Field(ge=0, lt=1)]
#: Where each key of the mapping being validated came from (set by :func:`load_mil_config`).
_ORIGINS: ContextVar[Mapping[str, str] | None] = ContextVar("exaslide_mil_origins",
                                                             default=None)
#: Where a key came from when nothing else says.
DEFAULT_ORIGIN = "MIL config"


class MILConfig(BaseModel):
    """Everything that decides a MIL training run (see ``docs/mil.md``).

    Validated when built; invalid values raise :class:`~exaslide.mil.errors.MILError`
    (one line, ``;``-separated problems).
    """

    model_config = _MODEL_CONFIG

    features: Name  #: an embedding store of patch features (``exaslide embed``)
    manifest: Name  #: the cohort manifest (labels, splits, patients, slide paths)
    out: Name = "runs/mil"
    task: Literal["binary", "camelyon17"] = "binary"
    label_column: Name | None = None  #: default: label (binary), slide_class (camelyon17)
    classes: Annotated[list[Name], Field(min_length=2)] | None = None  #: default: the task's
    model: Literal["meanpool", "abmil", "clam_sb", "transmil"] = "abmil"
    size: Literal["small", "big"] = "small"  #: CLAM's sizes ([L_in, 512, 256] / 384)
    hidden: list[PositiveInt] | None = None  #: explicit hidden sizes ([L, D]; [dim])
    dropout: Fraction = 0.25
    k_sample: PositiveInt = 8  #: CLAM-SB: top/bottom patches of the instance loss
    bag_weight: Annotated[Number, Field(ge=0, le=1)] = 0.7  #: CLAM-SB
    subtyping: bool = False  #: CLAM-SB: out-of-class instance loss too
    init_weights: Name | None = None  #: CLAM/TransMIL weights to start from
    train_split: Name = "train"
    val_split: Name = "val"
    test_split: Name = "test"
    cv_folds: Annotated[Int, Field(ge=3)] | None = None  #: k-fold CV grouped by patient
    group_column: Name = "patient"  #: manifest column grouping slides in CV folds
    epochs: PositiveInt = 20
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: Annotated[Number, Field(gt=0)] = 2e-4
    weight_decay: Annotated[Number, Field(ge=0)] = 1e-5
    class_weights: Literal["balanced", "none"] = "balanced"
    patience: PositiveInt | None = 10  #: epochs without a lower validation loss
    max_patches: PositiveInt | None = None  #: random patches per bag in training
    heatmaps: Literal["test", "all", "none"] = "test"
    heatmap_score: Literal["attention", "instance"] = "attention"
    device: str = "auto"
    threads: PositiveInt | None = None
    seed: Seed = 0

    def __init__(self, **data: Any) -> None:
        origins = {**dict.fromkeys(MILConfig.model_fields, DEFAULT_ORIGIN),
                   **(_ORIGINS.get() or {})}
        _check_keys(data, origins)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise MILError(describe_errors(exc, data, origins)) from exc
        problem = self._inconsistency()
        if problem is not None:
            key, text = problem
            raise MILError(f"{origins.get(key, DEFAULT_ORIGIN)}: {key}: {text}")

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise MILError(describe_errors(exc, {name: value},
                                           {name: DEFAULT_ORIGIN})) from exc

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str] | None) -> list[str] | None:
        if classes is not None and len({c.lower() for c in classes}) != len(classes):
            raise ValueError("expected distinct names")
        return classes

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> str:
        from exaslide.runtime import device_setting

        return device_setting(value)

    def _inconsistency(self) -> tuple[str, str] | None:
        """``(key, problem)`` of options that do not fit together, or None."""
        from exaslide.mil.registry import SIZES

        wanted = len(SIZES[self.size][self.model])
        if self.hidden is not None and len(self.hidden) != wanted:
            shape = "[L, D]" if wanted == 2 else "[L]" if self.model == "meanpool" \
                else "[dim]"
            return "hidden", f"model {self.model} takes {shape}, got {self.hidden}"
        if self.heatmap_score == "instance" and self.model not in ("clam_sb", "meanpool"):
            return "heatmap_score", (f"'instance' needs model clam_sb or meanpool (instance "
                                     f"classifiers), not {self.model}")
        return None

    @property
    def resolved_label_column(self) -> str:
        """The manifest column holding the slide classes."""
        return self.label_column or TASKS[self.task][0]

    @property
    def resolved_classes(self) -> list[str]:
        """The class names, in output order (the first is the negative class)."""
        return list(self.classes or TASKS[self.task][1])

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for YAML and the model file)."""
        return self.model_dump()


def _check_keys(data: Mapping, origins: Mapping[str, str]) -> None:
    """Unknown keys as one line with close matches (the config is flat)."""
    known = sorted(MILConfig.model_fields)
    problems = []
    for key in data:
        if key not in MILConfig.model_fields:
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
            hint = ("did you mean " + " or ".join(map(repr, close)) + "?") if close else \
                f"the options are {', '.join(known)}"
            problems.append(f"{origins.get(key, DEFAULT_ORIGIN)}: unknown option {key!r} "
                            f"({hint})")
    if problems:
        raise MILError("; ".join(problems))


def load_mil_config(path: str | os.PathLike | None = None, sets: list[str] | None = None,
                    overrides: Mapping[str, Any] | None = None) -> MILConfig:
    """A validated :class:`MILConfig` from a YAML file, then ``overrides`` (None values
    ignored), then ``sets`` (``"key=value"``, values parsed as YAML). Nothing is written.

    Raises:
        MILError: unreadable YAML, unknown keys or invalid values (one line naming the
            file or option, the key, the value and what was expected).
    """
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        try:
            data = _read_yaml(path)
        except MILError:
            raise
        except Exception as exc:  # TrainingError from the shared reader
            raise MILError(str(exc)) from exc
        origins.update({str(key): str(path) for key in data})
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key], origins[key] = value, f"--{key.replace('_', '-')}"
    for item in sets or []:
        key, _, _ = item.partition("=")
        if "=" not in item or not key.strip() or "." in key:
            raise MILError(f"--set {item!r}: expected KEY=VALUE with a top-level KEY (e.g. "
                           "model=clam_sb; values are read as YAML)")
        try:
            key, value = _parse_set(item)
        except Exception as exc:
            raise MILError(str(exc)) from exc
        data[key], origins[key] = value, "--set"
    token = _ORIGINS.set(origins)
    try:
        return MILConfig(**data)
    finally:
        _ORIGINS.reset(token)


def dump_config(config: MILConfig) -> str:
    """The resolved configuration as YAML text."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: MILConfig, path: str | os.PathLike) -> None:
    """Write the resolved configuration as YAML (atomically)."""
    from exaslide.atomic import write_text

    write_text(Path(path), dump_config(config))
