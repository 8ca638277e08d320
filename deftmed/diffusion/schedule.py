"""The variance-preserving (DDPM) noise schedule.

``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with ``abar_t = prod_{s<=t} (1 - beta_s)`` and
betas linear from ``beta_start`` to ``beta_end`` over ``num_train_timesteps`` steps (the DEFT
paper's schedule: 1e-4 .. 0.02, T = 1000). Timesteps are 0-based indices ``0 .. T-1``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from deftmed.errors import ConfigError


@dataclass(frozen=True)
class NoiseSchedule:
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    kind: str = "linear"

    def __post_init__(self):
        if self.kind not in ("linear", "scaled_linear"):
            raise ConfigError(f"unknown beta schedule {self.kind!r}; use 'linear' or 'scaled_linear'")
        if not (0 < self.beta_start < self.beta_end < 1):
            raise ConfigError("schedule needs 0 < beta_start < beta_end < 1")
        if self.num_train_timesteps < 2:
            raise ConfigError("schedule needs num_train_timesteps >= 2")

    @property
    def betas(self) -> torch.Tensor:
        n = self.num_train_timesteps
        if self.kind == "linear":
            return torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)
        return torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, n,
                              dtype=torch.float64) ** 2

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``abar_t`` for t = 0 .. T-1, float64."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``abar_t`` gathered for a batch of timesteps, broadcastable to ``like``."""
        table = self.alphas_cumprod.to(device=like.device)
        a = table[t.to(like.device).long()].to(like.dtype)
        return a.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t`` given ``x_0`` and standard normal ``eps``."""
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseSchedule":
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"invalid schedule description {d}: {exc}") from None
