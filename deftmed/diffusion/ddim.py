"""DDIM sampling (Song et al. 2021) with eta and a choice of timestep spacing.

The loop is written once and shared: unconditional sampling, DEFT (which corrects epsilon with
its h-transform) and DDS (which refines the Tweedie estimate) all plug into ``ddim_loop`` through
an ``eps_fn`` and an optional ``x0_fn``. Each step yields the Tweedie estimate, so callers can
inspect or reuse it. No clamping anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from deftmed.errors import ConfigError

SPACINGS = ("leading", "linspace", "trailing")


def ddim_timesteps(num_train_timesteps: int, steps: int, spacing: str = "trailing") -> list[int]:
    """Descending 0-based timesteps for ``steps`` DDIM steps.

    ``leading`` (DDIM paper): 0, k, 2k, ...; ``trailing``: T-1, T-1-k, ... (reaches the last
    timestep, recommended by Lin et al. 2024); ``linspace``: evenly spaced from T-1 to 0.
    """
    T = num_train_timesteps
    if not 1 <= steps <= T:
        raise ConfigError(f"DDIM steps must be in [1, {T}], got {steps}")
    if spacing == "leading":
        ts = np.arange(0, steps) * (T // steps)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(int) - 1
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, steps)).astype(int)
    else:
        raise ConfigError(f"unknown timestep spacing {spacing!r}; use one of {SPACINGS}")
    return sorted({int(t) for t in ts}, reverse=True)


@dataclass
class DDIMStep:
    """What one step produced: the timestep, the state before the step, and the estimates."""

    index: int
    t: int
    z_t: torch.Tensor
    eps: torch.Tensor
    x0: torch.Tensor
    z_prev: torch.Tensor


EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_loop(prior, z_T: torch.Tensor, timesteps: list[int], eps_fn: EpsFn | None = None,
              eta: float = 0.0, generator: torch.Generator | None = None,
              x0_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
              ) -> Iterator[DDIMStep]:
    """Run DDIM from ``z_T`` over descending ``timesteps``, yielding every step.

    ``eps_fn(z_t, t_batch)`` returns the epsilon to use (default: the prior's). ``x0_fn(z_t,
    t_batch, x0)`` may replace the Tweedie estimate before the update (as DDS does); the
    epsilon is then recomputed consistently from it. The final ``x0`` is the sample.
    """
    if eta < 0:
        raise ConfigError(f"eta must be >= 0, got {eta}")
    eps_fn = eps_fn or prior.eps
    abar = prior.alphas_cumprod
    z = z_T
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        tb = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
        a_t = abar[t].to(z.dtype)
        a_prev = abar[t_prev].to(z.dtype) if t_prev >= 0 else torch.ones((), dtype=z.dtype,
                                                                         device=z.device)
        eps = eps_fn(z, tb)
        x0 = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if x0_fn is not None:
            x0 = x0_fn(z, tb, x0)
            eps = (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        dir_coef = (1 - a_prev - sigma ** 2).clamp_min(0).sqrt()
        z_prev = a_prev.sqrt() * x0 + dir_coef * eps
        if eta > 0 and t_prev >= 0:
            z_prev = z_prev + sigma * initial_noise(z.shape, generator, z.device, z.dtype)
        yield DDIMStep(i, t, z, eps, x0, z_prev)
        z = z_prev


def initial_noise(shape, generator: torch.Generator | None, device, dtype=torch.float32):
    """Standard normal noise drawn with a CPU generator, then moved: the same seed gives the
    same samples on every device."""
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


@torch.no_grad()
def sample_unconditional(prior, n: int, steps: int = 100, eta: float = 0.0,
                         spacing: str = "trailing", generator: torch.Generator | None = None,
                         batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """``n`` unconditional samples in the image (model) range, (n, C, H, W)."""
    from tqdm.auto import tqdm

    device = next(prior.parameters()).device
    size = prior.spec.image_size
    ts = ddim_timesteps(prior.num_timesteps, steps, spacing)
    out = []
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="sampling"):
        b = min(batch_size, n - start)
        z = initial_noise((b, prior.spec.unet.in_channels, size, size), generator, device)
        step = None
        for step in ddim_loop(prior, z, ts, eta=eta, generator=generator):
            pass
        out.append(prior.to_image(step.x0).cpu())
    return torch.cat(out)
