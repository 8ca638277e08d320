"""The guidance input of the h-network: the likelihood gradient at the Tweedie estimate.

``g = B s(A x0hat, y)`` where ``s = d log p(y | A x) / d(A x)`` is the noise model's score in
sinogram space and ``B`` maps it back to the image: the exact adjoint ``A^T`` (so ``g`` is the
true gradient ``grad_x log p(y | x)``) or, as the DEFT paper does for CT, the filtered
back-projection, which conditions far better. For Gaussian noise
``s = (y - A x) / sigma^2``; for Poisson counts ``s = mu (i0 exp(-mu A x) - c)``.

``g`` is multiplied by a fixed ``scale`` chosen once when fine-tuning starts (so that it has
unit RMS on a calibration batch) and stored in the checkpoint: the network sees inputs of
order one whatever the units and noise level. Being a constant, it changes nothing else: the
scalar path ``NN2(t)`` learns the step size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deftmed.errors import ConfigError
from deftmed.physics.noise import GaussianNoise, NoiseModel, PoissonNoise

BACKPROJECTIONS = ("fbp", "adjoint")


def sinogram_score(noise: NoiseModel, ax: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``d log p(y | A x) / d(A x)`` for clean line integrals ``ax``."""
    if isinstance(noise, GaussianNoise):
        return (y - ax) / noise.effective_sigma(y) ** 2
    if isinstance(noise, PoissonNoise):
        counts = noise.counts_from_measurement(y)
        return noise.attenuation_scale * (noise.expected_counts(ax) - counts)
    raise ConfigError(f"no guidance defined for noise model {type(noise).__name__}")


@dataclass
class Guidance:
    """Computes ``g`` (and ``B y`` for the ablation variants) for one operator and noise model."""

    op: torch.nn.Module
    noise: NoiseModel
    backprojection: str = "fbp"
    filter_type: str = "Hann"
    frequency_scaling: float = 1.0
    scale: float = 1.0

    def __post_init__(self):
        if self.backprojection not in BACKPROJECTIONS:
            raise ConfigError(f"unknown back-projection {self.backprojection!r}; "
                              f"use one of {BACKPROJECTIONS}")

    def back(self, sino: torch.Tensor) -> torch.Tensor:
        if self.backprojection == "fbp":
            return self.op.fbp(sino, self.filter_type, self.frequency_scaling)
        return self.op.adjoint(sino)

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``g`` at image-space estimates ``x0`` (B,1,H,W) for measurements ``y``."""
        return self.scale * self.back(sinogram_score(self.noise, self.op(x0), y))

    @torch.no_grad()
    def measurement_image(self, y: torch.Tensor) -> torch.Tensor:
        """``B y``: the measurement mapped to the image (the ``A*y`` input of the ablations)."""
        if isinstance(self.noise, PoissonNoise) and self.noise.output == "prelog":
            y = -torch.log(y.clamp_min(self.noise.min_count) / self.noise.i0) \
                / self.noise.attenuation_scale
        return self.op.fbp(y, self.filter_type, self.frequency_scaling) \
            if self.backprojection == "fbp" else self.op.adjoint(y)

    def settings(self) -> dict:
        return {"backprojection": self.backprojection, "filter_type": self.filter_type,
                "frequency_scaling": self.frequency_scaling, "scale": self.scale}
