"""The one interface every reconstruction method implements.

``Reconstructor.reconstruct(y, operator, noise) -> Reconstruction``: measurements ``y``
(B, 1, n_views, n_det), an operator (``RayTransform`` or an image-space operator) and the noise
model. The benchmark runner and the CLI know nothing else about a method.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from deftmed.errors import InvalidValueError, ShapeError


@dataclass
class Reconstruction:
    """Images in the model range (B,1,H,W); optional posterior samples (B,K,1,H,W) and
    pixel-wise std (B,1,H,W); network evaluations per image; wall seconds per image."""

    image: torch.Tensor
    samples: torch.Tensor | None = None
    std: torch.Tensor | None = None
    nfe: int = 0
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


class Reconstructor(ABC):
    name: str = "base"

    @abstractmethod
    def _reconstruct(self, y: torch.Tensor, operator, noise,
                     generator: torch.Generator | None) -> Reconstruction:
        """Method-specific work on a validated batch."""

    def settings(self) -> dict:
        """Hyper-parameters, for reports and tuned files."""
        return {}

    def reconstruct(self, y: torch.Tensor, operator, noise,
                    generator: torch.Generator | None = None) -> Reconstruction:
        if y.dim() != 4 or y.shape[1] != 1:
            raise InvalidValueError(f"measurements must have shape (B, 1, views, detectors), "
                                    f"got {tuple(y.shape)}")
        expected = getattr(operator, "sinogram_shape", None)
        if expected is not None and tuple(y.shape[2:]) != tuple(expected):
            geometry = getattr(operator, "geometry", None)
            name = f" '{geometry.name}'" if getattr(geometry, "name", "") else ""
            raise ShapeError(f"measurement shape {tuple(y.shape)} does not match the operator"
                             f"{name}: expected (B, 1, {expected[0]}, {expected[1]})")
        if not bool(torch.isfinite(y).all()):
            raise InvalidValueError(f"measurements contain {int((~torch.isfinite(y)).sum())} "
                                    "NaN/Inf values")
        noise.validate_measurement(y)
        start = time.perf_counter()
        rec = self._reconstruct(y, operator, noise, generator)
        rec.seconds = (time.perf_counter() - start) / y.shape[0]
        return rec


def reconstruct_in_batches(method: Reconstructor, y: torch.Tensor, operator, noise,
                           batch_size: int = 8, generator: torch.Generator | None = None,
                           progress: bool = False) -> Reconstruction:
    """Reconstruct a stack of measurements batch by batch (with a progress bar)."""
    from tqdm.auto import tqdm

    parts = []
    for start in tqdm(range(0, y.shape[0], batch_size), disable=not progress,
                      desc=f"{method.name}", unit="batch"):
        parts.append(method.reconstruct(y[start:start + batch_size], operator, noise, generator))
    cat = lambda name: None if getattr(parts[0], name) is None else \
        torch.cat([getattr(p, name) for p in parts])
    total = sum(p.seconds * p.image.shape[0] for p in parts)
    return Reconstruction(cat("image"), cat("samples"), cat("std"), parts[0].nfe,
                          total / y.shape[0], parts[0].info)
