"""The training configuration: one YAML file (or mapping), every field typed and defaulted.

``exaslide train CONFIG.yaml`` reads it; options on the command line override it
(``--set lr=0.01 --set augment.hed.sigma=0.03``); the resolved configuration is saved as
``config.yaml`` next to the outputs, so a run can always be repeated. See
``docs/training.md`` for every field.

Values are validated by pydantic models (:class:`TrainConfig` and its ``augment``
section): numbers are taken from text (YAML 1.1 reads ``1e-3`` as a string), anything
else that does not fit is a :class:`~exaslide.errors.TrainingError` of one line naming
where the value came from, the key, the value and what was expected. This module does
not import torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticKnownError

from exaslide.errors import TrainingError

#: Where each key of the mapping being validated came from (set by :func:`load_config`).
_ORIGINS: ContextVar[Mapping[str, str] | None] = ContextVar("exaslide_train_origins",
                                                             default=None)
_MODEL_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True,
                           validate_assignment=True)


def _no_bool(kind: str) -> BeforeValidator:
    """YAML's ``true`` is not a number (pydantic would take it as 1)."""

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticKnownError(kind)
        return value

    return BeforeValidator(check)


Int = Annotated[int, _no_bool("int_type")]
Number = Annotated[float, _no_bool("float_type")]
PositiveInt = Annotated[Int, Field(ge=1)]
Seed = Annotated[Int, Field(ge=0, le=2**32 - 1)]
Name = Annotated[str, Field(min_length=1)]


def _switch(value: Any) -> Any:
    """``true`` -> the step's defaults, ``false`` -> off, a mapping -> its options."""
    return {} if value is True else None if value is False else value


def _factor(value: Any) -> float | list[float] | None:
    """A colour-jitter amount: a number or a ``[low, high]`` pair (as ``ColorJitter``)."""

    def number(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError
        return float(v)

    try:
        if value is None:
            return None
        if isinstance(value, list | tuple) and len(value) == 2:
            return [number(v) for v in value]
        if not isinstance(value, list | tuple | Mapping):
            return number(value)
    except (TypeError, ValueError):
        pass
    raise ValueError("expected a number or a [low, high] pair")


Factor = Annotated[Any, PlainValidator(_factor)]


class _Section(BaseModel):
    model_config = _MODEL_CONFIG


class FlipRot90Options(_Section):
    """``augment.flip_rot90`` (:class:`~exaslide.augment.RandomFlipRot90`)."""

    seed: Seed | None = None


class HEDOptions(_Section):
    """``augment.hed`` (:class:`~exaslide.augment.HEDJitter`)."""

    sigma: Annotated[Number, Field(ge=0, lt=1)] = 0.05
    bias: Annotated[Number, Field(ge=0)] = 0.05
    seed: Seed | None = None


class ColorJitterOptions(_Section):
    """``augment.color_jitter`` (:class:`~exaslide.augment.ColorJitter`)."""

    brightness: Factor = 0.0
    contrast: Factor = 0.0
    saturation: Factor = 0.0
    hue: Factor = 0.0
    seed: Seed | None = None


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str | os.PathLike) else value


class NormalizeOptions(_Section):
    """``augment.normalize``: a stain normaliser fitted to ``reference`` images or loaded
    from a saved ``state``; the other keys are the normaliser's arguments."""

    method: Literal["macenko", "reinhard"]
    reference: Annotated[list[Name] | None, BeforeValidator(_one_or_many)] = None
    state: Name | None = None
    Io: Number | None = None  #: MacenkoNormalizer's argument name
    alpha: Number | None = None
    beta: Number | None = None
    min_tissue_pixels: PositiveInt | None = None
    min_std: Number | None = None

    @model_validator(mode="after")
    def _one_source_and_matching_options(self) -> NormalizeOptions:
        if (self.reference is None) == (self.state is None):
            raise ValueError("expected exactly one of 'reference' (images) or 'state' "
                             "(a saved target)")
        own = {"macenko": {"Io", "alpha", "beta", "min_tissue_pixels"},
               "reinhard": {"min_std"}}[self.method]
        other = sorted(self.model_fields_set - own - {"method", "reference", "state"})
        if other or (self.state is not None and self.model_fields_set & own):
            raise ValueError(f"expected only {sorted(own)} with method {self.method!r} "
                             "(and none with 'state')")
        return self


