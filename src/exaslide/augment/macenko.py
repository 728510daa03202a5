"""Macenko stain normalisation, with torchstain's PyTorch implementation doing the maths.

Macenko et al. (ISBI 2009): pixels whose optical density ``-ln((I + 1) / Io)`` is at least
``beta`` in every channel are tissue; the plane of their two main OD directions holds the
haematoxylin and eosin vectors, taken at the ``alpha`` and ``100 - alpha`` percentiles of
the angle in that plane. Concentrations come from least squares, are rescaled so their
99th percentiles match the target's, and are recombined with the target's stain matrix.

``torchstain.normalizers.MacenkoNormalizer(backend="torch")`` (``TorchMacenkoNormalizer``)
fits and normalises one ``(3, H, W)`` image of values 0-255 and returns an ``(H, W, 3)``
int32 image. This wrapper adds: batches (one torchstain call per image, on the image's
device), uint8 and float input, fitting to a set of references, a saved target, and
skipping the images torchstain cannot handle instead of stopping training.
"""

from __future__ import annotations

from typing import Any

import torch

from exaslide.augment.base import AugmentError
from exaslide.augment.stain import Reference, StainNormalizer, check_keys, pool_reference


def _torchstain_macenko() -> Any:
    import torchstain

    return torchstain.normalizers.MacenkoNormalizer(backend="torch")


