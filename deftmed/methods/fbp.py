"""Filtered back-projection: the classical baseline and the guidance back-projection of DEFT."""

from __future__ import annotations

from deftmed.errors import ConfigError
from deftmed.methods.base import Reconstruction, Reconstructor, initial_image, is_ct


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

        if not is_ct(operator):
            raise ConfigError("fbp needs a CT ray transform; for image operators use 'direct'")
        if isinstance(noise, PoissonNoise) and noise.output == "prelog":
            import torch
            y = -torch.log(y.clamp_min(noise.min_count) / noise.i0) / noise.attenuation_scale
        return Reconstruction(operator.fbp(y, self.filter_type, self.frequency_scaling))


class DirectReconstructor(Reconstructor):
    """The direct inversion every task has, without a prior: the Hann FBP for CT, the image
    operator's measurement image otherwise (bicubic / nearest upsampling, the observed pixels
    with mid-grey holes, HIO/ER for phase retrieval, the inverted camera response)."""

    name = "direct"

    def __init__(self):  # no hyper-parameters
        pass

    def _reconstruct(self, y, operator, noise, generator) -> Reconstruction:
        from deftmed.methods.tv import linearised_data

        return Reconstruction(initial_image(operator, linearised_data(y, noise)[0]))
