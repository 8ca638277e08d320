"""The guidance input of the h-network: the likelihood gradient at the Tweedie estimate.

``g = kappa * B r(A x0hat, y)`` with ``B`` the filtered back-projection (default, as the DEFT
paper does for CT: it conditions far better) or the exact adjoint ``A^T``.

- With the adjoint, ``r`` is the noise model's score in sinogram space,
  ``d log p(y | A x) / d(A x)``, divided by the measurement's mean statistical weight, so ``g``
  is parallel to the true gradient ``grad_x log p(y | x)``. Gaussian: ``r = y - A x``. Poisson
  (counts ``c``, ``lam = i0 exp(-mu A x)``): ``r = (lam - c) / (mu mean(lam))``, to first order
  the statistically weighted residual ``(lam / mean(lam)) (y - A x)``.
- With the FBP, ``r = y_lin - A x`` with ``y_lin`` the measurement as line integrals (post-log
  for Poisson; ``y`` itself for Gaussian, where this is again the exact normalised score).
  The FBP inverts ``A`` on its range only for an unweighted residual: with Poisson weights that
  span orders of magnitude (photon-starved rays), ``x0hat + FBP(weighted residual)`` was barely
  better than ``x0hat`` (+0.3 dB against +5 dB unweighted in our fan-beam runs).

Why normalised at all: the raw gradient carries a per-measurement factor (``1/sigma^2``, which
for relative Gaussian noise depends on the scan's brightness; the photon count for Poisson). A
learned, fixed step on the raw gradient is right only for scans like the training ones and
diverged (values of 1e14) on other anatomy in our tests; the normalised ``r`` is an image
correction in model units for every scan.

``kappa`` is a fixed scale chosen once when fine-tuning starts (the least-squares step, see
``deft.finetune.calibrate_guidance_scale``) and stored in the checkpoint.

Image operators (natural-image tasks, Gaussian noise): ``r = y - A x0hat`` and ``B`` is the
operator's guidance back-projection (``backprojection="fbp"``, the default: the mask for
inpainting, the pseudo-inverse for super-resolution, the adjoint for blur, the Jacobian
transpose at ``x0hat`` for the non-linear operators) or its exact Jacobian transpose
(``"adjoint"``). ``condition(y)`` gives the h-network's extra input channels, once per
measurement: the mask for inpainting, the HIO/ER estimate for phase retrieval.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from deftmed.errors import ConfigError
from deftmed.physics import is_ct
from deftmed.physics.noise import GaussianNoise, NoiseModel, PoissonNoise

BACKPROJECTIONS = ("fbp", "adjoint")


def sinogram_score(noise: NoiseModel, ax: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``d log p(y | A x) / d(A x)`` divided by the mean statistical weight per measurement."""
    if isinstance(noise, GaussianNoise):
        return y - ax
    if isinstance(noise, PoissonNoise):
        # float64: lam - c is a small difference of large counts
        lam = noise.expected_counts(ax.double())
        counts = noise.counts_from_measurement(y.double())
        mean_lam = lam.flatten(1).mean(dim=1).clamp_min(noise.min_count).view(-1, 1, 1, 1)
        return ((lam - counts) / (noise.attenuation_scale * mean_lam)).to(ax.dtype)
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
        if is_ct(self.op) and self.backprojection == "fbp":
            from deftmed.physics.raytransform import check_fbp_filter
            check_fbp_filter(self.filter_type, self.frequency_scaling, ConfigError, "guidance: ")

    def back(self, sino: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        if not is_ct(self.op):
            if self.backprojection == "fbp":
                return self.op.guidance_backprojection(sino, x)
            return self.op.adjoint(sino) if self.op.linear else self.op.vjp(x, sino)
        if self.backprojection == "fbp":
            return self.op.fbp(sino, self.filter_type, self.frequency_scaling)
        return self.op.adjoint(sino)

    def for_operator(self, op) -> "Guidance":
        """The same guidance for another operator of the family (e.g. a new inpainting mask)."""
        return self if op is self.op else replace(self, op=op)

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``g`` at image-space estimates ``x0`` (B,C,H,W) for measurements ``y``."""
        ax = self.op(x0)
        if not is_ct(self.op):
            return self.scale * self.back(sinogram_score(self.noise, ax, y), x0)
        if self.backprojection == "fbp":
            return self.scale * self.back(self.line_integrals(y) - ax)
        return self.scale * self.op.adjoint(sinogram_score(self.noise, ax, y))

    @torch.no_grad()
    def condition(self, y: torch.Tensor) -> torch.Tensor | None:
        """Extra h-network input channels for measurements ``y`` (None for CT and most tasks)."""
        fn = getattr(self.op, "conditioning", None)
        return fn(y) if fn is not None else None

    def line_integrals(self, y: torch.Tensor) -> torch.Tensor:
        """The measurement as line integrals in model units (pre-log counts are log-converted)."""
        if isinstance(self.noise, PoissonNoise) and self.noise.output == "prelog":
            return -torch.log(y.clamp_min(self.noise.min_count) / self.noise.i0) \
                / self.noise.attenuation_scale
        return y

    @torch.no_grad()
    def measurement_image(self, y: torch.Tensor) -> torch.Tensor:
        """``B y``: the measurement mapped to the image (the ``A*y`` input of the ablations)."""
        if not is_ct(self.op):
            return self.op.measurement_image(y)
        return self.back(self.line_integrals(y))

    def settings(self) -> dict:
        return {"backprojection": self.backprojection, "filter_type": self.filter_type,
                "frequency_scaling": self.frequency_scaling, "scale": self.scale}


def condition_channels(op, image_channels: int) -> int:
    """How many conditioning channels :meth:`Guidance.condition` gives for ``op``'s task."""
    fn = getattr(op, "conditioning_channels", None)
    return int(fn(image_channels)) if fn is not None else 0
