"""Training the unconditional prior (epsilon prediction, simple DDPM loss)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from deftmed.data.datasets import ImageSource
from deftmed.diffusion.prior import DiffusionPrior, PriorSpec
from deftmed.distributed import DistInfo
from deftmed.training import TrainConfig, Trainer

log = logging.getLogger(__name__)


def prior_loss(unet, source: ImageSource, prior: DiffusionPrior, generator: torch.Generator,
               batch: int, device: torch.device) -> torch.Tensor:
    """``|| target - net(sqrt(abar) z0 + sqrt(1-abar) eps, t) ||^2`` for one random batch;
    the target is ``eps`` (DDPM's simple loss) or ``v`` for a v-parametrised prior."""
    idx = torch.randint(len(source), (batch,), generator=generator)
    z0 = prior.to_diffusion(source.tensor(idx.numpy(), prior.spec.image_size, device))
    t = torch.randint(prior.num_timesteps, (batch,), generator=generator).to(device)
    eps = torch.randn(z0.shape, generator=generator).to(device)
    z_t = prior.schedule.q_sample(z0, t, eps)
    return torch.nn.functional.mse_loss(unet(z_t, t), prior.training_target(z0, t, eps))


def save_sample_grid(images: torch.Tensor, path: str | Path, title: str = "",
                     reference: torch.Tensor | None = None) -> None:
    """A PNG grid of images (and optionally a grid of reference images beside it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from deftmed.display import show
    from deftmed.fileio import atomic_path

    panels = [("samples", images)] + ([("data", reference)] if reference is not None else [])
    n = images.shape[0]
    cols = int(n ** 0.5 + 0.999)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols * len(panels), figsize=(1.6 * cols * len(panels), 1.6 * rows),
                             squeeze=False)
    for p, (name, imgs) in enumerate(panels):
        for k in range(rows * cols):
            ax = axes[k // cols, p * cols + k % cols]
            ax.axis("off")
            if k < imgs.shape[0]:
                show(ax, imgs[k])
            if k == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def train_prior(source: ImageSource, spec: PriorSpec, cfg: TrainConfig, out_dir: str | Path,
                device: torch.device, dist: DistInfo = DistInfo(), resume: bool = False,
                sample_every: int = 0, command: str | None = None,
                init: DiffusionPrior | None = None) -> Path:
    """Train a prior on ``source``; writes ``out_dir/prior.safetensors`` (EMA weights).

    ``init`` (a prior with ``spec``'s architecture) warm-starts the weights, e.g. to adapt a prior
    trained on one kind of image to another; its fingerprint is recorded in the checkpoint.
    """
    from deftmed.diffusion.ddim import sample_unconditional

    out_dir = Path(out_dir)
    prior = DiffusionPrior(spec).to(device)
    identity = {"spec": spec.to_dict(), "data": source.description, "seed": cfg.seed,
                "batch_size": cfg.batch_size}
    if init is not None:
        prior.unet.load_state_dict(init.unet.state_dict())
        identity["init"] = init.fingerprint
    trainer = Trainer(prior.unet, cfg, out_dir, dist, device,
                      run_info={"identity": identity, "command": command})

    def loss_fn(unet, step, gen, batch):
        return prior_loss(unet, source, prior, gen, batch, device)

    def save_fn(ema_unet, step):
        snapshot = DiffusionPrior(spec, unet=ema_unet)
        snapshot.save(out_dir / "prior.safetensors",
                      {"training": {"step": step, "config": vars(cfg), "command": command,
                                    "wall_seconds": round(trainer.wall_seconds, 1),
                                    "world_size": dist.world_size, "data": source.description,
                                    "init": identity.get("init")}})

    def on_checkpoint(ema_unet, step):
        if not sample_every or step % sample_every and step != cfg.steps:
            return None
        snapshot = DiffusionPrior(spec, unet=ema_unet).eval()
        gen = torch.Generator().manual_seed(cfg.seed)
        samples = sample_unconditional(snapshot, 16, steps=50, generator=gen)
        ref = source.tensor(list(range(16)), spec.image_size)
        save_sample_grid(samples, out_dir / f"samples_{step:07d}.png", f"step {step}", ref)
        return {"samples": f"samples_{step:07d}.png"}

    trainer.run(loss_fn, save_fn, on_checkpoint, resume=resume)
    return out_dir / "prior.safetensors"
