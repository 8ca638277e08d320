"""The DEFT h-network (paper eq. 12), in epsilon space.

``h(z_t, t) = NN1([z_t, x0hat, g], t) - NN2(t) * g``

- ``NN1``: a small time-conditioned MONAI ``DiffusionModelUNet`` over the channel-stacked
  inputs, last layer initialised to zero, so training starts from the pure guidance path.
- ``NN2``: a 3-layer SiLU MLP on the sinusoidal time embedding giving one scalar per sample.
  Its last layer has zero weights and a small bias (``nn2_init``, the authors' 0.01); the
  hidden layers keep their default initialisation. (Zeroing the hidden weights too, as a literal
  reading of "weights zero" suggests, would make every gradient of the MLP except the last bias
  vanish forever; at initialisation both choices output exactly ``nn2_init``.)
- Sign: a positive score direction is subtracted in epsilon space, hence ``- NN2(t) * g``.

Variants (the paper's ablation): ``full`` (above), ``no_x0hat`` (``NN1([z_t, g], t) - NN2 g``),
``no_guidance_path`` (``NN1([z_t, x0hat, A*y], t)``) and ``aty_only`` (``NN1([z_t, A*y], t)``).

Images may have several channels (``image_channels``: 3 for RGB). Tasks whose operator changes
per measurement or whose guidance is weak add ``cond_channels`` of conditioning to NN1's input,
computed once per measurement (``Guidance.condition``): the mask of amortised inpainting (1
channel), the HIO/ER estimate of phase retrieval (``image_channels`` channels), as the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from deftmed.diffusion.unet import UNetConfig, config_from_dict, config_to_dict, count_parameters
from deftmed.errors import ConfigError

VARIANTS = {
    # name: (NN1 inputs, uses the NN2 guidance path)
    "full": (("z_t", "x0hat", "g"), True),
    "no_x0hat": (("z_t", "g"), True),
    "no_guidance_path": (("z_t", "x0hat", "aty"), False),
    "aty_only": (("z_t", "aty"), False),
}


@dataclass(frozen=True)
class HNetConfig:
    channels: tuple[int, ...] = (8, 16, 32)
    attention_levels: tuple[bool, ...] = (False, False, False)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    variant: str = "full"
    nn2_hidden: int = 64
    nn2_init: float = 1.0
    guidance_scaling: str = "x0"
    image_channels: int = 1
    cond_channels: int = 0

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in self.attention_levels))
        if self.guidance_scaling not in ("x0", "eps"):
            raise ConfigError(f"guidance_scaling must be 'x0' or 'eps', got {self.guidance_scaling!r}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown h-network variant {self.variant!r}; use one of "
                              f"{sorted(VARIANTS)}")

    @property
    def inputs(self) -> tuple[str, ...]:
        return VARIANTS[self.variant][0]

    @property
    def guidance_path(self) -> bool:
        return VARIANTS[self.variant][1]

    def unet_config(self) -> UNetConfig:
        return UNetConfig(in_channels=self.image_channels * len(self.inputs) + self.cond_channels,
                          out_channels=self.image_channels, channels=self.channels,
                          attention_levels=self.attention_levels,
                          num_res_blocks=self.num_res_blocks,
                          num_head_channels=max(self.channels[-1] // 2, 8),
                          norm_num_groups=self.norm_num_groups)

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HNetConfig":
        return config_from_dict(cls, d, "h-network config")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeScalar(nn.Module):
    """NN2: time embedding -> 3-layer SiLU MLP -> one scalar per sample."""

    def __init__(self, hidden: int = 64, init: float = 0.01):
        super().__init__()
        self.hidden = hidden
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, init)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(timestep_embedding(t, self.hidden))


class HTransform(nn.Module):
    """The trainable h-network; the prior is not part of it."""

    def __init__(self, cfg: HNetConfig = HNetConfig()):
        super().__init__()
        self.cfg = cfg
        self.nn1 = cfg.unet_config().build()
        last = [m for m in self.nn1.modules() if isinstance(m, (nn.Conv2d,))][-1]
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
        self.nn2 = TimeScalar(cfg.nn2_hidden, cfg.nn2_init) if cfg.guidance_path else None

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, x0hat: torch.Tensor | None = None,
                g: torch.Tensor | None = None, aty: torch.Tensor | None = None,
                abar_t: torch.Tensor | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
        feats = {"z_t": z_t, "x0hat": x0hat, "g": g, "aty": aty}
        missing = [k for k in self.cfg.inputs if feats[k] is None]
        if missing or (self.nn2 is not None and g is None):
            raise ConfigError(f"h-network variant {self.cfg.variant!r} needs inputs {missing or ['g']}")
        parts = [feats[k] for k in self.cfg.inputs]
        if self.cfg.cond_channels:
            if cond is None or cond.shape[1] != self.cfg.cond_channels:
                raise ConfigError(f"this h-network takes {self.cfg.cond_channels} conditioning "
                                  f"channel(s), got {None if cond is None else cond.shape[1]}")
            parts.append(cond.to(z_t).expand(z_t.shape[0], -1, -1, -1))
        h = self.nn1(torch.cat(parts, dim=1), t.long())
        if self.nn2 is not None:
            scalar = self.nn2(t).view(-1, 1, 1, 1)
            if self.cfg.guidance_scaling == "x0":
                if abar_t is None:
                    raise ConfigError("x0-scaled guidance needs abar_t")
                a = abar_t.view(-1, 1, 1, 1).to(g.dtype)
                scalar = scalar * (a / (1 - a)).sqrt()
            h = h - scalar * g
        return h

    def parameter_count(self) -> int:
        return count_parameters(self)
