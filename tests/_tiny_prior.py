"""A tiny 32x32 ellipse prior for method tests (trained in a few hundred steps, cached).

Training costs about a minute on one CPU thread, so the weights are cached in the system
temporary directory under a name that hashes the whole recipe (architecture, steps, seed,
data); a changed recipe trains afresh. Delete ``$TMPDIR/deftmed-test-cache`` to force it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from deftmed.data.phantoms import ellipses
from deftmed.diffusion.prior import DiffusionPrior, PriorSpec
from deftmed.diffusion.unet import UNetConfig

RECIPE = {"channels": (16, 32), "attention_levels": (False, True), "norm_num_groups": 8,
          "num_head_channels": 16, "image_size": 32, "steps": 300, "batch": 16, "lr": 1e-3,
          "train_images": 256, "seed": 0, "version": 1}


def _spec() -> PriorSpec:
    r = RECIPE
    return PriorSpec(unet=UNetConfig(channels=r["channels"], attention_levels=r["attention_levels"],
                                     norm_num_groups=r["norm_num_groups"],
                                     num_head_channels=r["num_head_channels"]),
                     image_size=r["image_size"])


def train_tiny_prior() -> DiffusionPrior:
    """Train the recipe's prior with the plain DDPM epsilon loss (Adam, no EMA)."""
    r = RECIPE
    torch.manual_seed(r["seed"])
    prior = DiffusionPrior(_spec())
    data = prior.to_diffusion(torch.from_numpy(ellipses(r["train_images"], r["image_size"],
                                                        "train"))[:, None])
    gen = torch.Generator().manual_seed(r["seed"])
    opt = torch.optim.Adam(prior.unet.parameters(), lr=r["lr"])
    prior.train()
    for _ in range(r["steps"]):
        z0 = data[torch.randint(len(data), (r["batch"],), generator=gen)]
        t = torch.randint(prior.num_timesteps, (r["batch"],), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        loss = torch.nn.functional.mse_loss(prior.eps(prior.schedule.q_sample(z0, t, eps), t), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return prior.eval().requires_grad_(False)


def tiny_prior() -> DiffusionPrior:
    """The cached tiny prior (trained on first use)."""
    key = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "deftmed-test-cache" / f"tiny-prior-{key}.safetensors"
    if path.is_file():
        try:
            return DiffusionPrior.load(path)
        except Exception:  # a corrupt cache entry: train again
            pass
    prior = train_tiny_prior()
    path.parent.mkdir(parents=True, exist_ok=True)
    prior.save(path, {"recipe": RECIPE, "purpose": "deftmed test fixture"})
    os.utime(path)
    return prior
