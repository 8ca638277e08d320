"""The ADM UNet of guided-diffusion (Dhariwal & Nichol 2021), for the public ImageNet priors.

An independent implementation of the architecture of openai/guided-diffusion's ``UNetModel``
(``unet.py``), with the same module names so that the released state dicts, e.g.
``256x256_diffusion_uncond.pt`` (the 552.8M-parameter unconditional 256x256 ImageNet model the
DEFT paper uses), load key for key:

``time_embed``      ``Linear(C, 4C) -> SiLU -> Linear(4C, 4C)`` on the sinusoidal embedding
                    ``[cos(t w_k), sin(t w_k)]``, ``w_k = 10000^(-k / (C/2))``, ``k < C/2``.
``input_blocks``    ``[conv3x3(in, C)]``, then per level ``num_res_blocks`` x (ResBlock
                    [+ AttentionBlock at attention resolutions]) and, except at the last level, a
                    down-sampling step (ResBlock with ``down=True`` if ``resblock_updown``, else
                    ``Downsample``).
``middle_block``    ResBlock, AttentionBlock, ResBlock.
``output_blocks``   per level (reversed) ``num_res_blocks + 1`` x (ResBlock on the concatenated
                    skip [+ AttentionBlock]) and, except at level 0, an up-sampling step.
``out``             ``GroupNorm -> SiLU -> conv3x3(C * mult[0], out_channels)``.

ResBlock: ``h = in_layers(x)`` (GroupNorm(32), SiLU, conv3x3; with up/down-sampling of both
``h`` and ``x`` by nearest / 2x2-average between the SiLU and the conv);
with ``use_scale_shift_norm``: ``(scale, shift) = emb_layers(emb)``,
``h = out_layers[1:](GroupNorm(h) (1 + scale) + shift)``, else ``h = out_layers(h + emb)``;
output ``skip_connection(x) + h`` (identity, or a 1x1 conv when the width changes).
AttentionBlock: ``x + proj_out(attention(qkv(norm(x))))`` over the flattened pixels, heads of
``num_head_channels`` channels, legacy QKV ordering (heads split before q/k/v) unless
``use_new_attention_order``. GroupNorm runs in float32.

The network predicts ``[eps, v]`` (6 channels) when ``learn_sigma``: :class:`ADMUNet` returns
only ``eps`` (the first ``out_channels / 2`` channels). Timesteps are the 0-based indices
``0..999`` of the linear 1e-4..0.02 schedule (guided-diffusion's ``rescale_timesteps=False``),
i.e. the same convention as :class:`~deftmed.diffusion.schedule.NoiseSchedule`. The model works
on images in [-1, 1]: ``data_shift = data_scale = 0.5`` maps the package's [0, 1] range to it.

Checkpoints: :func:`load_adm_checkpoint` reads ``.pt`` state dicts with
``torch.load(..., weights_only=True)`` (never arbitrary pickles) or ``.safetensors`` files, and
checks every key and shape. :func:`adm_prior` wraps the network in a
:class:`~deftmed.diffusion.prior.DiffusionPrior`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deftmed.checkpoint import load_state_into
from deftmed.diffusion.prior import DiffusionPrior, PriorSpec
from deftmed.diffusion.schedule import NoiseSchedule
from deftmed.errors import CheckpointError, ConfigError

__all__ = ["ADMConfig", "ADMUNet", "ADMPrior", "load_adm_checkpoint", "adm_prior",
           "timestep_embedding", "ADM_IMAGENET256_UNCOND", "ADM_PRIOR_KIND"]

ADM_PRIOR_KIND = "adm-prior"


@dataclass(frozen=True)
class ADMConfig:
    """Hyper-parameters of guided-diffusion's ``create_model`` (same names and meanings).

    ``attention_resolutions`` are feature-map sizes (as in the release flags, "32,16,8");
    ``channel_mult`` empty means guided-diffusion's default for ``image_size``.
    The defaults are the released ``256x256_diffusion_uncond.pt``.
    """

    image_size: int = 256
    in_channels: int = 3
    num_channels: int = 256
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    channel_mult: tuple[int, ...] = ()
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    learn_sigma: bool = True
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    dropout: float = 0.0
    class_cond: bool = False
    num_classes: int = 1000

    def __post_init__(self):
        ar = self.attention_resolutions
        if isinstance(ar, str):
            ar = tuple(int(r) for r in ar.split(",") if r.strip())
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in ar))
        mult = tuple(int(m) for m in self.channel_mult) or _default_mult(self.image_size)
        object.__setattr__(self, "channel_mult", mult)
        for name in ("image_size", "in_channels", "num_channels", "num_res_blocks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"ADM config: {name!r} must be a positive integer, got {v!r}")
        if self.image_size % 2 ** (len(mult) - 1):
            raise ConfigError(f"ADM config: image_size {self.image_size} is not divisible by "
                              f"the down-sampling factor {2 ** (len(mult) - 1)}")
        widths = {self.num_channels * m for m in mult}
        if any(w % 32 for w in widths):
            raise ConfigError(f"ADM config: channel widths {sorted(widths)} must be multiples "
                              "of 32 (GroupNorm with 32 groups)")
        if self.num_head_channels != -1 and any(w % self.num_head_channels for w in widths):
            raise ConfigError(f"ADM config: widths {sorted(widths)} are not divisible by "
                              f"num_head_channels={self.num_head_channels}")
        if self.num_head_channels == -1 and self.num_heads < 1:
            raise ConfigError("ADM config: give num_head_channels or num_heads >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ADM config: dropout must be in [0, 1), got {self.dropout}")

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Down-sampling rates at which attention is used (``image_size // resolution``)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ADMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"ADM config has unknown keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def as_unet_config(self):
        """A :class:`~deftmed.diffusion.unet.UNetConfig` *describing* this network for
        :class:`PriorSpec` (channel count, down-sampling factor); never built."""
        from deftmed.diffusion.unet import UNetConfig

        chans = tuple(self.num_channels * m for m in self.channel_mult)
        heads = self.num_head_channels if self.num_head_channels != -1 else min(
            c // self.num_heads for c in chans)
        levels = tuple(2 ** i in self.attention_ds for i in range(len(chans)))
        return UNetConfig(in_channels=self.in_channels, out_channels=self.in_channels,
                          channels=chans, attention_levels=levels,
                          num_res_blocks=self.num_res_blocks, num_head_channels=heads,
                          norm_num_groups=32, resblock_updown=self.resblock_updown,
                          extra={"architecture": "adm"})


def _default_mult(image_size: int) -> tuple[int, ...]:
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
             64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
    if image_size not in table:
        raise ConfigError(f"ADM config: no default channel_mult for image_size {image_size}; "
                          "give channel_mult")
    mult = table[image_size]
    if any(m != int(m) for m in mult):
        raise ConfigError("ADM config: fractional channel_mult (512 model) is not supported")
    return tuple(int(m) for m in mult)


ADM_IMAGENET256_UNCOND = ADMConfig()
"""The released unconditional 256x256 ImageNet model (``256x256_diffusion_uncond.pt``)."""


# ----------------------------------------------------------------------------- layers
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[cos(t w), sin(t w)]`` with ``w_k = max_period^(-k / (dim/2))`` (zero-padded if odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the time embedding."""

    def forward(self, x, emb):  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest 2x up-sampling, optionally followed by ``conv`` (3x3)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x down-sampling: strided 3x3 conv ``op`` or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.op = (nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
                   if use_conv else nn.AvgPool2d(2, 2))

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, dropout: float,
                 out_channels: int | None = None, use_scale_shift_norm: bool = False,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, (2 if use_scale_shift_norm else 1)
                                 * self.out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if self.out_channels == channels
                                else nn.Conv2d(channels, self.out_channels, 1))

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, residual."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 new_order: bool = False):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.new_order = new_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        n, length = self.num_heads, qkv.shape[-1]
        ch = c // n
        if self.new_order:  # [q(all heads), k(all heads), v(all heads)]
            q, k, v = (t.reshape(b * n, ch, length) for t in qkv.chunk(3, dim=1))
        else:  # legacy: per head [q, k, v]
            q, k, v = qkv.reshape(b * n, 3 * ch, length).split(ch, dim=1)
        scale = 1.0 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