class AugmentConfig(_Section):
    """The ``augment`` section (see :mod:`exaslide.augment.pipeline`); a step is
    ``true`` (defaults), ``false`` (off) or a mapping of its options."""

    seed: Seed | None = None
    normalize: NormalizeOptions | None = None
    flip_rot90: Annotated[FlipRot90Options | None, BeforeValidator(_switch)] = None
    hed: Annotated[HEDOptions | None, BeforeValidator(_switch)] = None
    color_jitter: Annotated[ColorJitterOptions | None, BeforeValidator(_switch)] = None

    def to_dict(self) -> dict[str, Any]:
        """The keys given, as ``build_augmentation`` takes them (a step with no options
        as ``true``, a step turned off as ``false``)."""
        data = self.model_dump(exclude_unset=True)
        for step in ("flip_rot90", "hed", "color_jitter"):
            if step in data:
                data[step] = data[step] or (data[step] is not None)
        return data


Augment = Annotated[AugmentConfig, AfterValidator(AugmentConfig.to_dict),
                    PlainSerializer(lambda value: value)]  # held as a plain mapping
Source = Literal["slides", "shards"]
Decode = Literal["auto", "gpu", "cpu", "off"]
Shuffle = Literal["full", "blocks"]
Optimizer = Literal["adamw", "sgd"]
Scheduler = Literal["cosine", "none"]
SOURCES, OPTIMIZERS, SCHEDULERS = get_args(Source), get_args(Optimizer), get_args(Scheduler)
DECODES, SHUFFLES = get_args(Decode), get_args(Shuffle)


