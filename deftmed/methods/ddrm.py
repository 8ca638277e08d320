"""Denoising Diffusion Restoration Models (Kawar, Elad, Ermon and Song, NeurIPS 2022),
implemented from the paper's maths for operators with a cheap SVD (inpainting, super-resolution).

With ``A = U diag(s) V^T`` and Gaussian noise ``sigma_y``, DDRM samples in the spectral domain
of ``V``. In the variance-exploding view of our VP prior (``x_t = z_t / sqrt(abar_t)``,
``sigma_t = sqrt((1 - abar_t) / abar_t)``) one step from ``t`` to the next ``t'`` is, per
spectral coefficient ``i`` (bars: coefficients, ``ybar = U^T y / s`` where ``s > 0``)::

    xbar0  = V^T x0hat(z_t)                                         (Tweedie, no gradient)
    s_i = 0                 : xbar0 + sqrt(1 - eta^2) sigma_t' (xbar_t - xbar0) / sigma_t + eta sigma_t' n
    sigma_t' <  sigma_y / s_i: xbar0 + sqrt(1 - eta^2) sigma_t' (ybar - xbar0) s_i / sigma_y + eta sigma_t' n
    sigma_t' >= sigma_y / s_i: (1 - eta_b) xbar0 + eta_b ybar + sqrt(sigma_t'^2 - eta_b^2 sigma_y^2 / s_i^2) n

then ``z_t' = sqrt(abar_t') V xbar``; the last step (``sigma = 0``) gives the reconstruction.
The data live in the model range ``x = a z + b`` (``a, b`` = the prior's data scale and shift),
so the measurement is first moved to diffusion space: ``y_z = (y - A(b 1)) / a``,
``sigma_z = sigma_y / a``. Defaults: the paper's 20 steps, ``eta = 0.85``, ``eta_b = 1``, and
its timesteps ``0, T/steps, 2T/steps, ...`` ("leading" spacing: the last denoising step is at
``t = 0``, so observed coefficients end up at the data).
One prior evaluation per step and no gradients.
"""

from __future__ import annotations

import torch

from deftmed.diffusion.ddim import ddim_timesteps, initial_noise
from deftmed.errors import ConfigError
from deftmed.methods.base import Reconstruction, Reconstructor


class DDRMReconstructor(Reconstructor):
    name = "ddrm"

    def __init__(self, prior, steps: int = 20, eta: float = 0.85, eta_b: float = 1.0,
                 spacing: str = "leading"):
        if not 0 <= float(eta) <= 1 or not 0 <= float(eta_b) <= 1:
            raise ConfigError(f"ddrm: eta and eta_b must lie in [0, 1], got {eta}, {eta_b}")
        self.prior = prior
        self.steps, self.eta, self.eta_b, self.spacing = int(steps), float(eta), float(eta_b), spacing
        self.timesteps = ddim_timesteps(prior.num_timesteps, self.steps, spacing)

    def settings(self) -> dict:
        return {"steps": self.steps, "eta": self.eta, "eta_b": self.eta_b, "spacing": self.spacing}

    @torch.no_grad()
    def _reconstruct(self, y, operator, noise, generator) -> Reconstruction:
        from deftmed.physics.noise import GaussianNoise

        prior = self.prior
        c, n = prior.spec.unet.in_channels, prior.spec.image_size
        shape = (y.shape[0], c, n, n)
        svd = operator.svd(shape[1:]) if hasattr(operator, "svd") else None
        if svd is None:
            raise ConfigError(f"ddrm needs an operator with an SVD (inpainting, "
                              f"super_resolution); {type(operator).__name__} has none")
        if not isinstance(noise, GaussianNoise):
            raise ConfigError("ddrm is defined for Gaussian measurement noise only")
        device = next(prior.parameters()).device
        a, b = prior.spec.data_scale, prior.spec.data_shift
        sigma = noise.effective_sigma(y).to(device) / a
        y_z = (y.to(device) - operator(torch.full(shape, b, device=device, dtype=y.dtype))) / a
        s = svd.singular_values().to(device).expand(shape)
        obs = s > 0
        s_safe = torch.where(obs, s, torch.ones_like(s))
        ybar = torch.where(obs, svd.Ut(y_z) / s_safe, torch.zeros_like(s))
        noise_level = torch.where(obs, sigma / s_safe, torch.full_like(s, float("inf")))
        abar = prior.alphas_cumprod
        eta, eta_b = self.eta, self.eta_b
        z = initial_noise(shape, generator, device)
        ts = self.timesteps
        x0bar = None
        for i, t in enumerate(ts):
            a_t = abar[t]
            a_next = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=device)
            sig_t, sig_next = ((1 - a_t) / a_t).sqrt(), ((1 - a_next) / a_next).sqrt()
            x0bar = svd.Vt((z - (1 - a_t).sqrt() * prior.eps(z, t)) / a_t.sqrt())
            xtbar = svd.Vt(z / a_t.sqrt())
            nz = initial_noise(shape, generator, device)
            keep = (1 - eta ** 2) ** 0.5 * sig_next
            missing = x0bar + keep * (xtbar - x0bar) / sig_t + eta * sig_next * nz
            weak = x0bar + keep * (ybar - x0bar) / noise_level.clamp_min(1e-12) \
                + eta * sig_next * nz
            strong = (1 - eta_b) * x0bar + eta_b * ybar + \
                (sig_next ** 2 - eta_b ** 2 * noise_level.clamp(max=1e6) ** 2).clamp_min(0).sqrt() * nz
            xbar = torch.where(~obs, missing, torch.where(sig_next < noise_level, weak, strong))
            z = a_next.sqrt() * svd.V(xbar)
        return Reconstruction(prior.to_image(z).to(y.device), nfe=len(ts),
                              info={"steps": len(ts)})