# ----------------------------------------------------------------------------- the UNet
class ADMUNet(nn.Module):
    """guided-diffusion's ``UNetModel``; ``forward(x, t)`` returns epsilon only.

    ``x``: (B, in_channels, H, W) in [-1, 1] (noisy), ``t``: (B,) integer timesteps 0..T-1;
    ``y``: class labels for class-conditional models. :meth:`forward_full` returns all
    ``out_channels`` (epsilon and the learned-variance interpolation ``v``).
    """

    def __init__(self, config: ADMConfig = ADM_IMAGENET256_UNCOND):
        super().__init__()
        self.config = cfg = config
        C, emb_dim = cfg.num_channels, 4 * cfg.num_channels
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        self.time_embed = nn.Sequential(nn.Linear(C, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        if cfg.class_cond:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        def res(cin, cout, **kw):
            return ResBlock(cin, emb_dim, cfg.dropout, cout, cfg.use_scale_shift_norm, **kw)

        def attn(ch, heads):
            return AttentionBlock(ch, heads, cfg.num_head_channels, cfg.use_new_attention_order)

        ch = input_ch = C * cfg.channel_mult[0]
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, C * mult)]
                ch = C * mult
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(
                    res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, True)))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, cfg.num_heads),
                                                    res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), C * mult)]
                ch = C * mult
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown
                                  else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 nn.Conv2d(input_ch, cfg.out_channels, 3, padding=1))

    def forward_full(self, x: torch.Tensor, t: torch.Tensor,
                     y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is not None) != self.config.class_cond:
            raise ConfigError("class labels must be given exactly when the model is "
                              "class-conditional")
        emb = self.time_embed(timestep_embedding(t, self.config.num_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """Epsilon prediction: the first ``in_channels`` output channels."""
        return self.forward_full(x, t, y)[:, : self.config.in_channels]


# ----------------------------------------------------------------------------- loading
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"ADM checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors has its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for disallowed globals, EOF, zip errors
        raise CheckpointError(f"{path} cannot be read as a plain tensor state dict with "
                              f"torch.load(weights_only=True) (arbitrary pickled objects are "
                              f"refused): {str(exc).splitlines()[0] if str(exc) else exc!r}") \
            from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def load_adm_checkpoint(path: str | os.PathLike,
                        config: ADMConfig = ADM_IMAGENET256_UNCOND) -> ADMUNet:
    """Build an :class:`ADMUNet` for ``config`` and load guided-diffusion weights into it.

    ``path``: a ``.pt`` state dict (read with ``torch.load(weights_only=True)``) or a
    ``.safetensors`` file. Keys and shapes are checked (CheckpointError naming missing,
    unexpected and mis-shaped keys). Weights are converted to float32 (the released files are
    float32; fp16 files are upcast). Returns the model in eval mode, gradients off.
    """
    path = Path(path)
    state = _read_state_dict(path)
    model = ADMUNet(config)
    load_state_into(model, {k: v.float() if v.is_floating_point() else v
                            for k, v in state.items()}, f"ADM checkpoint {path}")
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- as a prior
def _spec(config: ADMConfig) -> PriorSpec:
    return PriorSpec(unet=config.as_unet_config(), schedule=NoiseSchedule(1000, 1e-4, 0.02),
                     image_size=config.image_size, data_shift=0.5, data_scale=0.5,
                     data={"name": "imagenet", "range": "[0, 1] RGB; the network sees 2x - 1"})


class ADMPrior(DiffusionPrior):
    """A :class:`~deftmed.diffusion.prior.DiffusionPrior` whose network is an :class:`ADMUNet`.

    ``spec.unet`` only *describes* the network (input channels, down-sampling factor) for the
    code that reads it (samplers take ``spec.unet.in_channels``); the real architecture is
    ``adm_config``. Saved as a deftmed checkpoint of kind ``adm-prior``, which
    ``DiffusionPrior.load`` refuses (so a MONAI UNet is never built for ADM weights); reload
    with ``ADMPrior.load``.
    """

    def __init__(self, config: ADMConfig = ADM_IMAGENET256_UNCOND, unet: ADMUNet | None = None):
        super().__init__(_spec(config), unet=unet if unet is not None else ADMUNet(config))
        self.adm_config = config

    checkpoint_kind = ADM_PRIOR_KIND

    def checkpoint_metadata(self) -> dict:
        return dict(super().checkpoint_metadata(), adm_config=self.adm_config.to_dict())

    @classmethod
    def _from_metadata(cls, meta: dict, path) -> "ADMPrior":
        if "adm_config" not in meta:
            raise CheckpointError(f"{path}: ADM prior metadata lacks 'adm_config'")
        return cls(ADMConfig.from_dict(meta["adm_config"]))


def adm_prior(path: str | os.PathLike | None = None,
              config: ADMConfig = ADM_IMAGENET256_UNCOND,
              device: str | torch.device = "cpu") -> ADMPrior:
    """A frozen :class:`ADMPrior` over [0, 1] RGB images.

    ``path``: guided-diffusion weights (``.pt`` / ``.safetensors``, see
    :func:`load_adm_checkpoint`); ``None`` gives random weights (tests). Schedule: linear
    betas 1e-4..0.02, T = 1000; ``data_shift = data_scale = 0.5`` (the network sees ``2x-1``).
    The prior's ``fingerprint`` (weights hash) is computed on first use.
    """
    unet = load_adm_checkpoint(path, config) if path is not None else ADMUNet(config)
    prior = ADMPrior(config, unet=unet)
    if path is not None:
        prior.metadata = {"source": str(path)}
    return prior.eval().requires_grad_(False).to(device)
