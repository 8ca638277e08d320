"""Decomposed Diffusion Sampling (Chung, Lee and Ye, ICLR 2024), implemented from the paper's
maths.

DDIM in which every Tweedie estimate is pulled towards the data by a few conjugate-gradient
(CG) steps before the update. At timestep ``t`` (``t'`` the next one)::

    e      = eps_theta(z_t, t)                                   (no gradient through the prior)
    x0hat  = to_image((z_t - sqrt(1 - abar_t) e) / sqrt(abar_t))
    x0'    = CG_K(x0hat):  K steps on (A^T W A + g I) x = A^T W y + g x0hat, started at x0hat,
             g = gamma * ||A||^2
    z_t'   = sqrt(abar_t') to_diffusion(x0') + sqrt(1 - abar_t' - s_t^2) e + s_t n
    s_t    = eta * sqrt((1 - abar_t') / (1 - abar_t)) * sqrt(1 - abar_t / abar_t')

As in the paper the noise direction is the network's ``e`` (not re-derived from ``x0'``): the
data step moves only the clean-image component. ``gamma`` is relative to ``||A||^2`` so it does
not depend on the units of ``A``; with few CG steps started at ``x0hat`` the Krylov truncation
itself regularises, and ``gamma = 0`` is allowed. ``W`` holds relative bin weights (ones for
Gaussian noise, the paper's unweighted least squares; normalised inverse post-log variances
for Poisson). The result is the last ``x0'`` in the image range, unclamped.
"""

from __future__ import annotations

import math

import torch

from deftmed.diffusion.ddim import ddim_timesteps, initial_noise
from deftmed.errors import ConfigError
from deftmed.methods.base import Reconstruction, Reconstructor, operator_scale, require_linear
from deftmed.methods.tv import linearised_data, relative_weights


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item inner product, shape (B, 1, 1, 1)."""
    return (a * b).reshape(a.shape[0], -1).sum(dim=1).view(-1, 1, 1, 1)


def batched_cg(apply, rhs: torch.Tensor, x: torch.Tensor, iterations: int) -> torch.Tensor:
    """``iterations`` conjugate-gradient steps on ``apply(x) = rhs`` (symmetric positive
    (semi)definite ``apply``), independently for every batch item, started at ``x``."""
    r = rhs - apply(x)
    p = r.clone()
    rr = _dot(r, r)
    for _ in range(int(iterations)):
        ap = apply(p)
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rr / pap.clamp_min(1e-30), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = _dot(r, r)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(1e-30), torch.zeros_like(rr))
        p = r + beta * p
        rr = rr_new
    return x


class DDSReconstructor(Reconstructor):
    """DDS with ``steps`` DDIM steps and ``cg_iters`` CG steps per DDIM step.

    Parameters
    ----------
    prior : the frozen diffusion prior.
    steps : DDIM steps (paper: 50 for CT).
    eta : DDIM stochasticity (paper: 0.85).
    cg_iters : CG steps per DDIM step (paper: 5).
    gamma : proximal weight, relative to ``||A||^2``.
    """

    name = "dds"

    def __init__(self, prior, steps: int = 50, eta: float = 0.85, cg_iters: int = 5,
                 gamma: float = 0.01, spacing: str = "trailing"):
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ConfigError(f"dds: 'gamma' must be a non-negative number, got {gamma!r}")
        if not (isinstance(eta, (int, float)) and 0 <= eta <= 1):
            raise ConfigError(f"dds: 'eta' must be in [0, 1], got {eta!r}")
        if int(cg_iters) < 0:
            raise ConfigError(f"dds: 'cg_iters' must be >= 0, got {cg_iters!r}")
        self.prior = prior
        self.steps, self.eta, self.cg_iters = int(steps), float(eta), int(cg_iters)
        self.gamma, self.spacing = float(gamma), spacing
        self.timesteps = ddim_timesteps(prior.num_timesteps, self.steps, spacing)

    def settings(self) -> dict:
        return {"steps": self.steps, "eta": self.eta, "cg_iters": self.cg_iters,
                "gamma": self.gamma, "spacing": self.spacing}

    @torch.no_grad()
    def _reconstruct(self, y, operator, noise, generator) -> Reconstruction:
        prior = self.prior
        device = next(prior.parameters()).device
        y_lin, w = linearised_data(y, noise)
        w = relative_weights(w, y_lin)
        require_linear(operator, "dds")
        x_shape = (prior.spec.unet.in_channels, prior.spec.image_size, prior.spec.image_size)
        g = self.gamma * operator_scale(operator, x_shape) ** 2
        aty = operator.adjoint(w * y_lin)

        def normal(x):
            return operator.adjoint(w * operator(x)) + g * x

        shape = (y.shape[0], prior.spec.unet.in_channels, prior.spec.image_size,
                 prior.spec.image_size)
        z = initial_noise(shape, generator, device)
        abar = prior.alphas_cumprod
        ts = self.timesteps
        x0 = None
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            a_t = abar[t]
            a_prev = abar[t_prev] if t_prev >= 0 else torch.ones((), device=device)
            e = prior.eps(z, t)
            x0hat = prior.to_image((z - (1 - a_t).sqrt() * e) / a_t.sqrt()).to(y.device)
            x0 = batched_cg(normal, aty + g * x0hat, x0hat, self.cg_iters)
            s = self.eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
            z = a_prev.sqrt() * prior.to_diffusion(x0).to(device) + \
                (1 - a_prev - s ** 2).clamp_min(0).sqrt() * e
            if s > 0 and t_prev >= 0:
                z = z + s * initial_noise(shape, generator, device)
        return Reconstruction(x0, nfe=len(ts), info={"steps": len(ts), "cg_iters": self.cg_iters})
