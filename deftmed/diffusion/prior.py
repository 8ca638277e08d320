"""The frozen unconditional diffusion prior: MONAI UNet + VP schedule + intensity mapping.

Images live in the model range [0, 1] (see ``IntensityTransform``); the network works on
``z = (x - shift) / scale`` (default ``z = 2x - 1`` in [-1, 1]). ``to_diffusion`` / ``to_image``
convert. The prior never clamps its x0 predictions: a CT prior must not silently clip
attenuation values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from deftmed.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from deftmed.diffusion.schedule import NoiseSchedule
from deftmed.diffusion.unet import UNetConfig, count_parameters
from deftmed.errors import CheckpointError, ConfigError

PRIOR_KIND = "diffusion-prior"
PREDICTIONS = ("epsilon", "v")


@dataclass
class PriorSpec:
    """Everything besides the weights that defines a prior (stored in its checkpoint)."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    image_size: int = 64
    data_shift: float = 0.5
    data_scale: float = 0.5
    intensity: dict | None = None
    data: dict | None = None
    prediction: str = "epsilon"

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"unknown prediction type {self.prediction!r}; use one of {PREDICTIONS}")

    def to_dict(self) -> dict:
        return {"unet": self.unet.to_dict(), "schedule": self.schedule.to_dict(),
                "prediction": self.prediction,
                "image_size": self.image_size, "data_shift": self.data_shift,
                "data_scale": self.data_scale, "intensity": self.intensity, "data": self.data}

    @classmethod
    def from_dict(cls, d: dict) -> "PriorSpec":
        for key in ("unet", "schedule", "image_size"):
            if key not in d:
                raise CheckpointError(f"prior metadata lacks {key!r}")
        return cls(unet=UNetConfig.from_dict(d["unet"]),
                   schedule=NoiseSchedule.from_dict(d["schedule"]),
                   image_size=int(d["image_size"]), data_shift=float(d.get("data_shift", 0.5)),
                   data_scale=float(d.get("data_scale", 0.5)), intensity=d.get("intensity"),
                   data=d.get("data"), prediction=d.get("prediction", "epsilon"))


class DiffusionPrior(torch.nn.Module):
    """An epsilon-prediction diffusion model ``eps_theta(z_t, t)`` with its schedule."""

    def __init__(self, spec: PriorSpec, unet: torch.nn.Module | None = None):
        super().__init__()
        if spec.image_size % spec.unet.downsampling_factor:
            raise ConfigError(f"image size {spec.image_size} is not divisible by the UNet's "
                              f"downsampling factor {spec.unet.downsampling_factor}")
        self.spec = spec
        self.unet = unet if unet is not None else spec.unet.build()
        self.register_buffer("alphas_cumprod", spec.schedule.alphas_cumprod.float(),
                             persistent=False)
        self.metadata: dict = {}

    # --- conversions -------------------------------------------------------------------
    @property
    def schedule(self) -> NoiseSchedule:
        return self.spec.schedule

    @property
    def num_timesteps(self) -> int:
        return self.spec.schedule.num_train_timesteps

    def to_diffusion(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.spec.data_shift) / self.spec.data_scale

    def to_image(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.spec.data_scale + self.spec.data_shift

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[t.long()].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    # --- the model ------------------------------------------------------------------------
    def eps(self, z_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Predicted noise ``eps_theta(z_t, t)`` for a batch (B,C,H,W) at integer timesteps.

        For a v-parametrised network (``prediction: v``, Salimans & Ho 2022) the network
        output ``v`` is converted: ``eps = sqrt(abar) v + sqrt(1 - abar) z_t``. Either way the
        prior is an epsilon model to every sampler.
        """
        if not torch.is_tensor(t) or t.dim() == 0:
            t = torch.full((z_t.shape[0],), int(t), device=z_t.device, dtype=torch.long)
        t = t.to(z_t.device).long()
        out = self.unet(z_t, t)
        if self.spec.prediction == "v":
            a = self.abar(t, z_t)
            out = a.sqrt() * out + (1 - a).sqrt() * z_t
        return out

    def training_target(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
        """What the network regresses on: ``eps``, or ``v = sqrt(abar) eps - sqrt(1-abar) z0``."""
        if self.spec.prediction == "epsilon":
            return eps
        a = self.abar(t, z0)
        return a.sqrt() * eps - (1 - a).sqrt() * z0

    def tweedie(self, z_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None):
        """``x0hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` in diffusion space, unclamped."""
        if eps is None:
            eps = self.eps(z_t, t)
        a = self.abar(t, z_t)
        return (z_t - (1 - a).sqrt() * eps) / a.sqrt()

    def forward(self, z_t, t):  # so DDP can wrap the prior during training
        return self.eps(z_t, t)

    # --- bookkeeping ----------------------------------------------------------------------
    def parameter_count(self) -> int:
        return count_parameters(self.unet)

    @property
    def fingerprint(self) -> str:
        """Hash of the weights this prior was loaded from or saved as (binds h-transforms)."""
        fp = self.metadata.get("weights_sha256")
        if fp is None:
            from deftmed.checkpoint import tensors_sha256
            fp = tensors_sha256(self.unet.state_dict())
        return fp

    checkpoint_kind = PRIOR_KIND

    def checkpoint_metadata(self) -> dict:
        """What a checkpoint records besides the weights (subclasses add their own)."""
        return {"spec": self.spec.to_dict(), "parameters": self.parameter_count()}

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> dict:
        meta = self.checkpoint_metadata()
        meta.update(extra or {})
        self.metadata = save_checkpoint(path, self.unet.state_dict(), self.checkpoint_kind, meta)
        return self.metadata

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "DiffusionPrior":
        tensors, meta = load_checkpoint(path, cls.checkpoint_kind)
        prior = cls._from_metadata(meta, path)
        load_state_into(prior.unet, tensors, f"prior {path}")
        prior.metadata = meta
        prior.eval().requires_grad_(False)
        return prior.to(device)

    @classmethod
    def _from_metadata(cls, meta: dict, path) -> "DiffusionPrior":
        """An untrained prior of the architecture a checkpoint's metadata describes."""
        if "spec" not in meta:
            raise CheckpointError(f"{path}: prior metadata lacks 'spec'")
        return cls(PriorSpec.from_dict(meta["spec"]))
