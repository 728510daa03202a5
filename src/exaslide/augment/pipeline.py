"""Chaining transforms, building them from a config, and the float conversion for models.

A config (the ``augment:`` section of a training YAML file) names what to apply; the
order is always: stain normalisation, flips/rotations, HED jitter, colour jitter::

    seed: 0                          # optional; default: from torch's global generator
    normalize:                       # optional
      method: macenko                # or reinhard
      reference: ref.png             # an image, a list of images, or
      # state: macenko.json          # a target saved by MacenkoNormalizer.save()
    flip_rot90: true
    hed: {sigma: 0.05, bias: 0.05}   # or true for the defaults
    color_jitter: {brightness: 0.1, contrast: 0.1, saturation: 0.1, hue: 0.02}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from exaslide.augment.base import AugmentError, RandomTransform, Transform, as_batch
from exaslide.augment.color import ColorJitter
from exaslide.augment.geometry import RandomFlipRot90
from exaslide.augment.hed import HEDJitter
from exaslide.augment.macenko import MacenkoNormalizer
from exaslide.augment.reinhard import ReinhardNormalizer
from exaslide.augment.stain import StainNormalizer

#: ImageNet channel means and standard deviations (the torchvision models' convention).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

CONFIG_KEYS = ("seed", "normalize", "flip_rot90", "hed", "color_jitter")
NORMALIZERS: dict[str, type[StainNormalizer]] = {
    "macenko": MacenkoNormalizer,
    "reinhard": ReinhardNormalizer,
}


class Compose(RandomTransform):
    """Apply transforms in order, all drawing from one generator.

    ``compose(x, generator=g)`` passes ``g`` to every transform; ``compose(x)`` passes the
    Compose's own generator (seeded from ``seed``), so the transforms' own seeds are not
    used inside a Compose.

    Args:
        transforms: callables taking ``(x, generator=...)``, e.g. this package's transforms.
        seed: seed of the Compose's own generator (see :mod:`exaslide.augment.base`).
    """

    def __init__(self, transforms: Sequence[Callable[..., torch.Tensor]],
                 seed: int | None = None) -> None:
        super().__init__(seed)
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        as_batch(x)  # validate once, with a clear message
        generator = self.resolve_generator(generator)
        for transform in self.transforms:
            x = transform(x, generator=generator)
        return x

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None,
                    base_dir: str | os.PathLike | None = None) -> Compose:
        """See :func:`build_augmentation`."""
        return build_augmentation(config, base_dir)

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}], seed={self.seed})"


def _resolve(path: Any, base_dir: Path | None) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise AugmentError(f"augment config: expected a file path, got {path!r}")
    path = Path(path).expanduser()
    return path if base_dir is None or path.is_absolute() else base_dir / path


def build_normalizer(config: Mapping[str, Any],
                     base_dir: str | os.PathLike | None = None) -> StainNormalizer:
    """A fitted stain normaliser from ``{"method": ..., "reference": ...}`` or
    ``{"method": ..., "state": path.json}``; other keys are the normaliser's arguments.
    Relative paths are taken from ``base_dir`` (the config file's folder)."""
    if not isinstance(config, Mapping):
        raise AugmentError(f"augment config: 'normalize' must be a mapping, got {config!r}")
    options = dict(config)
    method = str(options.pop("method", "")).lower()
    if method not in NORMALIZERS:
        raise AugmentError(f"augment config: normalize.method must be one of "
                           f"{sorted(NORMALIZERS)}, got {method!r}")
    reference, state = options.pop("reference", None), options.pop("state", None)
    if (reference is None) == (state is None):
        raise AugmentError("augment config: normalize needs exactly one of 'reference' "
                           "(image path or list of paths) or 'state' (a saved JSON target)")
    root = None if base_dir is None else Path(base_dir)
    cls = NORMALIZERS[method]
    if state is not None:
        if options:
            raise AugmentError(f"augment config: normalize with 'state' takes no other "
                               f"options, got {sorted(options)}")
        return cls.load(_resolve(state, root))
    paths = reference if isinstance(reference, list | tuple) else [reference]
    try:
        normalizer = cls(**options)
    except TypeError as exc:
        raise AugmentError(f"augment config: normalize ({method}): {exc}") from exc
    return normalizer.fit([_resolve(path, root) for path in paths])


def _options(value: Any, name: str) -> dict[str, Any] | None:
    """``true`` -> defaults, ``false``/absent -> off, a mapping -> keyword arguments."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    raise AugmentError(f"augment config: {name} must be true, false or a mapping, got "
                       f"{value!r}")


def build_augmentation(config: Mapping[str, Any] | None,
                       base_dir: str | os.PathLike | None = None) -> Compose:
    """A :class:`Compose` from a config mapping (see the module docstring for the keys).

    Raises:
        AugmentError: an unknown key, a bad value, or an unreadable reference.
    """
    config = dict(config or {})
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise AugmentError(f"augment config: unknown key(s) {unknown}; known keys are "
                           f"{list(CONFIG_KEYS)}")
    transforms: list[Transform] = []
    if config.get("normalize"):
        transforms.append(build_normalizer(config["normalize"], base_dir))
    steps: tuple[tuple[str, Callable[..., Transform]], ...] = (
        ("flip_rot90", RandomFlipRot90), ("hed", HEDJitter), ("color_jitter", ColorJitter))
    for name, cls in steps:
        options = _options(config.get(name), name)
        if options is None:
            continue
        try:
            transforms.append(cls(**options))
        except TypeError as exc:
            raise AugmentError(f"augment config: {name}: {exc}") from exc
    return Compose(transforms, seed=config.get("seed"))


def to_float(x: torch.Tensor, mean: Sequence[float] | None = IMAGENET_MEAN,
             std: Sequence[float] | None = IMAGENET_STD, channels_last: bool = False,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images (uint8 0-255 or float 0-1) as normalised floats for a model, on their device.

    Typically called on the GPU after ``batch.to(device, non_blocking=True)``, so that the
    loader moves uint8 (4x fewer bytes than float32).

    Args:
        x: ``(C, H, W)`` or ``(N, C, H, W)`` tensor.
        mean, std: per-channel normalisation ``(x - mean) / std`` (default: ImageNet's);
            None for both leaves values in [0, 1].
        channels_last: return an ``(N, C, H, W)`` tensor in channels-last memory format
            (faster convolutions with mixed precision on recent GPUs).
        dtype: the floating-point dtype of the result.
    """
    from torchvision.transforms.v2 import functional as F

    batch, single = as_batch(x)
    out = F.to_dtype(batch, dtype, scale=True)
    if (mean is None) != (std is None):
        raise AugmentError("to_float: give both mean and std, or neither")
    if mean is not None and std is not None:
        out = F.normalize(out, list(mean), list(std))
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out[0] if single else out
