"""Bring a MONAI ``DiffusionModelUNet`` trained elsewhere into deftmed.

The user provides the state dict (``.safetensors``, or ``.pt``/``.pth`` which is loaded with
``torch.load(weights_only=True)``: tensors only, never arbitrary pickled objects) and a small YAML
file describing what the weights are::

    unet: {channels: [128, 256, 256, 512], attention_levels: [false, false, true, true],
           num_res_blocks: 2, num_head_channels: 64, norm_num_groups: 32}
    image_size: 256
    schedule: {num_train_timesteps: 1000, beta_start: 0.0001, beta_end: 0.02}
    data_shift: 0.5      # z = (x - shift) / scale maps model range [0,1] to the network's range
    data_scale: 0.5
    intensity: {mu_max: 0.08135858, mu_water: 0.02, mu_air: 2.0e-5}   # optional
    description: LoDoPaB prior trained on 8 GPUs, 500k steps

The weights are checked against the described architecture (clear errors on missing,
unexpected or mis-shaped tensors) and written as a deftmed prior checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from deftmed.checkpoint import load_state_into
from deftmed.diffusion.prior import DiffusionPrior, PriorSpec
from deftmed.errors import CheckpointError, ConfigError

META_KEYS = {"unet", "image_size", "schedule", "data_shift", "data_scale", "intensity",
             "description", "source"}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a plain (tensor-only) torch state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot load {path} as a tensor-only state dict "
                                  f"(weights_only=True refuses pickled code): {exc}") from None
        for key in ("state_dict", "model", "ema"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("unet."): v for k, v in state.items()}


def import_monai_prior(weights: str | os.PathLike, meta_path: str | os.PathLike,
                       out: str | os.PathLike) -> dict:
    """Convert weights + description into a deftmed prior checkpoint; returns its metadata."""
    meta_path = Path(meta_path)
    try:
        meta = yaml.safe_load(meta_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read prior description {meta_path}: {exc}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{meta_path}: expected a mapping")
    unknown = set(meta) - META_KEYS
    if unknown:
        raise ConfigError(f"{meta_path}: unknown keys {sorted(unknown)}; known: {sorted(META_KEYS)}")
    for key in ("unet", "image_size"):
        if key not in meta:
            raise ConfigError(f"{meta_path}: missing {key!r}")
    spec_dict = {"unet": meta["unet"], "schedule": meta.get("schedule", {}),
                 "image_size": meta["image_size"], "data_shift": meta.get("data_shift", 0.5),
                 "data_scale": meta.get("data_scale", 0.5), "intensity": meta.get("intensity"),
                 "data": {"source": "imported", "description": meta.get("description", ""),
                          "origin": meta.get("source", "")}}
    spec = PriorSpec.from_dict(spec_dict)
    prior = DiffusionPrior(spec)
    load_state_into(prior.unet, read_state_dict(weights), f"imported weights {weights}")
    return prior.save(out, {"imported_from": str(weights)})
