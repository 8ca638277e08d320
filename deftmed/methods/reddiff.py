"""RED-diff (Mardani et al., ICLR 2024, "A variational perspective on solving inverse problems
with diffusion models"), implemented from the paper's maths.

The variational mean ``mu`` (diffusion space, ``z = 2x - 1``) is optimised with Adam while
``t`` sweeps the timesteps from ``T - 1`` down to 0 (``steps`` values, evenly spaced)::

    eps ~ N(0, I);   z_t = sqrt(abar_t) mu + sqrt(1 - abar_t) eps
    e   = eps_theta(z_t, t)                                     (no gradient through the prior)
    loss(mu) = -log p(y | to_image(mu)) / (||A||^2 w)  +  lam_t <sg(e - eps), mu>
    lam_t = lam * sqrt(1 - abar_t) / sqrt(abar_t)               (the paper's inverse-SNR weighting)
    mu <- Adam(mu, grad loss)

``log p(y | x)`` is the noise model's own log-likelihood (Gaussian: ``-||A x - y||^2 /
(2 sigma^2)``; Poisson: the count log-likelihood). The normalisation by ``||A||^2`` and by the
mean inverse noise variance ``w`` (``1 / sigma^2`` for Gaussian noise) gives the data term a
Hessian of norm at most 1 in ``x``, whatever the units of ``A`` and the noise level, so ``lam``
is dimensionless and transfers between geometries. With the SNR weighting the regulariser's
gradient ``lam_t (e - eps)`` is about ``lam (mu - D_t(z_t))``, a RED-style pull towards the
prior's denoiser ``D_t`` (Tweedie) at the current noise level; the prior is only ever evaluated
forward (``nfe = steps``). ``mu`` starts at the FBP (Hann filter). The result is
``to_image(mu)``, unclamped.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from deftmed.errors import ConfigError
from deftmed.methods.base import Reconstruction, Reconstructor, initial_image, operator_scale
from deftmed.methods.tv import linearised_data


class REDDiffReconstructor(Reconstructor):
    """RED-diff with ``steps`` Adam iterations over descending timesteps.

    Parameters
    ----------
    prior : the frozen diffusion prior.
    steps : optimisation steps (one prior evaluation each); paper: 1000.
    lr : Adam learning rate on ``mu`` (diffusion space).
    lam : weight of the diffusion regulariser (before the SNR weighting).
    betas : Adam's betas (paper: (0.9, 0.99)).
    """

    name = "reddiff"

    def __init__(self, prior, steps: int = 1000, lr: float = 0.1, lam: float = 0.25,
                 betas: tuple[float, float] = (0.9, 0.99)):
        for key, value in (("lr", lr), ("lam", lam)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"reddiff: {key!r} must be a non-negative number, got {value!r}")
        if lr <= 0:
            raise ConfigError(f"reddiff: 'lr' must be positive, got {lr!r}")
        if not 1 <= int(steps) <= prior.num_timesteps:
            raise ConfigError(f"reddiff: 'steps' must be in [1, {prior.num_timesteps}], "
                              f"got {steps!r}")
        self.prior = prior
        self.steps, self.lr, self.lam = int(steps), float(lr), float(lam)
        self.betas = (float(betas[0]), float(betas[1]))
        T = prior.num_timesteps
        self.timesteps = [int(t) for t in np.round(np.linspace(T - 1, 0, self.steps))]

    def settings(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "lam": self.lam, "betas": list(self.betas)}

    def _reconstruct(self, y, operator, noise, generator) -> Reconstruction:
        prior = self.prior
        device = next(prior.parameters()).device
        y_lin, w = linearised_data(y, noise)
        shape = (prior.spec.unet.in_channels, prior.spec.image_size, prior.spec.image_size)
        scale = operator_scale(operator, shape) ** 2 \
            * w.expand_as(y_lin).reshape(y.shape[0], -1).mean(dim=1)
        x_init = initial_image(operator, y_lin)
        mu = prior.to_diffusion(x_init).to(device).detach().requires_grad_(True)
        opt = torch.optim.Adam([mu], lr=self.lr, betas=self.betas)
        abar = prior.alphas_cumprod
        for t in self.timesteps:
            a = abar[t]
            eps = torch.randn(mu.shape, generator=generator).to(device)
            with torch.no_grad():
                z_t = a.sqrt() * mu + (1 - a).sqrt() * eps
                e = prior.eps(z_t, t)
                lam_t = self.lam * ((1 - a) / a).sqrt()
            with torch.enable_grad():
                data = -noise.log_likelihood(prior.to_image(mu).to(y.device), y, operator) / scale
                reg = lam_t * ((e - eps) * mu).reshape(mu.shape[0], -1).sum(dim=1)
                loss = (data.to(device) + reg).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        image = prior.to_image(mu.detach()).to(y.device)
        return Reconstruction(image, nfe=self.steps, info={"steps": self.steps})
