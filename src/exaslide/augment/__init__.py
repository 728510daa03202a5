"""Augmentation and stain normalisation for histology patches, per sample or batched.

Every transform takes a ``(C, H, W)`` sample or an ``(N, C, H, W)`` batch, uint8 (0-255)
or float (0-1), on any device, and returns the same shape, dtype and device. Random
parameters are drawn per sample from a CPU ``torch.Generator`` (``t(x, generator=g)``, or
the transform's own, seeded from ``seed``): same seed and input, same output.

- :class:`RandomFlipRot90`: the 8 flips and quarter turns of the square (hand-written).
- :class:`ColorJitter`: brightness, contrast, saturation, hue (torchvision's maths).
- :class:`HEDJitter`: Tellez et al. haematoxylin/eosin/DAB jitter (hand-written).
- :class:`MacenkoNormalizer` (torchstain), :class:`ReinhardNormalizer` (torchstain's
  formulas, batched here): stain normalisation fitted to a reference patch or a set.
- :class:`Compose`, :func:`build_augmentation`: a pipeline, from a config mapping.
- :func:`to_float`: uint8 batches to normalised floats on the GPU.

See ``docs/augment.md``.
"""

from exaslide.augment.base import AugmentError, RandomTransform, Transform
from exaslide.augment.color import ColorJitter
from exaslide.augment.geometry import (
    D4_ELEMENTS,
    RandomFlipRot90,
    flip_rot90,
    invert_flip_rot90,
)
from exaslide.augment.hed import HEDJitter, hed_jitter, hed_to_rgb, rgb_to_hed
from exaslide.augment.macenko import MacenkoNormalizer
from exaslide.augment.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    build_augmentation,
    build_normalizer,
    to_float,
)
from exaslide.augment.reinhard import ReinhardNormalizer, lab_to_rgb, rgb_to_lab
from exaslide.augment.stain import StainNormalizer, load_image

__all__ = [
    "D4_ELEMENTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentError",
    "ColorJitter",
    "Compose",
    "HEDJitter",
    "MacenkoNormalizer",
    "RandomFlipRot90",
    "RandomTransform",
    "ReinhardNormalizer",
    "StainNormalizer",
    "Transform",
    "build_augmentation",
    "build_normalizer",
    "flip_rot90",
    "hed_jitter",
    "hed_to_rgb",
    "invert_flip_rot90",
    "lab_to_rgb",
    "load_image",
    "rgb_to_hed",
    "rgb_to_lab",
    "to_float",
]
