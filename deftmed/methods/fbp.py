"""Filtered back-projection: the classical baseline and the guidance back-projection of DEFT."""

from __future__ import annotations

from deftmed.methods.base import Reconstruction, Reconstructor


class FBPReconstructor(Reconstructor):
    """ODL's FBP with a choice of filter (Ram-Lak, Shepp-Logan, Cosine, Hamming, Hann) and
    relative frequency cut-off. Poisson pre-log counts are log-transformed first."""

    name = "fbp"

    def __init__(self, filter_type: str = "Hann", frequency_scaling: float = 1.0):
        self.filter_type = filter_type
        self.frequency_scaling = float(frequency_scaling)

    def settings(self) -> dict:
        return {"filter_type": self.filter_type, "frequency_scaling": self.frequency_scaling}

    def _reconstruct(self, y, operator, noise, generator) -> Reconstruction:
        from deftmed.physics.noise import PoissonNoise

        if isinstance(noise, PoissonNoise) and noise.output == "prelog":
            import torch
            y = -torch.log(y.clamp_min(noise.min_count) / noise.i0) / noise.attenuation_scale
        return Reconstruction(operator.fbp(y, self.filter_type, self.frequency_scaling))