class MacenkoNormalizer(StainNormalizer):
    """Map an image's H&E stains onto a reference's (Macenko), per image.

    Args:
        Io: transmitted light intensity (the brightness of glass), 0-255.
        alpha: percentile (0-100) of the angle used for the extreme stain vectors.
        beta: OD threshold below which a pixel (in any channel) is background.
        min_tissue_pixels: images with fewer tissue pixels than this (blank glass, white
            patches) are returned unchanged and counted in ``skipped``.
    """

    method = "macenko"

    def __init__(self, Io: float = 240.0, alpha: float = 1.0, beta: float = 0.15,
                 min_tissue_pixels: int = 100) -> None:
        super().__init__()
        self.Io = float(Io)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.min_tissue_pixels = int(min_tissue_pixels)
        self.stain_matrix: torch.Tensor | None = None  #: (3, 2): H and E OD unit vectors
        self.max_concentrations: torch.Tensor | None = None  #: (2,): 99th percentiles
        self._backends: dict[torch.device, Any] = {}

    @property
    def fitted(self) -> bool:
        return self.stain_matrix is not None

    def tissue_pixels(self, image: torch.Tensor) -> int:
        """The number of pixels torchstain treats as tissue in a ``(3, H, W)`` 0-255 image."""
        od = -torch.log((image.to(torch.float32) + 1.0) / self.Io)
        return int((od >= self.beta).all(dim=0).sum())

    def fit(self, reference: Reference) -> MacenkoNormalizer:
        """Fit the target stain matrix and maximum concentrations to the reference(s).

        Raises:
            AugmentError: the reference has too few tissue pixels or torchstain fails.
        """
        pooled = pool_reference(reference)
        tissue = self.tissue_pixels(pooled)
        if tissue < self.min_tissue_pixels:
            raise AugmentError(f"the Macenko reference has {tissue} tissue pixels (OD >= "
                               f"{self.beta} in every channel), fewer than "
                               f"{self.min_tissue_pixels}; choose a patch with stained tissue")
        backend = _torchstain_macenko()
        try:
            with torch.no_grad():
                backend.fit(pooled, Io=self.Io, alpha=self.alpha, beta=self.beta)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise AugmentError(f"Macenko fitting failed on the reference: {exc}") from exc
        stain_matrix = backend.HERef.detach().to("cpu", torch.float32)
        max_concentrations = backend.maxCRef.detach().to("cpu", torch.float32)
        if not (stain_matrix.isfinite().all() and max_concentrations.isfinite().all()):
            raise AugmentError("Macenko fitting gave a non-finite stain matrix; choose a "
                               "reference patch with both haematoxylin and eosin")
        self._set_target(stain_matrix, max_concentrations)
        return self

    def _set_target(self, stain_matrix: torch.Tensor, max_concentrations: torch.Tensor
                    ) -> None:
        self.stain_matrix = stain_matrix
        self.max_concentrations = max_concentrations
        self._backends = {}

    def _backend_on(self, device: torch.device) -> Any:
        """A torchstain normaliser holding the target on ``device`` (cached per device)."""
        backend = self._backends.get(device)
        if backend is None:
            assert self.stain_matrix is not None and self.max_concentrations is not None
            backend = _torchstain_macenko()
            backend.HERef = self.stain_matrix.to(device)
            backend.maxCRef = self.max_concentrations.to(device)
            self._backends[device] = backend
        return backend

    def normalize_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._normalize_one(image) for image in batch])

    def _normalize_one(self, image: torch.Tensor) -> torch.Tensor:
        values = image if image.dtype == torch.uint8 else image.to(torch.float32) * 255.0
        tissue = self.tissue_pixels(values)
        if tissue < self.min_tissue_pixels:
            self.skip(f"{tissue} tissue pixels < {self.min_tissue_pixels}")
            return image
        try:
            with torch.no_grad():
                result = self._normalized_float(self._backend_on(image.device), values)
        except (RuntimeError, ValueError, IndexError) as exc:
            self.skip(f"torchstain failed: {exc}")
            return image
        if result is None:
            self.skip("non-finite result")
            return image
        result = result.to(torch.int32).permute(2, 0, 1)  # torchstain's truncation
        if image.dtype == torch.uint8:
            return result.to(torch.uint8)
        return (result.to(torch.float32) / 255.0).to(image.dtype)

    def _normalized_float(self, backend: Any, values: torch.Tensor) -> torch.Tensor | None:
        """torchstain's ``normalize`` up to, not including, its cast to int32: the ``(H, W,
        3)`` float image clipped above 255, or ``None`` when it is not finite.

        The check must come before any integer cast: NaN becomes a negative int32 on the
        CPU but 0 on CUDA, where a failed image would come out black and uncounted.
        torchstain's concentrations come from its (name-mangled) ``__compute_matrices``;
        where that is missing (another torchstain version) its ``normalize`` is used and
        only NaNs cast to negative values (CPU) are caught."""
        compute = getattr(backend, "_TorchMacenkoNormalizer__compute_matrices", None)
        if compute is None:
            result, _, _ = backend.normalize(values, Io=self.Io, alpha=self.alpha,
                                             beta=self.beta, stains=False)
            return None if bool((result < 0).any()) else result.to(torch.float32)
        c, h, w = values.shape
        _, concentrations, max_concentrations = compute(values, self.Io, self.alpha,
                                                        self.beta)
        concentrations = concentrations * (backend.maxCRef / max_concentrations).unsqueeze(-1)
        if not bool(torch.isfinite(concentrations).all()):
            return None
        result = self.Io * torch.exp(-torch.matmul(backend.HERef, concentrations))
        if not bool(torch.isfinite(result).all()):
            return None
        return result.clamp(max=255).T.reshape(h, w, c)

    def state_dict(self) -> dict[str, Any]:
        if not self.fitted:
            raise AugmentError("MacenkoNormalizer is not fitted: call .fit(reference) first")
        assert self.stain_matrix is not None and self.max_concentrations is not None
        return {"method": self.method, "Io": self.Io, "alpha": self.alpha, "beta": self.beta,
                "min_tissue_pixels": self.min_tissue_pixels,
                "stain_matrix": self.stain_matrix.tolist(),
                "max_concentrations": self.max_concentrations.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_keys(state, ("stain_matrix", "max_concentrations"), "Macenko")
        stain_matrix = torch.tensor(state["stain_matrix"], dtype=torch.float32)
        max_concentrations = torch.tensor(state["max_concentrations"], dtype=torch.float32)
        if stain_matrix.shape != (3, 2) or max_concentrations.shape != (2,):
            raise AugmentError(f"Macenko state: expected a (3, 2) stain matrix and 2 maximum "
                               f"concentrations, got {tuple(stain_matrix.shape)} and "
                               f"{tuple(max_concentrations.shape)}")
        for name in ("Io", "alpha", "beta"):
            if name in state:
                setattr(self, name, float(state[name]))
        if "min_tissue_pixels" in state:
            self.min_tissue_pixels = int(state["min_tissue_pixels"])
        self._set_target(stain_matrix, max_concentrations)

    def __repr__(self) -> str:
        return (f"MacenkoNormalizer(Io={self.Io}, alpha={self.alpha}, beta={self.beta}, "
                f"fitted={self.fitted}, skipped={self.skipped})")
