"""Builder for MONAI's ``DiffusionModelUNet`` from a plain, serialisable config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from deftmed.errors import ConfigError


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a MONAI ``DiffusionModelUNet`` (2D).

    The default is the shipped 64x64 CT prior: four levels, self-attention at the coarsest
    (8x8) level, 2.05M parameters.
    """

    in_channels: int = 1
    out_channels: int = 1
    channels: tuple[int, ...] = (32, 48, 64, 96)
    attention_levels: tuple[bool, ...] = (False, False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 16
    resblock_updown: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in self.attention_levels))
        if len(self.channels) != len(self.attention_levels):
            raise ConfigError("UNet config: 'channels' and 'attention_levels' differ in length")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ConfigError(f"UNet config: every channel count must be divisible by "
                              f"norm_num_groups={self.norm_num_groups}, got {self.channels}")
        bad = [c for c, a in zip(self.channels, self.attention_levels)
               if a and c % self.num_head_channels]
        if bad:
            raise ConfigError(f"UNet config: channels {bad} of attention levels are not divisible "
                              f"by num_head_channels={self.num_head_channels}")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def build(self) -> torch.nn.Module:
        from monai.networks.nets import DiffusionModelUNet

        return DiffusionModelUNet(
            spatial_dims=2,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            channels=self.channels,
            attention_levels=self.attention_levels,
            num_res_blocks=self.num_res_blocks,
            num_head_channels=self.num_head_channels,
            norm_num_groups=self.norm_num_groups,
            resblock_updown=self.resblock_updown,
            **self.extra,
        )

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return config_from_dict(cls, d, "UNet config")


def config_to_dict(cfg) -> dict:
    """A network config dataclass as plain JSON types (tuples become lists)."""
    d = asdict(cfg)
    d["channels"] = list(cfg.channels)
    d["attention_levels"] = list(cfg.attention_levels)
    return d


def config_from_dict(cls, d: dict, what: str):
    """Build config dataclass ``cls`` from a dict, refusing unknown keys by name."""
    known = set(cls.__dataclass_fields__)
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"{what} has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
