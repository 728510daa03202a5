"""The shared contract of every transform: shapes, dtypes, devices and random generators.

A transform takes a tensor shaped ``(C, H, W)`` (one sample) or ``(N, C, H, W)`` (a batch),
uint8 (0-255) or floating point (0-1), on any device, and returns a tensor of the same
shape, dtype and device.

Random transforms draw their parameters per sample, on the CPU, from a ``torch.Generator``:

- ``t(x, generator=g)`` uses ``g`` (a CPU generator); the caller owns the stream.
- ``t(x)`` uses the transform's own generator, created on first use from ``seed``. Two
  transforms built with the same seed produce the same sequence of outputs; successive
  calls of one transform differ, as augmentation needs. With ``seed=None`` the seed is
  drawn from PyTorch's global generator, so ``torch.manual_seed`` makes a run repeatable.
- Inside a ``DataLoader`` worker the own generator is re-seeded from ``seed`` and the
  worker's seed (``get_worker_info().seed``), so that workers, and epochs, do not repeat
  each other's augmentations; a seeded DataLoader (``generator=...``) keeps the whole run
  deterministic.

Parameters are drawn on the CPU and then moved to the input's device, so the parameters of
a given seed do not depend on where the pixels are.
"""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info

from exaslide.errors import AugmentError

_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, worker) pairs apart


def as_batch(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``x`` as an ``(N, C, H, W)`` batch, and whether it was a single ``(C, H, W)`` sample.

    Raises:
        AugmentError: ``x`` is not a 3-D or 4-D uint8 or floating-point tensor.
    """
    if not isinstance(x, torch.Tensor):
        raise AugmentError(f"expected a torch.Tensor shaped (C, H, W) or (N, C, H, W), "
                           f"got {type(x).__name__}; convert images with "
                           f"torch.from_numpy(array).permute(2, 0, 1)")
    if x.ndim not in (3, 4):
        raise AugmentError(f"expected a tensor shaped (C, H, W) or (N, C, H, W), got shape "
                           f"{tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise AugmentError(f"expected a uint8 (0-255) or floating-point (0-1) tensor, got "
                           f"{x.dtype}")
    return (x.unsqueeze(0), True) if x.ndim == 3 else (x, False)


def require_rgb(batch: torch.Tensor, name: str) -> None:
    """Raise :class:`AugmentError` unless ``batch`` has 3 channels."""
    if batch.shape[1] != 3:
        raise AugmentError(f"{name} needs RGB images (3 channels), got {batch.shape[1]} "
                           f"channels in shape {tuple(batch.shape)}")


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1] from uint8 (divided by 255) or float (cast) input.

    float32 input is returned as is (not copied): do not modify the result in place.
    """
    if batch.dtype == torch.uint8:
        return batch.to(torch.float32).div_(255.0)
    return batch.to(torch.float32)


def from_unit(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (float in [0, 1]) clipped and converted to the dtype of ``like``.

    uint8 output is rounded to the nearest integer (so a round trip is exact).
    """
    values = values.clamp(0.0, 1.0)
    if like.dtype == torch.uint8:
        return values.mul_(255.0).round_().to(torch.uint8)
    return values.to(like.dtype)


def check_generator(generator: torch.Generator) -> torch.Generator:
    """Return ``generator``, or raise when it is not a CPU ``torch.Generator``."""
    if not isinstance(generator, torch.Generator):
        raise AugmentError(f"generator must be a torch.Generator, got "
                           f"{type(generator).__name__}")
    if generator.device.type != "cpu":
        raise AugmentError(f"generator must be a CPU torch.Generator (parameters are drawn on "
                           f"the CPU and moved to the input's device), got one on "
                           f"{generator.device}")
    return generator


def uniform(generator: torch.Generator, shape: tuple[int, ...], low: float,
            high: float) -> torch.Tensor:
    """float64 CPU tensor of values uniform in ``[low, high)`` drawn from ``generator``."""
    return torch.rand(shape, generator=generator, dtype=torch.float64).mul_(high - low).add_(low)


class Transform:
    """Base of every transform: validates the input and maps one sample to a batch of one.

    Subclasses implement :meth:`forward_batch` on ``(N, C, H, W)`` tensors.
    """

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        batch, single = as_batch(x)
        out = self.forward_batch(batch, self.resolve_generator(generator))
        return out[0] if single else out

    def resolve_generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        """The generator to draw from; deterministic transforms need none."""
        return None if generator is None else check_generator(generator)

    def forward_batch(self, batch: torch.Tensor, generator: torch.Generator | None
                      ) -> torch.Tensor:
        """Transform an ``(N, C, H, W)`` batch."""
        raise NotImplementedError


class RandomTransform(Transform):
    """A transform with random parameters drawn per sample (see the module docstring).

    Args:
        seed: seed of the transform's own generator, used when no generator is passed;
            None draws one from PyTorch's global generator on first use.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._generator_key: tuple[int, int] | None = None

    def resolve_generator(self, generator: torch.Generator | None) -> torch.Generator:
        if generator is not None:
            return check_generator(generator)
        return self.own_generator()

    def own_generator(self) -> torch.Generator:
        """The transform's own generator, seeded on first use (and once per loader worker)."""
        info = get_worker_info()
        key = None if info is None else (info.id, info.seed)
        if self._generator is None or key != self._generator_key:
            if self.seed is None:
                # In a worker, PyTorch has seeded the global generator with the worker seed.
                seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            elif info is None:
                seed = int(self.seed)
            else:
                seed = (int(self.seed) * _SEED_MIX + int(info.seed)) % 2**63
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_key = key
        return self._generator

    def reset(self) -> None:
        """Forget the own generator: the next call starts again from ``seed``."""
        self._generator = None
        self._generator_key = None

    def __getstate__(self) -> dict:
        # A generator's state is not carried into worker processes; each re-seeds itself.
        state = self.__dict__.copy()
        state["_generator"] = None
        state["_generator_key"] = None
        return state
