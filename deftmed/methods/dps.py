"""Diffusion Posterior Sampling (Chung et al., ICLR 2023), implemented from the paper's maths.

At every timestep ``t`` (descending; ``t'`` the next one) with ``z_t`` requiring a gradient::

    e      = eps_theta(z_t, t)                                  (autograd through the prior)
    z0hat  = (z_t - sqrt(1 - abar_t) e) / sqrt(abar_t)          (Tweedie, diffusion space)
    z'     = sqrt(abar_t') z0hat + sqrt(1 - abar_t' - s_t^2) e + s_t n,   n ~ N(0, I)
    s_t    = eta * sqrt((1 - abar_t') / (1 - abar_t)) * sqrt(1 - abar_t / abar_t')
    r      = W^(1/2) (y - A to_image(z0hat))                     (per batch item)
    z_t'   = z' - (zeta / ||A||) * grad_{z_t} ||r||_2

``eta = 1`` with all ``T`` steps is the paper's DDPM ancestral sampler (``s_t`` is then the
DDPM posterior std); ``eta = 0`` is deterministic DDIM. The paper writes the correction as
``zeta_i grad ||y - A x0hat||^2`` with ``zeta_i = zeta' / ||y - A x0hat||``, which equals
``2 zeta' grad ||y - A x0hat||``: the gradient of the norm, not its square. We divide by the
operator norm so that ``zeta`` does not depend on the units of ``A`` (mm for CT):
``zeta = 2 zeta' ||A||`` in the paper's notation.

``W`` holds relative bin weights (:func:`~deftmed.methods.tv.relative_weights`): ones for
Gaussian noise (the paper's unweighted norm), inverse post-log variances over their mean for
Poisson noise (pre-log counts are log-transformed first). The result is the final Tweedie
estimate (with its guidance correction) mapped to the image range, unclamped. Each step costs one forward and one backward
pass through the prior.
"""

from __future__ import annotations

import math

import torch

from deftmed.diffusion.ddim import ddim_timesteps, initial_noise
from deftmed.errors import ConfigError
from deftmed.methods.base import Reconstruction, Reconstructor, operator_scale
from deftmed.methods.tv import linearised_data, relative_weights


class DPSReconstructor(Reconstructor):
    """DPS with ``steps`` sampling steps (paper: 1000, ancestral, ``eta = 1``).

    Parameters
    ----------
    prior : the frozen :class:`~deftmed.diffusion.prior.DiffusionPrior`.
    steps : number of timesteps (``spacing`` picks them).
    zeta : guidance step, dimensionless (see the module notes).
    eta : DDIM stochasticity; 1 = DDPM-like, 0 = deterministic.
    """

    name = "dps"

    def __init__(self, prior, steps: int = 1000, zeta: float = 1.0, eta: float = 1.0,
                 spacing: str = "trailing"):
        if not (isinstance(zeta, (int, float)) and math.isfinite(zeta) and zeta >= 0):
            raise ConfigError(f"dps: 'zeta' must be a non-negative number, got {zeta!r}")
        if not (isinstance(eta, (int, float)) and 0 <= eta <= 1):
            raise ConfigError(f"dps: 'eta' must be in [0, 1], got {eta!r}")
        self.prior = prior
        self.steps, self.zeta, self.eta, self.spacing = int(steps), float(zeta), float(eta), spacing
        self.timesteps = ddim_timesteps(prior.num_timesteps, self.steps, spacing)

    def settings(self) -> dict:
        return {"steps": self.steps, "zeta": self.zeta, "eta": self.eta, "spacing": self.spacing}

    def _reconstruct(self, y, operator, noise, generator) -> Reconstruction:
        prior = self.prior
        device = next(prior.parameters()).device
        y_lin, w = linearised_data(y, noise)
        sqrt_w = relative_weights(w, y_lin).sqrt()
        shape = (y.shape[0], prior.spec.unet.in_channels, prior.spec.image_size,
                 prior.spec.image_size)
        step_size = self.zeta / operator_scale(operator, shape[1:])
        z = initial_noise(shape, generator, device)
        abar = prior.alphas_cumprod
        ts = self.timesteps
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            a_t = abar[t]
            a_prev = abar[t_prev] if t_prev >= 0 else torch.ones((), device=device)
            z = z.detach().requires_grad_(True)
            with torch.enable_grad():
                e = prior.eps(z, t)
                z0 = (z - (1 - a_t).sqrt() * e) / a_t.sqrt()
                r = sqrt_w * (y_lin - operator(prior.to_image(z0).to(y.device)))
                loss = r.reshape(r.shape[0], -1).norm(dim=1).sum()
                (grad,) = torch.autograd.grad(loss, z)
            with torch.no_grad():
                s = self.eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
                z = a_prev.sqrt() * z0 + (1 - a_prev - s ** 2).clamp_min(0).sqrt() * e
                if s > 0 and t_prev >= 0:
                    z = z + s * initial_noise(shape, generator, device)
                z = z - step_size * grad
        image = prior.to_image(z).to(y.device)  # last step: z0hat with its guidance correction
        return Reconstruction(image, nfe=len(ts),
                              info={"steps": len(ts), "prior_backward_passes": len(ts)})
