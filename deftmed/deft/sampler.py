"""DEFT conditional sampling (paper Algorithm 6): DDIM with the h-corrected epsilon.

Per step: one prior forward, one h forward, one ``A`` and one back-projection (FBP); no
gradient through anything. With ``eta > 0`` repeated runs are posterior samples: their mean is
the reconstruction and their pixel-wise standard deviation an uncertainty map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deftmed.deft.guidance import Guidance
from deftmed.deft.hnet import HTransform
from deftmed.diffusion.ddim import ddim_loop, ddim_timesteps, initial_noise


def h_corrected_eps(prior, hnet: HTransform, guidance: Guidance, y: torch.Tensor,
                    aty: torch.Tensor | None = None):
    """The ``eps_fn`` of Algorithm 6 for a batch of measurements ``y``."""
    need_aty = "aty" in hnet.cfg.inputs
    if need_aty and aty is None:
        aty = guidance.measurement_image(y)
    need_g = hnet.cfg.guidance_path or "g" in hnet.cfg.inputs
    cond = guidance.condition(y) if hnet.cfg.cond_channels else None

    def eps_fn(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e_u = prior.eps(z_t, t)
        x0 = prior.tweedie(z_t, t, e_u)
        g = guidance(prior.to_image(x0), y) if need_g else None
        return e_u + hnet(z_t, t, x0, g, aty, prior.alphas_cumprod[t], cond)

    return eps_fn


@torch.no_grad()
def deft_sample(prior, hnet: HTransform, guidance: Guidance, y: torch.Tensor, steps: int = 100,
                eta: float = 0.0, spacing: str = "trailing",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One posterior sample per measurement in ``y`` -> images (B,C,H,W) in the [0,1] model
    range (not clamped)."""
    size = prior.spec.image_size
    z = initial_noise((y.shape[0], prior.spec.unet.in_channels, size, size), generator, y.device)
    eps_fn = h_corrected_eps(prior, hnet, guidance, y)
    step = None
    for step in ddim_loop(prior, z, ddim_timesteps(prior.num_timesteps, steps, spacing), eps_fn,
                          eta, generator):
        pass
    return prior.to_image(step.x0)


@dataclass
class PosteriorSummary:
    mean: torch.Tensor
    std: torch.Tensor | None
    samples: torch.Tensor
    nfe: int


@torch.no_grad()
def deft_posterior(prior, hnet, guidance, y, n_samples: int = 1, steps: int = 100,
                   eta: float = 0.0, spacing: str = "trailing",
                   generator: torch.Generator | None = None) -> PosteriorSummary:
    """``n_samples`` samples per measurement; mean and pixel-wise std (when more than one).

    The samples of all measurements are drawn in one batch (B * n_samples).
    """
    yy = y.repeat_interleave(n_samples, dim=0)
    if n_samples > 1 and hasattr(guidance.op, "repeat_interleave"):
        guidance = guidance.for_operator(guidance.op.repeat_interleave(n_samples))
    x = deft_sample(prior, hnet, guidance, yy, steps, eta, spacing, generator)
    x = x.view(y.shape[0], n_samples, *x.shape[1:])
    std = x.std(dim=1, unbiased=True) if n_samples > 1 else None
    return PosteriorSummary(x.mean(dim=1), std, x, nfe=steps * 2 * n_samples)
