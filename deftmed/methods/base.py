"""The one interface every reconstruction method implements.

``Reconstructor.reconstruct(y, operator, noise) -> Reconstruction``: measurements ``y``
(B, 1, n_views, n_det) for CT, (B, C', H', W') for an image operator; the operator
(``RayTransform`` or an :class:`~deftmed.physics.imaging.ImagingOperator`) and the noise model.
The benchmark runner and the CLI know nothing else about a method. The helpers below are the
few places where CT and image operators differ.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from deftmed.errors import ConfigError, InvalidValueError, ShapeError
from deftmed.physics import is_ct


def operator_scale(operator, image_shape=(1, 64, 64)) -> float:
    """``||A||`` (a Lipschitz constant for non-linear operators): the unit of gradient steps."""
    if is_ct(operator):
        return operator.norm()
    return operator.lipschitz(tuple(image_shape))


def initial_image(operator, y_lin: torch.Tensor) -> torch.Tensor:
    """A direct reconstruction to start from: Hann FBP (CT) or the operator's measurement
    image (upsampling, masked fill, HIO/ER, inverted camera response)."""
    if is_ct(operator):
        return operator.fbp(y_lin, "Hann", 1.0)
    return operator.measurement_image(y_lin)


def require_linear(operator, method: str) -> None:
    if not getattr(operator, "linear", True):
        raise ConfigError(f"{method} needs a linear operator with an adjoint; "
                          f"{type(operator).__name__} is non-linear (use deft, dps or reddiff)")


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
        if is_ct(operator) and (y.dim() != 4 or y.shape[1] != 1):
            raise InvalidValueError(f"measurements must have shape (B, 1, views, detectors), "
                                    f"got {tuple(y.shape)}")
        if y.dim() != 4:
            raise InvalidValueError(f"measurements must have shape (B, C, H, W), "
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
