"""What the stain normalisers share: references, fitted state, files, skipped images.

A normaliser is fitted once to a reference (one patch, a batch or a list of patches, or
image files) and then maps any image's colours onto the reference's. A set of references
is pooled: the pixels of all patches are laid side by side in one ``(3, 1, P)`` image and
fitted as one image, so every pixel weighs the same whatever patch it comes from.

The fitted target (Macenko: the stain matrix and the 99th-percentile concentrations;
Reinhard: LAB means and standard deviations) is a small dict (:meth:`state_dict`) that
:meth:`save` writes as JSON, so a normaliser fitted once is reused in training and
inference.

Normalising never fails on one image: when an image cannot be normalised (a blank or
white patch with too few tissue pixels, a flat colour, a numerical failure) the image is
returned unchanged, ``skipped`` is incremented and a debug message is logged. Inside
``DataLoader`` workers each worker counts its own copy.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from exaslide.atomic import write_text
from exaslide.augment.base import AugmentError, Transform, as_batch

log = logging.getLogger(__name__)

Reference = torch.Tensor | str | os.PathLike | Sequence[torch.Tensor | str | os.PathLike]


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as a ``(3, H, W)`` uint8 RGB tensor (any format Pillow reads)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise AugmentError(f"{path}: cannot read the reference image ({exc})") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _reference_images(reference: Reference) -> list[torch.Tensor]:
    if isinstance(reference, str | os.PathLike):
        return [load_image(reference)]
    if isinstance(reference, torch.Tensor):
        batch, _ = as_batch(reference)
        return list(batch)
    if isinstance(reference, Sequence) and len(reference) > 0:
        return [image for item in reference for image in _reference_images(item)]
    raise AugmentError(f"a reference must be a (3, H, W) or (N, 3, H, W) tensor, an image "
                       f"path, or a non-empty list of them; got {type(reference).__name__}")


def pool_reference(reference: Reference) -> torch.Tensor:
    """The pixels of every reference image side by side: a ``(3, 1, P)`` float32 tensor
    with values 0-255 (uint8 images as is, float images times 255), on the CPU."""
    images = _reference_images(reference)
    pixels = []
    for image in images:
        if image.ndim != 3 or image.shape[0] != 3:
            raise AugmentError(f"reference images must be RGB shaped (3, H, W), got "
                               f"{tuple(image.shape)}")
        scale = 1.0 if image.dtype == torch.uint8 else 255.0
        pixels.append(image.detach().to("cpu", torch.float32).reshape(3, 1, -1) * scale)
    return torch.cat(pixels, dim=2)


class StainNormalizer(Transform):
    """Base of the stain normalisers: fitting, state files and the skip counter.

    Subclasses set :attr:`method`, implement :meth:`fit`, :meth:`normalize_batch`,
    :meth:`state_dict` and :meth:`load_state_dict`.
    """

    method = ""

    def __init__(self) -> None:
        self.skipped = 0  #: images returned unchanged because they could not be normalised

    @property
    def fitted(self) -> bool:
        """Whether the normaliser has a target (from :meth:`fit` or a loaded state)."""
        raise NotImplementedError

    def fit(self, reference: Reference) -> StainNormalizer:
        """Fit the target to one reference image, a batch, a list, or image paths."""
        raise NotImplementedError

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise one ``(3, H, W)`` image or an ``(N, 3, H, W)`` batch (same dtype,
        shape and device out)."""
        return self(x)

    def forward_batch(self, batch: torch.Tensor, generator: torch.Generator | None
                      ) -> torch.Tensor:
        if not self.fitted:
            raise AugmentError(f"{type(self).__name__} is not fitted: call .fit(reference) "
                               f"or .load(path) first")
        if batch.shape[1] != 3:
            raise AugmentError(f"stain normalisation needs RGB images (3 channels), got "
                               f"shape {tuple(batch.shape)}")
        return self.normalize_batch(batch)

    def normalize_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalise an ``(N, 3, H, W)`` batch."""
        raise NotImplementedError

    def skip(self, reason: str, count: int = 1) -> None:
        """Count ``count`` images that are returned unchanged."""
        self.skipped += count
        log.debug("%s: %d image(s) left unchanged (%s)", type(self).__name__, count, reason)

    def state_dict(self) -> dict[str, Any]:
        """The fitted target and parameters, as plain JSON-ready values."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a target saved by :meth:`state_dict`."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` to a JSON file (atomically)."""
        if not self.fitted:
            raise AugmentError(f"{type(self).__name__} is not fitted: nothing to save")
        return write_text(path, json.dumps(self.state_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> StainNormalizer:
        """A normaliser restored from a JSON file written by :meth:`save`."""
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AugmentError(f"{path}: cannot read the normaliser state ({exc})") from exc
        if not isinstance(state, dict) or state.get("method") != cls.method:
            found = state.get("method") if isinstance(state, dict) else type(state).__name__
            raise AugmentError(f"{path}: expected a saved {cls.method!r} normaliser, found "
                               f"method {found!r}")
        normalizer = cls()
        normalizer.load_state_dict(state)
        return normalizer


def check_keys(state: dict[str, Any], keys: Sequence[str], name: str) -> None:
    """Raise :class:`AugmentError` when a saved state lacks one of ``keys``."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise AugmentError(f"{name} state is missing {', '.join(missing)}; expected the "
                           f"output of state_dict() or save()")