class TrainConfig(BaseModel):
    """Everything that decides a training run (see ``docs/training.md``).

    Validated when built and on assignment; invalid values raise
    :class:`~exaslide.errors.TrainingError` (one line per problem, ``;``-separated).
    """

    model_config = _MODEL_CONFIG

    data: Name = "out"  #: an ``exaslide extract`` output folder
    out: Name = "runs/train"  #: where checkpoints, metrics and the model go
    source: Source = "slides"  #: "slides" (SlidePatchDataset) or "shards" (ShardDataset)
    #: slides source: where JPEG tiles are decoded (docs/decode.md). "off" (the default):
    #: patches decoded in the loader workers (SlidePatchDataset); "gpu": loader workers
    #: ship compressed tiles, nvJPEG decodes them on the GPU; "cpu": the same with
    #: libjpeg threads in the training process; "auto": gpu on a CUDA device when the
    #: first 4 training slides are JPEG-tiled, else off (the setting for a GPU node once
    #: bench/device.sh has measured nvJPEG there).
    decode: Decode = "off"
    #: slides source: the training order (docs/data.md). "full": every epoch a full
    #: shuffle; "blocks": locality-aware, the patches of neighbouring tiles read together
    #: by one loader worker and shuffled within windows of ``window`` patches (each tile
    #: decoded about once per epoch, batches mix fewer slides).
    shuffle: Shuffle = "full"
    window: PositiveInt = 1024  #: patches per shuffle window of ``shuffle: blocks``
    #: (1024: exaslide.data.sampler.DEFAULT_WINDOW; the tile cache holds one window)
    train_split: Name = "train"
    val_split: Name = "val"
    val_fraction: Annotated[Number, Field(ge=0, lt=1)] = 0.2  #: held out without val_split
    classes: Annotated[list[Name], Field(min_length=2)] = ["normal", "tumour"]
    patch_size: PositiveInt | None = 224  #: centred crop of the patches (None: as indexed)
    model: Name = "small-cnn"
    pretrained: Name | None = None  #: a local weights file; never downloaded
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    optimizer: Optimizer = "adamw"
    lr: Annotated[Number, Field(gt=0)] = 1e-3
    weight_decay: Annotated[Number, Field(ge=0)] = 1e-4
    momentum: Annotated[Number, Field(ge=0)] = 0.9  #: SGD only
    scheduler: Scheduler = "cosine"
    balance: bool = True  #: class-balanced sampling (slides source)
    augment: Augment = Field(default_factory=lambda: {"flip_rot90": True, "hed": True})
    mean: Annotated[list[Number], Field(min_length=3, max_length=3)] = [0.485, 0.456, 0.406]
    std: Annotated[list[Annotated[Number, Field(gt=0)]],
                   Field(min_length=3, max_length=3)] = [0.229, 0.224, 0.225]
    workers: Annotated[Int, Field(ge=0)] = 2
    threads: PositiveInt | None = None  #: torch CPU threads (None: runtime.default_threads)
    device: str = "auto"  #: auto, cpu, cuda, cuda:N or mps (exaslide.runtime)
    amp: bool = True  #: bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True
    compile: bool = False  #: torch.compile the model
    seed: Seed = 0
    patience: PositiveInt | None = 5  #: epochs without a better validation AUC
    max_steps: PositiveInt | None = None  #: cap on training batches per epoch
    tensorboard: bool = True

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise TrainingError(describe_errors(exc, data, _ORIGINS.get() or {})) from exc

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise TrainingError(describe_errors(exc, {name: value})) from exc

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError("expected distinct names")
        return classes

    @field_validator("decode")
    @classmethod
    def _decode_needs_slides(cls, decode: str, info: ValidationInfo) -> str:
        if decode in ("gpu", "cpu") and info.data.get("source") == "shards":
            raise ValueError("expected 'auto' or 'off' with source 'shards' (tiles are "
                             "decoded in the training process only when reading slides)")
        return decode

    @field_validator("shuffle")
    @classmethod
    def _blocks_need_slides(cls, shuffle: str, info: ValidationInfo) -> str:
        if shuffle == "blocks" and info.data.get("source") == "shards":
            raise ValueError("expected 'full' with source 'shards' (shards are shuffled "
                             "through a buffer of their own)")
        return shuffle

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> str:
        from exaslide.runtime import device_setting

        return device_setting(value)

    def validate(self) -> TrainConfig:  # type: ignore[override]
        """A re-validated copy (catches lists or mappings changed in place).

        Raises:
            TrainingError: an invalid value.
        """
        return TrainConfig(**self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for YAML and checkpoints)."""
        return self.model_dump()


def load_config(path: str | os.PathLike | None = None, overrides: Mapping | None = None,
                sets: list[str] | None = None) -> TrainConfig:
    """A validated :class:`TrainConfig` from a YAML file, then ``overrides`` (a mapping;
    None values are ignored), then ``sets`` (``"key=value"`` strings, dotted keys for
    nested mappings, values parsed as YAML). Nothing is written.

    Raises:
        TrainingError: unreadable YAML, unknown keys or invalid values (one line naming
            the file or option, the key, the value and what was expected).
    """
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        data = _read_yaml(path)
        origins.update({str(key): str(path) for key in data})
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
            origins[key] = f"--{key.replace('_', '-')}"
    for item in sets or []:
        key, value = _parse_set(item)
        _set_dotted(data, key, value, item)
        origins[key] = "--set"
    token = _ORIGINS.set(origins)
    try:
        return TrainConfig(**data)  # errors: one line naming where each value came from
    finally:
        _ORIGINS.reset(token)


def _yaml_problem(exc: Exception) -> str:
    """A YAML error on one line: the problem and where."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise TrainingError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise TrainingError(f"{path}: not a UTF-8 text file") from exc
    except yaml.YAMLError as exc:
        raise TrainingError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise TrainingError(f"{path}: expected a mapping of options, got "
                            f"{type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise TrainingError(f"{path}: unknown option {key!r} (option names are text)")
    return data


def _parse_set(item: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE parsed as a YAML value)``."""
    import yaml

    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise TrainingError(f"--set {item!r}: expected KEY=VALUE (dotted KEY for nested "
                            "options, e.g. augment.hed.sigma=0.03)")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise TrainingError(f"--set {item!r}: the value is not valid YAML: "
                            f"{_yaml_problem(exc)}") from exc


def _set_dotted(data: dict, key: str, value: Any, item: str) -> None:
    parts = key.split(".")
    target = data
    for depth, part in enumerate(parts[:-1]):
        child = target.get(part)
        if not isinstance(child, dict):
            child = {}
            field = TrainConfig.model_fields.get(part) if depth == 0 else None
            if field is not None:
                default = field.get_default(call_default_factory=True)
                if not isinstance(default, dict):
                    raise TrainingError(f"--set {item!r}: {part!r} has no nested options")
                child = dict(default)
            target[part] = child
        target = child
    target[parts[-1]] = value


def dump_config(config: TrainConfig) -> str:
    """The resolved configuration as YAML text (what ``config.yaml`` holds)."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved configuration as YAML (atomically)."""
    from exaslide.atomic import write_text

    write_text(Path(path), dump_config(config))


# -- one-line messages from pydantic's errors ------------------------------------------

#: What whole values must be, for keys whose errors would otherwise name list items.
WHOLE_VALUE = {
    "classes": "a list of at least 2 distinct class names",
    "mean": "a list of 3 numbers",
    "std": "a list of 3 positive numbers",
    "augment.normalize.reference": "an image path or a list of image paths",
}
#: What a section must be when it is not a mapping.
SECTIONS = {"augment": "a mapping of augmentation steps",
            "augment.normalize": "a mapping (method, and reference or state)",
            **{f"augment.{step}": "true, false or a mapping of options"
               for step in ("flip_rot90", "hed", "color_jitter")}}
_TYPES = {"int_type": "an integer", "int_parsing": "an integer",
          "int_from_float": "an integer", "float_type": "a number",
          "float_parsing": "a number", "finite_number": "a finite number",
          "bool_type": "true or false", "bool_parsing": "true or false",
          "string_type": "a string", "string_too_short": "a non-empty string",
          "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
          "model_attributes_type": "a mapping"}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}
