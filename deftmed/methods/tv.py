"""Total-variation regularised weighted least squares, solved by Chambolle–Pock (PDHG).

Problem (isotropic TV, optional non-negativity)::

    min_x  1/2 ||A x - y||_W^2 + lam * TV(x) + i_{x >= 0}(x),
    TV(x) = sum_ij sqrt((D_1 x)_ij^2 + (D_2 x)_ij^2)      (forward differences, Neumann)

``W`` is the inverse noise variance per bin (see :func:`linearised_data`): ``1 / sigma^2`` for
Gaussian noise, the post-log Poisson weights ``counts * s^2`` for photon noise (pre-log counts
are log-transformed first). So ``lam`` weighs TV against the noise-normalised misfit.

Chambolle–Pock with ``K = [A; c D]`` and ``F(Ky) = f(Ax) + (lam / c) ||c D x||_{2,1}``, where
``c = ||A|| / sqrt(8)`` balances the two blocks (``||D||^2 <= 8``) so that
``L = ||K|| <= sqrt(||A||^2 + c^2 ||D||^2) = sqrt(2) ||A||``. With ``tau = sigma = 0.99 / L``::

    p   <- (W * (p + sigma (A xb) - sigma y)) / (W + sigma)      prox of sigma f*, f = 1/2||.-y||_W^2
    q   <- proj_{|q_ij|_2 <= lam / c}(q + sigma c D xb)           prox of the scaled TV conjugate
    x'  <- max(x - tau (A^T p + c D^T q), 0)                      prox of the constraint
    xb  <- 2 x' - x

The start is the FBP (Hann filter), clamped at zero when ``nonneg``.
"""

from __future__ import annotations

import math

import torch

from deftmed.errors import ConfigError
from deftmed.methods.base import (Reconstruction, Reconstructor, initial_image, operator_scale,
                                  require_linear)


def linearised_data(y: torch.Tensor, noise) -> tuple[torch.Tensor, torch.Tensor]:
    """Line integrals and per-bin inverse variances ``(y_lin, W)`` for a weighted least-squares
    data term ``1/2 ||A x - y_lin||_W^2``.

    Gaussian: ``y`` itself and ``W = 1 / sigma^2`` (broadcast, shape (B,1,1,1)). Poisson:
    pre-log counts are log-transformed (clamped at ``min_count``); ``W = max(counts, min_count)
    * s^2``, the delta-method inverse variance of post-log data (``noise.data_misfit_weight``).
    """
    from deftmed.physics.noise import GaussianNoise, PoissonNoise

    if isinstance(noise, GaussianNoise):
        return y, 1.0 / noise.effective_sigma(y) ** 2
    if isinstance(noise, PoissonNoise):
        if noise.output == "prelog":
            y = -torch.log(y.clamp_min(noise.min_count) / noise.i0) / noise.attenuation_scale
            post = PoissonNoise(noise.i0, noise.attenuation_scale, noise.min_count, "postlog")
            return y, post.data_misfit_weight(y)
        return y, noise.data_misfit_weight(y)
    return y, noise.data_misfit_weight(y)


def relative_weights(w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``W / mean(W)`` per batch item: ones for Gaussian noise (the unweighted norm of the DPS
    and DDS papers), relative reliabilities of the bins for Poisson noise."""
    w = w.expand_as(y)
    return w / w.reshape(w.shape[0], -1).mean(dim=1).view(-1, 1, 1, 1)


def grad2d(x: torch.Tensor) -> torch.Tensor:
    """Forward differences with Neumann boundary: (B,1,H,W) -> (B,2,H,W)."""
    g = torch.zeros(x.shape[0], 2, *x.shape[2:], dtype=x.dtype, device=x.device)
    g[:, 0, :-1, :] = x[:, 0, 1:, :] - x[:, 0, :-1, :]
    g[:, 1, :, :-1] = x[:, 0, :, 1:] - x[:, 0, :, :-1]
    return g


def div2d(g: torch.Tensor) -> torch.Tensor:
    """Negative adjoint of :func:`grad2d` (``<grad x, g> = -<x, div g>``): (B,2,H,W) -> (B,1,H,W)."""
    d = torch.zeros(g.shape[0], 1, *g.shape[2:], dtype=g.dtype, device=g.device)
    d[:, 0, :-1, :] += g[:, 0, :-1, :]
    d[:, 0, 1:, :] -= g[:, 0, :-1, :]
    d[:, 0, :, :-1] += g[:, 1, :, :-1]
    d[:, 0, :, 1:] -= g[:, 1, :, :-1]
    return d


def tv_norm(x: torch.Tensor) -> torch.Tensor:
    """Isotropic TV per batch item, shape (B,)."""
    g = grad2d(x)
    return g.pow(2).sum(dim=1).sqrt().reshape(x.shape[0], -1).sum(dim=1)


class TVReconstructor(Reconstructor):
    """TV-regularised weighted least squares by PDHG (module docstring has the updates).

    Parameters
    ----------
    lam : TV weight (against the noise-normalised misfit ``1/2 ||A x - y||^2 / sigma^2``).
    iterations : maximum number of PDHG iterations.
    nonneg : constrain ``x >= 0``.
    tol : stop when ``||x_k+1 - x_k|| / ||x_k|| < tol`` for every batch item (0: never).
    """

    name = "tv"

    def __init__(self, lam: float = 3.0, iterations: int = 300, nonneg: bool = True,
                 tol: float = 1e-5):
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
            raise ConfigError(f"tv: 'lam' must be a non-negative number, got {lam!r}")
        if int(iterations) < 1:
            raise ConfigError(f"tv: 'iterations' must be >= 1, got {iterations!r}")
        if not (isinstance(tol, (int, float)) and tol >= 0):
            raise ConfigError(f"tv: 'tol' must be >= 0, got {tol!r}")
        self.lam, self.iterations = float(lam), int(iterations)
        self.nonneg, self.tol = bool(nonneg), float(tol)

    def settings(self) -> dict:
        return {"lam": self.lam, "iterations": self.iterations, "nonneg": self.nonneg,
                "tol": self.tol}

    @torch.no_grad()
    def _reconstruct(self, y, operator, noise, generator) -> Reconstruction:
        y, w = linearised_data(y, noise)
        w = w.expand_as(y)
        require_linear(operator, "tv")
        x = initial_image(operator, y)
        norm = operator_scale(operator, x.shape[1:])
        if self.nonneg:
            x = x.clamp_min(0)
        c = norm / math.sqrt(8.0)
        step = 0.99 / (math.sqrt(2.0) * norm)
        bound = self.lam / c
        p = torch.zeros_like(y)
        q = torch.zeros(x.shape[0], 2, *x.shape[2:], dtype=x.dtype, device=x.device)
        xb = x.clone()
        n = 0
        for n in range(1, self.iterations + 1):
            p = w * (p + step * (operator(xb) - y)) / (w + step)
            q = q + (step * c) * grad2d(xb)
            q = q / (q.pow(2).sum(dim=1, keepdim=True).sqrt() / max(bound, 1e-30)).clamp_min(1.0)
            x_new = x - step * (operator.adjoint(p) - c * div2d(q))
            if self.nonneg:
                x_new = x_new.clamp_min(0)
            xb = 2 * x_new - x
            change = (x_new - x).reshape(x.shape[0], -1).norm(dim=1) / \
                x.reshape(x.shape[0], -1).norm(dim=1).clamp_min(1e-12)
            x = x_new
            if self.tol > 0 and bool((change < self.tol).all()):
                break
        return Reconstruction(x, info={"iterations": n})