_REQUIRED = {"augment.normalize.method": "one of 'macenko', 'reinhard'"}


def describe_errors(exc: ValidationError, data: Mapping,
                    origins: Mapping[str, str] | None = None) -> str:
    """pydantic's errors as one line: ``WHERE: KEY: expected ..., got VALUE`` for each
    key, ``;``-separated (``WHERE``: the file or option a key came from)."""
    messages: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        key, text = _describe_one(error, data)
        if key not in messages:
            messages[key] = f"{_origin(key, origins or {})}: {text}"
    return "; ".join(messages.values())


def _describe_one(error: Mapping, data: Mapping) -> tuple[str, str]:
    loc = [str(part) for part in error["loc"]]
    dotted = ".".join(loc)
    if error["type"] == "extra_forbidden":
        return dotted, _unknown(loc)
    whole = next((".".join(loc[:n]) for n in range(len(loc), 0, -1)
                  if ".".join(loc[:n]) in WHOLE_VALUE), None)
    if whole is not None:
        key, expected = whole, WHOLE_VALUE[whole]
        value = _lookup(data, whole.split("."), error.get("input"))
    else:
        key, value = dotted, error.get("input")
        expected = _expected(error, loc)
    if error["type"] == "missing":
        return key, f"{key}: missing; expected {_REQUIRED.get(key, 'a value')}"
    got = _show(value)
    return key, f"{key}: expected {expected}, got {got}"


def _expected(error: Mapping, loc: list[str]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in ("model_type", "dict_type") and ".".join(loc) in SECTIONS:
        return SECTIONS[".".join(loc)]
    if kind in _TYPES:
        return _TYPES[kind]
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        return f"a value {sign} {ctx.get(name)}"
    if kind == "literal_error":
        return f"one of {str(ctx.get('expected', '')).replace(' or ', ', ')}"
    message = str(error.get("msg", ""))
    for prefix in ("Value error, expected ", "Value error, ", "Input should be "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _unknown(loc: list[str]) -> str:
    import difflib

    parent, name = loc[:-1], loc[-1]
    model = _model_at(parent)
    known = sorted(model.model_fields) if model is not None else []
    prefix = "".join(f"{part}." for part in parent)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = ("did you mean " + " or ".join(repr(prefix + c) for c in close) + "?") if close \
        else f"the options{' of ' + prefix[:-1] if parent else ''} are {', '.join(known)}"
    return f"unknown option {prefix + name!r} ({hint})"


def _model_at(parts: list[str]) -> type[BaseModel] | None:
    """The model class of a (dotted) section, e.g. ``["augment", "hed"]``."""
    model: type[BaseModel] | None = TrainConfig
    for part in parts:
        field = model.model_fields.get(part) if model is not None else None
        model = _model_class(field.annotation) if field is not None else None
    return model


def _model_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_class(arg)
        if found is not None:
            return found
    return None


def _lookup(data: Mapping, parts: list[str], default: Any) -> Any:
    value: Any = data
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def _origin(key: str, origins: Mapping[str, str]) -> str:
    """The file or option the longest known prefix of ``key`` came from (else the last
    one that set a key inside it)."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:n]))
        if found is not None:
            return found
    inner = [origin for name, origin in origins.items() if name.startswith(key + ".")]
    return inner[-1] if inner else "training config"


def _show(value: Any) -> str:
    """A value as the message shows it (YAML words for true, false and null)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
